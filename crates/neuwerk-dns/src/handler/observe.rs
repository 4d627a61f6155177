//! How a query ended, reported once: to the observer (metrics, events)
//! and to the log.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_core::events::{DnsObserver, DnsQueryView, DnsResult, FilteredView};
use neuwerk_core::grants::GrantError;
use neuwerk_core::special::SpecialClass;
use neuwerk_core::time::monotonic_ns;
use smallvec::SmallVec;
use tracing::{debug, error, info, trace, warn};

use super::limit::LogLimit;
use crate::answer::{AnswerError, Learned};
use crate::listen::Query;
use crate::upstream::ResolveError;

/// Why a query was denied (or, in an auditing network, would have been).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenyReason {
    /// The client's address is in no network of the policy.
    NoNetwork,
    /// No hostname rule of the client's network matches the name.
    NoRule,
    /// The name has bytes no policy hostname can contain.
    BadName,
}

impl DenyReason {
    /// A stable snake_case name, for logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DenyReason::NoNetwork => "no_network",
            DenyReason::NoRule => "no_rule",
            DenyReason::BadName => "bad_name",
        }
    }
}

/// How a query ended. Decided once per query and reported in one place,
/// [`observe`], with the [`Facts`] gathered on the way.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Not answered: too short for a header, or a response.
    Dropped(&'static str),
    /// Answered FORMERR or NOTIMP.
    Malformed(ResponseCode),
    /// Answered with the deny rcode, never forwarded.
    Denied(DenyReason),
    /// The upstream's answer was relayed.
    Answered {
        rcode: ResponseCode,
        truncated: bool,
    },
    /// No upstream answered usefully; the client got `rcode`.
    UpstreamFailed {
        rcode: ResponseCode,
        error: ResolveError,
    },
    /// The grants could not be made enforceable; the client got SERVFAIL.
    LearnFailed(GrantError),
    /// The upstream's answer could not be prepared; the client got SERVFAIL.
    RelayFailed(AnswerError),
}

/// What is known about a query besides how it ended, filled in as the
/// query path learns it; empty for a query whose question was never read.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// The client's network, if its address is in one.
    pub(crate) network: Option<Arc<str>>,
    /// The name as policy sees it, or as received (escaped) when policy
    /// cannot read it.
    pub(crate) name: Arc<str>,
    pub(crate) qtype: Option<RecordType>,
    /// The query would have been denied for this reason, and was forwarded
    /// (learning nothing) because the client's network audits.
    pub(crate) audit: Option<DenyReason>,
    /// What the answer taught, now in the grants.
    pub(crate) learned: Learned,
    /// Special-use addresses of the answer, not learned.
    pub(crate) filtered: Filtered,
    /// Whether `filtered` stayed in the answer (the network audits).
    pub(crate) filtered_kept: bool,
    /// Time spent waiting for upstreams, if any was asked.
    pub(crate) upstream: Option<Duration>,
    /// From the upstream answer being read to its grants being learned.
    pub(crate) grant_commit: Option<Duration>,
}

/// Special-use addresses of one answer with their class; most answers
/// have none, and those that do have few.
pub(crate) type Filtered = SmallVec<[(IpAddr, SpecialClass); 2]>;

/// Reports how a query ended, once per query: to the observer, and to the
/// log (denials, audited or not, at info; the rest below; special-use
/// addresses left out at info, a few lines a second at most).
pub(crate) fn observe(
    observer: &dyn DnsObserver,
    filtered_log: &LogLimit,
    query: &Query,
    facts: &Facts,
    outcome: &Outcome,
    total: Duration,
) {
    let result = match outcome {
        Outcome::Dropped(_) | Outcome::Malformed(_) => DnsResult::Malformed,
        Outcome::Denied(_) => DnsResult::Denied,
        // Forwarded only because its network audits, however that went.
        _ if facts.audit.is_some() => DnsResult::AuditDenied,
        Outcome::Answered { .. } => DnsResult::Allowed,
        Outcome::UpstreamFailed { .. } => DnsResult::ServFail,
        Outcome::LearnFailed(_) | Outcome::RelayFailed(_) => DnsResult::Error,
    };
    let mut type_buf = [0u8; TYPE_TEXT_LEN];
    let qtype = facts.qtype.map_or("", |t| type_text(t, &mut type_buf));
    let client = query.peer.ip();
    if !facts.filtered.is_empty() {
        report_filtered(observer, filtered_log, client, facts);
    }
    observer.query(&DnsQueryView {
        client,
        network: facts.network.as_deref(),
        name: &facts.name,
        qtype,
        result,
        addrs: &facts.learned.addrs,
        total,
        upstream: facts.upstream,
        grant_commit: facts.grant_commit,
    });

    let peer = query.peer;
    let transport = query.transport;
    let network = facts.network.as_deref().unwrap_or("-");
    let name = &*facts.name;
    if let Some(reason) = facts.audit {
        let reason = reason.name();
        info!(%client, network, name, qtype, reason, ?transport, "query audit-denied: forwarded, nothing learned");
    }
    match outcome {
        Outcome::Dropped(why) => trace!(%peer, ?transport, why, "query dropped"),
        Outcome::Malformed(rcode) => debug!(%peer, ?transport, %rcode, "malformed query"),
        Outcome::Denied(reason) => {
            let reason = reason.name();
            info!(%client, network, name, qtype, reason, ?transport, "query denied")
        }
        Outcome::Answered { rcode, truncated } => {
            let learned = facts.learned.len();
            trace!(%peer, ?transport, name, qtype, %rcode, learned, truncated, "query answered")
        }
        Outcome::UpstreamFailed { rcode, error } => {
            debug!(%peer, ?transport, name, qtype, %rcode, %error, "upstream failed")
        }
        Outcome::LearnFailed(e) => {
            error!(%peer, name, error = %e, "grants not learned, answering SERVFAIL")
        }
        Outcome::RelayFailed(e) => {
            warn!(%peer, name, error = %e, "answer not relayed, answering SERVFAIL")
        }
    }
}

/// Reports each special-use address of the answer: to the observer, and to
/// the log within `limit`.
fn report_filtered(observer: &dyn DnsObserver, limit: &LogLimit, client: IpAddr, facts: &Facts) {
    let network = facts.network.as_deref().unwrap_or("-");
    let name = &*facts.name;
    let audit = facts.filtered_kept;
    let now = monotonic_ns();
    for &(addr, class) in &facts.filtered {
        observer.filtered(&FilteredView {
            client,
            network,
            name,
            addr,
            class,
            audit,
        });
        let admit = limit.admit(now);
        if admit.suppressed > 0 {
            let suppressed = admit.suppressed;
            info!(
                suppressed,
                "more special-use answer addresses were not learned than logged \
                 (neuwerk_dns_records_filtered_total counts them all)"
            );
        }
        if admit.log {
            let class = class.name();
            let what = if audit {
                "special-use address not learned (audit: left in the answer)"
            } else {
                "special-use address not learned, removed from the answer"
            };
            info!(%client, network, name, %addr, class, "{what}");
        }
    }
}

/// Room for the longest type mnemonic (`NSEC3PARAM`) or `TYPE65535`.
const TYPE_TEXT_LEN: usize = 10;

/// The mnemonic of `t`, or `TYPE<n>` (RFC 3597) for a type without one,
/// written into `buf` so that no allocation is needed.
fn type_text(t: RecordType, buf: &mut [u8; TYPE_TEXT_LEN]) -> &str {
    use std::io::Write;
    let RecordType::Unknown(code) = t else {
        return t.into();
    };
    let mut rest = &mut buf[..];
    // Cannot fail: "TYPE" and at most 5 digits fit.
    let _ = write!(rest, "TYPE{code}");
    let len = TYPE_TEXT_LEN - rest.len();
    std::str::from_utf8(&buf[..len]).unwrap_or("TYPE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_texts() {
        let mut buf = [0u8; TYPE_TEXT_LEN];
        assert_eq!(type_text(RecordType::AAAA, &mut buf), "AAAA");
        assert_eq!(type_text(RecordType::NSEC3PARAM, &mut buf), "NSEC3PARAM");
        assert_eq!(type_text(RecordType::from(65535), &mut buf), "TYPE65535");
        assert_eq!(type_text(RecordType::from(0xff00), &mut buf), "TYPE65280");
    }
}
