//! The one query path, whatever the transport: decode -> policy ->
//! upstream -> answer -> grants -> reply.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use neuwerk_core::config::{DenyResponse, DnsConfig};
use neuwerk_core::events::{DnsObserver, DnsQueryView, DnsResult};
use neuwerk_core::grants::{Grant, GrantError, GrantSink};
use neuwerk_core::policy::{NetworkMode, Policy, PortSet};
use neuwerk_core::time::monotonic_ns;
use tracing::{debug, error, info, trace, warn};

use crate::answer::{self, AnswerError, ClientView, Learned, EDNS_PAYLOAD};
use crate::listen::Query;
use crate::upstream::{Request, ResolveError, Upstreams};
use crate::wire::{self, HEADER_LEN, RCODE_FORMERR, RCODE_NOTIMP};
use crate::{ProxyContext, Transport};

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
    network: Option<Arc<str>>,
    /// The name as policy sees it, or as received (escaped) when policy
    /// cannot read it.
    name: String,
    qtype: Option<RecordType>,
    /// The query would have been denied for this reason, and was forwarded
    /// (learning nothing) because the client's network audits.
    audit: Option<DenyReason>,
    /// What the answer taught, now in the grants.
    learned: Learned,
    /// Time spent waiting for upstreams, if any was asked.
    upstream: Option<Duration>,
    /// From the upstream answer being read to its grants being learned.
    grant_commit: Option<Duration>,
}

/// The policy's verdict on a query.
enum Verdict {
    /// Forward, and grant the answer's addresses to `network` on `ports`.
    Allow { network: Arc<str>, ports: PortSet },
    /// Answer with the deny rcode.
    Deny(DenyReason),
    /// Would be denied, but the network audits: forward, learn nothing.
    Audit(DenyReason),
}

/// Shared by every listener; one `handle` call per query.
pub(crate) struct Handler {
    policy: Arc<ArcSwap<Policy>>,
    grants: Arc<dyn GrantSink>,
    observer: Arc<dyn DnsObserver>,
    /// Each worker builds its own [`Upstreams`] from these.
    upstream_servers: Vec<SocketAddr>,
    upstream_timeout: Duration,
    deny_rcode: ResponseCode,
    min_ttl_ns: u64,
    max_ttl_ns: u64,
    /// Cap on every TTL relayed to clients, in seconds.
    max_ttl: u32,
}

impl Handler {
    /// Takes what the query path needs from the context.
    pub(crate) fn new(ctx: ProxyContext) -> Self {
        let DnsConfig {
            upstreams,
            upstream_timeout,
            min_ttl,
            max_ttl,
            deny_response,
            ..
        } = ctx.config;
        Handler {
            policy: ctx.policy,
            grants: ctx.grants,
            observer: ctx.observer,
            upstream_servers: upstreams,
            upstream_timeout,
            deny_rcode: match deny_response {
                DenyResponse::Refused => ResponseCode::Refused,
                DenyResponse::NxDomain => ResponseCode::NXDomain,
            },
            min_ttl_ns: u64::try_from(min_ttl.as_nanos()).unwrap_or(u64::MAX),
            max_ttl_ns: u64::try_from(max_ttl.as_nanos()).unwrap_or(u64::MAX),
            max_ttl: u32::try_from(max_ttl.as_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The upstream resolvers, in order.
    pub(crate) fn upstream_servers(&self) -> &[SocketAddr] {
        &self.upstream_servers
    }

    /// How long one try at one upstream may take.
    pub(crate) fn upstream_timeout(&self) -> Duration {
        self.upstream_timeout
    }

    /// Handles one query, forwarding through the calling worker's
    /// `upstreams`; returns the reply to send, if any.
    pub(crate) async fn handle(&self, query: Query, upstreams: &Upstreams) -> Option<Vec<u8>> {
        let mut facts = Facts::default();
        let (outcome, reply) = self.process(&query, upstreams, &mut facts).await;
        let total = query.received.elapsed();
        observe(&*self.observer, &query, &facts, &outcome, total);
        reply
    }

    async fn process(
        &self,
        query: &Query,
        upstreams: &Upstreams,
        facts: &mut Facts,
    ) -> (Outcome, Option<Vec<u8>>) {
        let b = &query.bytes[..];
        if b.len() < HEADER_LEN {
            return (Outcome::Dropped("shorter than a DNS header"), None);
        }
        // Answering a response could start a loop between two servers.
        if wire::is_response(b) {
            return (Outcome::Dropped("a response sent to the listener"), None);
        }
        if wire::opcode(b) != 0 {
            let reply = wire::header_reply(b, RCODE_NOTIMP);
            return (Outcome::Malformed(ResponseCode::NotImp), Some(reply));
        }
        let formerr = || {
            let reply = wire::header_reply(b, RCODE_FORMERR);
            (Outcome::Malformed(ResponseCode::FormErr), Some(reply))
        };
        if wire::qdcount(b) != 1 {
            return formerr();
        }
        let Ok(msg) = Message::from_vec(b) else {
            return formerr();
        };
        let Some(question) = msg.queries.first() else {
            return formerr();
        };
        facts.qtype = Some(question.query_type());
        let client = ClientView {
            id: msg.id,
            edns_payload: msg.edns.as_ref().map(Edns::max_payload),
            udp: query.transport == Transport::Udp,
        };

        let grant_to = match self.authorize(query.peer.ip(), question.name(), facts) {
            Verdict::Allow { network, ports } => Some((network, ports)),
            Verdict::Audit(reason) => {
                facts.audit = Some(reason);
                None
            }
            Verdict::Deny(reason) => {
                let reply = error_reply(&msg, b, self.deny_rcode);
                return (Outcome::Denied(reason), Some(reply));
            }
        };

        let request = Request {
            question,
            recursion_desired: msg.recursion_desired,
            checking_disabled: msg.checking_disabled,
            authentic_data: msg.authentic_data,
            dnssec_ok: msg.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        };
        let asked = Instant::now();
        // Boxed: the exchange's state is over a kilobyte, and inline it
        // would be copied with this future on every move (spawn, poll).
        let resolved = Box::pin(upstreams.resolve(&request)).await;
        facts.upstream = Some(asked.elapsed());
        let answer = match resolved {
            Ok(answer) => answer,
            Err(error) => {
                let rcode = error.rcode();
                let reply = error_reply(&msg, b, rcode);
                return (Outcome::UpstreamFailed { rcode, error }, Some(reply));
            }
        };

        let rcode = answer.msg.response_code;
        let answer_received = answer.received;
        // NXDOMAIN, or NOERROR without addresses: relayed, nothing learned.
        // Nor for an audited name: its network's traffic passes anyway.
        let learned = match &grant_to {
            Some(_) if rcode == ResponseCode::NoError => {
                answer::chain_addresses(&answer.msg, question.name())
            }
            _ => Learned::default(),
        };
        // Prepared before learning, so that nothing is learned for an
        // answer that cannot be sent.
        let (reply, relayed) = match answer::relay(answer.bytes, &answer.msg, &client, self.max_ttl)
        {
            Ok(prepared) => prepared,
            Err(e) => {
                let reply = error_reply(&msg, b, ResponseCode::ServFail);
                return (Outcome::RelayFailed(e), Some(reply));
            }
        };
        if let (Some((network, ports)), false) = (grant_to, learned.is_empty()) {
            let now = monotonic_ns();
            let hostname: Arc<str> = facts.name.as_str().into();
            let batch: Vec<Grant> = learned
                .addrs
                .iter()
                .zip(&learned.ttls)
                .map(|(&addr, &ttl)| Grant {
                    network: network.clone(),
                    addr,
                    hostname: hostname.clone(),
                    ports: ports.clone(),
                    expires_ns: now.saturating_add(self.lifetime_ns(ttl)),
                })
                .collect();
            // Before the reply: the client's first packet to an address
            // must never race its grant.
            if let Err(e) = self.grants.learn(&batch) {
                let reply = error_reply(&msg, b, ResponseCode::ServFail);
                return (Outcome::LearnFailed(e), Some(reply));
            }
            facts.grant_commit = Some(answer_received.elapsed());
            facts.learned = learned;
        }
        let outcome = Outcome::Answered {
            rcode,
            truncated: relayed.truncated,
        };
        (outcome, Some(reply))
    }

    /// The policy's verdict on `name` asked by `src`; records the client's
    /// network and the name in `facts`. The policy is loaded once and
    /// released before any await.
    fn authorize(&self, src: IpAddr, name: &Name, facts: &mut Facts) -> Verdict {
        let readable = match policy_name(name) {
            Some(qname) => {
                facts.name = qname;
                true
            }
            None => {
                facts.name = name.to_ascii();
                false
            }
        };
        let policy = self.policy.load();
        let Some(network) = policy.network_of(src) else {
            return Verdict::Deny(DenyReason::NoNetwork);
        };
        facts.network = Some(network.name.clone());
        let reason = if !readable {
            DenyReason::BadName
        } else if let Some(ports) = network.ports_for_name(&facts.name) {
            let network = network.name.clone();
            return Verdict::Allow { network, ports };
        } else {
            DenyReason::NoRule
        };
        match network.mode {
            NetworkMode::Audit => Verdict::Audit(reason),
            NetworkMode::Enforce => Verdict::Deny(reason),
        }
    }

    /// How long a grant lives: the record's TTL clamped to [min_ttl, max_ttl]
    /// (max wins if misconfigured below min).
    fn lifetime_ns(&self, ttl: u32) -> u64 {
        (u64::from(ttl) * 1_000_000_000)
            .max(self.min_ttl_ns)
            .min(self.max_ttl_ns)
    }
}

/// The name as policy rules see it: lowercase, no trailing dot. `None` for
/// the root and for labels with bytes outside `[A-Za-z0-9_-]`: no policy
/// hostname contains them, and a `.` inside a label would let a name pass
/// for another one once written as text.
fn policy_name(name: &Name) -> Option<String> {
    if name.is_root() {
        return None;
    }
    let mut s = String::with_capacity(name.len());
    for label in name.iter() {
        if !s.is_empty() {
            s.push('.');
        }
        for &c in label {
            match c {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => s.push(c as char),
                b'A'..=b'Z' => s.push(c.to_ascii_lowercase() as char),
                _ => return None,
            }
        }
    }
    Some(s)
}

/// A reply with `rcode`, the client's id, flags and question echoed, and an
/// OPT record if the client sent one.
fn error_reply(query: &Message, raw: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(query.id, query.op_code, rcode);
    m.metadata.recursion_desired = query.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = query.checking_disabled;
    m.add_queries(query.queries.iter().cloned());
    if let Some(client_edns) = &query.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(client_edns.flags().dnssec_ok);
        m.set_edns(edns);
    }
    // The question was just decoded, so encoding it cannot really fail.
    m.to_vec()
        .unwrap_or_else(|_| wire::header_reply(raw, u16::from(rcode) as u8))
}

/// Reports how a query ended, once per query: to the observer, and to the
/// log (denials, audited or not, at info; the rest below).
fn observe(
    observer: &dyn DnsObserver,
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
    let name = facts.name.as_str();
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
    fn policy_names_are_lowercase_without_dot_and_plain() {
        let n = |s: &str| Name::from_ascii(s).unwrap();
        assert_eq!(
            policy_name(&n("WWW.Example.COM.")).as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            policy_name(&n("_sip._tcp.a-b.test")).as_deref(),
            Some("_sip._tcp.a-b.test")
        );
        assert_eq!(policy_name(&n(".")), None);
        let dotted = Name::from_labels(vec![&b"www.allowed"[..], b"com"]).unwrap();
        assert_eq!(policy_name(&dotted), None);
        let binary = Name::from_labels(vec![&b"a\x00b"[..], b"com"]).unwrap();
        assert_eq!(policy_name(&binary), None);
        assert_eq!(policy_name(&n("*.example.com")), None);
    }

    #[test]
    fn type_texts() {
        let mut buf = [0u8; TYPE_TEXT_LEN];
        assert_eq!(type_text(RecordType::AAAA, &mut buf), "AAAA");
        assert_eq!(type_text(RecordType::NSEC3PARAM, &mut buf), "NSEC3PARAM");
        assert_eq!(type_text(RecordType::from(65535), &mut buf), "TYPE65535");
        assert_eq!(type_text(RecordType::from(0xff00), &mut buf), "TYPE65280");
    }
}
