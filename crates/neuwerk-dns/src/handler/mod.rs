//! The one query path, whatever the transport: decode -> policy ->
//! upstream -> answer (special-use addresses left out) -> grants -> reply.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Name;
use neuwerk_core::config::{DenyResponse, DnsConfig};
use neuwerk_core::events::DnsObserver;
use neuwerk_core::grants::GrantSink;
use neuwerk_core::policy::{NetworkLearning, NetworkMode, ParsedPolicy, PortSet};
use neuwerk_core::special::NodeAddrs;

use crate::answer::ClientView;
use crate::listen::Query;
use crate::message::{self, Parsed};
use crate::upstream::{Request, Upstreams};
use crate::wire::{self, HEADER_LEN, RCODE_FORMERR, RCODE_NOTIMP};
use crate::{ProxyContext, Transport};

mod finish;
mod limit;
mod observe;

pub(crate) use finish::Finish;
use limit::LogLimit;
use observe::{observe, DenyReason, Facts, Outcome};

/// The policy's verdict on a query.
enum Verdict {
    /// Forward, and grant the answer's addresses as `GrantTo` says.
    Allow(GrantTo),
    /// Answer with the deny rcode.
    Deny(DenyReason),
    /// Would be denied, but the network audits: forward, learn nothing.
    Audit(DenyReason),
}

/// How a query ended before any upstream was asked, and the reply if any.
type Ended = (Outcome, Option<Vec<u8>>);

/// Where an allowed answer's addresses are granted, and which of them may
/// be: as the policy stood when the query was judged.
pub(crate) struct GrantTo {
    network: Arc<str>,
    ports: PortSet,
    /// Which private ranges and policy networks the network may learn.
    learning: Arc<NetworkLearning>,
    /// The network audits: special-use addresses are not granted, but stay
    /// in the answer (audit denies nothing).
    audit: bool,
}

/// What the upstream is asked, and what the answer is checked and relayed
/// against.
pub(crate) struct Ask {
    client: ClientView,
    /// Where the answer's addresses are granted: `None` for an audited
    /// name, whose answer teaches nothing.
    grant_to: Option<GrantTo>,
    /// The upstream query.
    pub(crate) request: Request,
    /// The client's query as read (for error replies).
    parsed: Parsed,
}

/// A query on its way to the upstream, between [`Handler::begin`] and
/// [`Handler::finish`].
pub(crate) struct Forward {
    pub(crate) query: Query,
    facts: Facts,
    pub(crate) ask: Ask,
    /// When the upstream was first asked: taken as when the query was
    /// received, microseconds earlier, which spares a clock read per query.
    asked: Instant,
}

/// Where [`Handler::begin`] leaves a query.
pub(crate) enum Begin {
    /// Done (and reported): the reply to send, if any.
    Done(Option<Vec<u8>>),
    /// To forward.
    Forward(Box<Forward>),
}

/// Shared by every listener: [`Handler::begin`], then [`Handler::finish`]
/// with what the upstreams gave (or [`Handler::handle`], both in one).
pub(crate) struct Handler {
    policy: Arc<ArcSwap<ParsedPolicy>>,
    grants: Arc<dyn GrantSink>,
    observer: Arc<dyn DnsObserver>,
    /// The node's and the resolvers' addresses, never learned.
    node: NodeAddrs,
    /// Bounds the log lines about special-use addresses left out.
    filtered_log: LogLimit,
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
            listen,
            upstreams,
            upstream_timeout,
            min_ttl,
            max_ttl,
            deny_response,
            ..
        } = ctx.config;
        let own = ctx
            .own_addrs
            .into_iter()
            .chain(listen.iter().map(|a| a.ip()));
        let node = NodeAddrs::new(own, upstreams.iter().map(|a| a.ip()));
        Handler {
            policy: ctx.policy,
            grants: ctx.grants,
            observer: ctx.observer,
            node,
            filtered_log: LogLimit::default(),
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
        match self.begin(query) {
            Begin::Done(reply) => reply,
            Begin::Forward(mut fwd) => {
                // Boxed: the exchange's state is over a kilobyte, and inline
                // it would be copied with this future on every move.
                let resolved = Box::pin(upstreams.resolve(&mut fwd.ask.request)).await;
                self.finish(fwd, resolved)
            }
        }
    }

    /// The query path up to the upstream: decode, policy. Either the query
    /// is done (reported, with the reply to send if any), or it is to be
    /// forwarded and given to [`Handler::finish`] with what came back.
    pub(crate) fn begin(&self, query: Query) -> Begin {
        let mut facts = Facts::default();
        match self.prepare(&query, &mut facts) {
            Ok(ask) => Begin::Forward(Box::new(Forward {
                asked: query.received,
                query,
                facts,
                ask,
            })),
            Err((outcome, reply)) => {
                self.report(&query, &facts, &outcome);
                Begin::Done(reply)
            }
        }
    }

    /// Decodes and authorizes; the `Err` is how the query ended.
    fn prepare(&self, query: &Query, facts: &mut Facts) -> Result<Ask, Ended> {
        let b = &query.bytes[..];
        if b.len() < HEADER_LEN {
            return Err((Outcome::Dropped("shorter than a DNS header"), None));
        }
        // Answering a response could start a loop between two servers.
        if wire::is_response(b) {
            return Err((Outcome::Dropped("a response sent to the listener"), None));
        }
        if wire::opcode(b) != 0 {
            let reply = wire::header_reply(b, RCODE_NOTIMP);
            return Err((Outcome::Malformed(ResponseCode::NotImp), Some(reply)));
        }
        let formerr = || {
            let reply = wire::header_reply(b, RCODE_FORMERR);
            (Outcome::Malformed(ResponseCode::FormErr), Some(reply))
        };
        if wire::qdcount(b) != 1 {
            return Err(formerr());
        }
        let Ok(parsed) = message::read_query(b) else {
            return Err(formerr());
        };
        let question = &parsed.question;
        facts.qtype = Some(question.query_type());
        let client = ClientView {
            id: parsed.header.metadata.id,
            edns_payload: parsed.opt.map(|o| o.payload),
            udp: query.transport == Transport::Udp,
        };

        let grant_to = match self.authorize(query.peer.ip(), question.name(), facts) {
            Verdict::Allow(to) => Some(to),
            Verdict::Audit(reason) => {
                facts.audit = Some(reason);
                None
            }
            Verdict::Deny(reason) => {
                let reply = message::error_reply(b, &parsed, self.deny_rcode);
                return Err((Outcome::Denied(reason), Some(reply)));
            }
        };
        Ok(Ask {
            client,
            grant_to,
            request: Request::new(b, &parsed),
            parsed,
        })
    }

    pub(crate) fn report(&self, query: &Query, facts: &Facts, outcome: &Outcome) {
        self.report_took(query, facts, outcome, query.received.elapsed());
    }

    /// [`Handler::report`] for a query that took `took` from its arrival.
    pub(crate) fn report_took(
        &self,
        query: &Query,
        facts: &Facts,
        outcome: &Outcome,
        took: Duration,
    ) {
        observe(
            &*self.observer,
            &self.filtered_log,
            query,
            facts,
            outcome,
            took,
        );
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
                facts.name = name.to_ascii().into();
                false
            }
        };
        let policy = self.policy.load();
        let Some(index) = policy.network_index_of(src) else {
            return Verdict::Deny(DenyReason::NoNetwork);
        };
        let network = &policy.networks[index];
        facts.network = Some(network.name.clone());
        let reason = if !readable {
            DenyReason::BadName
        } else if let Some(ports) = network.ports_for_name(&facts.name) {
            let learning = policy
                .learning()
                .network(index)
                .cloned()
                .unwrap_or_default();
            return Verdict::Allow(GrantTo {
                network: network.name.clone(),
                ports,
                learning,
                audit: network.mode == NetworkMode::Audit,
            });
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

/// Longest name in text form: a name is at most 255 bytes on the wire.
const MAX_NAME_TEXT: usize = 255;

/// The name as policy rules see it: lowercase, no trailing dot. `None` for
/// the root and for labels with bytes outside `[A-Za-z0-9_-]`: no policy
/// hostname contains them, and a `.` inside a label would let a name pass
/// for another one once written as text. Built on the stack: the one
/// allocation is the shared string the query's grants carry.
fn policy_name(name: &Name) -> Option<Arc<str>> {
    if name.is_root() {
        return None;
    }
    let mut buf = [0u8; MAX_NAME_TEXT];
    let mut len = 0;
    for label in name.iter() {
        if len > 0 {
            *buf.get_mut(len)? = b'.';
            len += 1;
        }
        for &c in label {
            *buf.get_mut(len)? = match c {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => c,
                b'A'..=b'Z' => c.to_ascii_lowercase(),
                _ => return None,
            };
            len += 1;
        }
    }
    // Only ASCII was written.
    std::str::from_utf8(&buf[..len]).ok().map(Arc::from)
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
