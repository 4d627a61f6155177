//! What an operator can watch: packet verdicts from the kernel, DNS
//! decisions and grant changes. Producers (datapath, DNS proxy, grant store)
//! emit these; the daemon fans them out to metrics, logs and
//! `neuwerk monitor`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::grants::GrantEvent;
use crate::special::SpecialClass;

/// A packet the kernel reported (rate-limited there): dropped, or passed
/// only because its network is in audit mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketEvent {
    /// CLOCK_MONOTONIC ns at the verdict.
    pub time_ns: u64,
    /// The client network involved, if the address belongs to one.
    pub network: Option<Arc<str>>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    pub verdict: PacketVerdict,
    /// Stable snake_case reason (see `neuwerk_abi::Reason::name`).
    pub reason: &'static str,
}

/// What happened to a reported packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketVerdict {
    Dropped,
    /// Would have been dropped; passed because the network audits.
    AuditAllowed,
}

/// How a DNS query ended, as counted and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsResult {
    /// Allowed, forwarded, answer relayed (whatever its rcode).
    Allowed,
    /// Denied by policy, never forwarded.
    Denied,
    /// Would have been denied; forwarded because the network audits.
    AuditDenied,
    /// Upstreams failed (timeouts, refused, SERVFAIL); client got SERVFAIL.
    ServFail,
    /// Answer could not be relayed or grants not learned; client got SERVFAIL.
    Error,
    /// Not a well-formed query (FORMERR, NOTIMP, or dropped).
    Malformed,
}

impl DnsResult {
    /// A stable label value.
    pub fn name(self) -> &'static str {
        match self {
            DnsResult::Allowed => "allowed",
            DnsResult::Denied => "denied",
            DnsResult::AuditDenied => "audit_denied",
            DnsResult::ServFail => "servfail",
            DnsResult::Error => "error",
            DnsResult::Malformed => "malformed",
        }
    }
}

/// One finished DNS query, borrowed from the query path: observers copy
/// only what they keep, so a query nobody watches costs no allocation.
#[derive(Debug, Clone, Copy)]
pub struct DnsQueryView<'a> {
    pub client: IpAddr,
    pub network: Option<&'a str>,
    /// The query name as policy sees it (lowercase, no trailing dot), or
    /// as received when it could not be read.
    pub name: &'a str,
    /// Query type mnemonic (`A`, `AAAA`, ...).
    pub qtype: &'a str,
    pub result: DnsResult,
    /// Addresses learned from the answer (empty unless allowed).
    pub addrs: &'a [IpAddr],
    /// From receiving the query to the reply being ready.
    pub total: Duration,
    /// Time spent waiting for upstreams, if any was asked.
    pub upstream: Option<Duration>,
    /// From the accepted upstream answer being read off its socket to its
    /// grants being in the kernel map; `None` when nothing was learned.
    pub grant_commit: Option<Duration>,
}

/// An owned DNS event, for subscribers such as `neuwerk monitor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    pub client: IpAddr,
    pub network: Option<Arc<str>>,
    pub name: String,
    pub qtype: String,
    pub result: DnsResult,
    pub addrs: Vec<IpAddr>,
}

impl From<&DnsQueryView<'_>> for DnsEvent {
    fn from(v: &DnsQueryView<'_>) -> Self {
        DnsEvent {
            client: v.client,
            network: v.network.map(Arc::from),
            name: v.name.to_string(),
            qtype: v.qtype.to_string(),
            result: v.result,
            addrs: v.addrs.to_vec(),
        }
    }
}

/// An address of an allowed answer that was not learned: a special-use
/// address ([`crate::special`]), borrowed from the query path.
#[derive(Debug, Clone, Copy)]
pub struct FilteredView<'a> {
    pub client: IpAddr,
    /// The client's network, whose answer it was.
    pub network: &'a str,
    /// The query name as policy sees it.
    pub name: &'a str,
    pub addr: IpAddr,
    pub class: SpecialClass,
    /// The network audits: the record was left in the answer (and not
    /// granted; its traffic passes as audited anyway).
    pub audit: bool,
}

/// An owned [`FilteredView`], for subscribers such as `neuwerk monitor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilteredEvent {
    pub client: IpAddr,
    pub network: Arc<str>,
    pub name: String,
    pub addr: IpAddr,
    pub class: SpecialClass,
    pub audit: bool,
}

impl From<&FilteredView<'_>> for FilteredEvent {
    fn from(v: &FilteredView<'_>) -> Self {
        FilteredEvent {
            client: v.client,
            network: Arc::from(v.network),
            name: v.name.to_string(),
            addr: v.addr,
            class: v.class,
            audit: v.audit,
        }
    }
}

/// Receives every finished DNS query (metrics, logs, monitor).
pub trait DnsObserver: Send + Sync {
    fn query(&self, q: &DnsQueryView<'_>);

    /// An address of an allowed answer was not learned; called before the
    /// query's [`DnsObserver::query`], once per address.
    fn filtered(&self, _f: &FilteredView<'_>) {}
}

/// Observes nothing; for tests and tools.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl DnsObserver for NoObserver {
    fn query(&self, _q: &DnsQueryView<'_>) {}
}

/// Anything `neuwerk monitor` can show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Packet(PacketEvent),
    Dns(DnsEvent),
    Grant(GrantEvent),
    /// A special-use address left out of an answer's grants.
    Filtered(FilteredEvent),
    /// Events the kernel could not report (rate limit or full ring) since
    /// the previous such event.
    Lost {
        count: u64,
    },
}
