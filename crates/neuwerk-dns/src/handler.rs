//! The one query path, whatever the transport: decode -> policy ->
//! upstream -> answer -> grants -> reply.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::Name;
use neuwerk_core::config::{DenyResponse, DnsConfig};
use neuwerk_core::grants::{Grant, GrantError, GrantSink};
use neuwerk_core::policy::{Policy, PortSet};
use neuwerk_core::time::monotonic_ns;
use tracing::{debug, error, trace, warn};

use crate::answer::{self, AnswerError, ClientView, EDNS_PAYLOAD};
use crate::listen::Query;
use crate::upstream::{Request, ResolveError, Upstreams};
use crate::wire::{self, HEADER_LEN, RCODE_FORMERR, RCODE_NOTIMP};
use crate::{ProxyContext, Transport};

/// Why a query was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenyReason {
    /// The client's address is in no network of the policy.
    NoNetwork,
    /// No hostname rule of the client's network matches the name.
    NoRule,
    /// The name has bytes no policy hostname can contain.
    BadName,
}

/// How a query ended. Decided once per query and reported in one place,
/// [`observe`], where counters belong.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Not answered: too short for a header, or a response.
    Dropped(&'static str),
    /// Answered FORMERR or NOTIMP.
    Malformed(ResponseCode),
    /// Answered with the deny rcode, never forwarded.
    Denied { reason: DenyReason, name: Name },
    /// The upstream's answer was relayed.
    Answered {
        rcode: ResponseCode,
        learned: usize,
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

/// Shared by every listener; one `handle` call per query.
pub(crate) struct Handler {
    policy: Arc<ArcSwap<Policy>>,
    grants: Arc<dyn GrantSink>,
    upstreams: Upstreams,
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
            upstreams: Upstreams::new(upstreams, upstream_timeout),
            deny_rcode: match deny_response {
                DenyResponse::Refused => ResponseCode::Refused,
                DenyResponse::NxDomain => ResponseCode::NXDomain,
            },
            min_ttl_ns: u64::try_from(min_ttl.as_nanos()).unwrap_or(u64::MAX),
            max_ttl_ns: u64::try_from(max_ttl.as_nanos()).unwrap_or(u64::MAX),
            max_ttl: u32::try_from(max_ttl.as_secs()).unwrap_or(u32::MAX),
        }
    }

    /// Handles one query; returns the reply to send, if any.
    pub(crate) async fn handle(&self, query: Query) -> Option<Vec<u8>> {
        let (outcome, reply) = self.process(&query).await;
        observe(&query, &outcome);
        reply
    }

    async fn process(&self, query: &Query) -> (Outcome, Option<Vec<u8>>) {
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
        let client = ClientView {
            id: msg.id,
            edns_payload: msg.edns.as_ref().map(Edns::max_payload),
            udp: query.transport == Transport::Udp,
        };

        let (network, hostname, ports) = match self.authorize(query.peer.ip(), question.name()) {
            Ok(allowed) => allowed,
            Err(reason) => {
                let reply = error_reply(&msg, b, self.deny_rcode);
                let name = question.name().clone();
                return (Outcome::Denied { reason, name }, Some(reply));
            }
        };

        let request = Request {
            question,
            recursion_desired: msg.recursion_desired,
            checking_disabled: msg.checking_disabled,
            authentic_data: msg.authentic_data,
            dnssec_ok: msg.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        };
        let answer = match self.upstreams.resolve(&request).await {
            Ok(answer) => answer,
            Err(error) => {
                let rcode = error.rcode();
                let reply = error_reply(&msg, b, rcode);
                return (Outcome::UpstreamFailed { rcode, error }, Some(reply));
            }
        };

        let rcode = answer.msg.response_code;
        // NXDOMAIN, or NOERROR without addresses: relayed, nothing learned.
        let learned = if rcode == ResponseCode::NoError {
            answer::chain_addresses(&answer.msg, question.name())
        } else {
            Vec::new()
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
        if !learned.is_empty() {
            let now = monotonic_ns();
            let hostname: Arc<str> = hostname.into();
            let batch: Vec<Grant> = learned
                .iter()
                .map(|l| Grant {
                    network: network.clone(),
                    addr: l.addr,
                    hostname: hostname.clone(),
                    ports: ports.clone(),
                    expires_ns: now.saturating_add(self.lifetime_ns(l.ttl)),
                })
                .collect();
            // Before the reply: the client's first packet to an address
            // must never race its grant.
            if let Err(e) = self.grants.learn(&batch) {
                let reply = error_reply(&msg, b, ResponseCode::ServFail);
                return (Outcome::LearnFailed(e), Some(reply));
            }
        }
        let outcome = Outcome::Answered {
            rcode,
            learned: learned.len(),
            truncated: relayed.truncated,
        };
        (outcome, Some(reply))
    }

    /// The client's network, the policy's form of the name and the ports its
    /// rules allow. The policy is loaded once and released before any await.
    fn authorize(
        &self,
        src: IpAddr,
        name: &Name,
    ) -> Result<(Arc<str>, String, PortSet), DenyReason> {
        let policy = self.policy.load();
        let network = policy.network_of(src).ok_or(DenyReason::NoNetwork)?;
        let qname = policy_name(name).ok_or(DenyReason::BadName)?;
        let ports = network.ports_for_name(&qname).ok_or(DenyReason::NoRule)?;
        Ok((network.name.clone(), qname, ports))
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

/// Reports how a query ended; the single place for logs and, later, counters.
fn observe(query: &Query, outcome: &Outcome) {
    let peer = query.peer;
    let transport = query.transport;
    match outcome {
        Outcome::Dropped(why) => trace!(%peer, ?transport, why, "query dropped"),
        Outcome::Malformed(rcode) => debug!(%peer, ?transport, %rcode, "malformed query"),
        Outcome::Denied { reason, name } => {
            debug!(%peer, ?transport, %name, ?reason, "query denied")
        }
        Outcome::Answered {
            rcode,
            learned,
            truncated,
        } => trace!(%peer, ?transport, %rcode, learned, truncated, "query answered"),
        Outcome::UpstreamFailed { rcode, error } => {
            debug!(%peer, ?transport, %rcode, %error, "upstream failed")
        }
        Outcome::LearnFailed(e) => {
            error!(%peer, error = %e, "grants not learned, answering SERVFAIL")
        }
        Outcome::RelayFailed(e) => {
            warn!(%peer, error = %e, "answer not relayed, answering SERVFAIL")
        }
    }
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
}
