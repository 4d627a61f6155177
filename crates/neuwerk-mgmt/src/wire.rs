//! How grants and events look on the wire: port lists, timestamps, the
//! event stream's JSON lines and its server-side filter.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use neuwerk_core::events::{Event, FilteredEvent, PacketVerdict};
use neuwerk_core::grants::{Grant, GrantEvent};
use neuwerk_core::policy::{PortRange, PortSet, Proto};
use serde::{Deserialize, Serialize};

use crate::model::{protocol_name, GrantView};

/// Ports as shown: `tcp/443`, `udp/53`, `any/8000-8100`, `tcp/all`, or
/// `all` for every port of every protocol.
pub fn format_ports(ports: &PortSet) -> Vec<String> {
    ports.ranges().iter().map(format_range).collect()
}

fn format_range(r: &PortRange) -> String {
    if *r == PortRange::ALL {
        return "all".to_string();
    }
    let proto = match r.proto {
        Proto::Any => "any",
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    match (r.lo, r.hi) {
        (0, u16::MAX) => format!("{proto}/all"),
        (lo, hi) if lo == hi => format!("{proto}/{lo}"),
        (lo, hi) => format!("{proto}/{lo}-{hi}"),
    }
}

/// Whole seconds from `now_ns` to `expires_ns`, rounded up (a live grant
/// never shows 0); 0 when already expired.
pub fn ttl_remaining_s(expires_ns: u64, now_ns: u64) -> u64 {
    expires_ns.saturating_sub(now_ns).div_ceil(1_000_000_000)
}

/// A grant as listed by the API, or `None` when it has expired by `now_ns`.
pub fn grant_view(g: &Grant, now_ns: u64) -> Option<GrantView> {
    (g.expires_ns > now_ns).then(|| GrantView {
        network: g.network.to_string(),
        address: g.addr.to_string(),
        hostname: g.hostname.to_string(),
        ports: format_ports(&g.ports),
        ttl_remaining_s: ttl_remaining_s(g.expires_ns, now_ns),
    })
}

/// RFC 3339 UTC with milliseconds: `2026-04-20T12:00:01.123Z`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One line of `GET /api/v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLine {
    /// RFC 3339 UTC with milliseconds: the kernel's timestamp for packets,
    /// when the server sent it for the others (within ms of publication).
    pub time: String,
    /// The event, tagged by `kind`.
    #[serde(flatten)]
    pub body: EventBody,
}

/// The kinds of [`EventLine`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    /// A packet the kernel dropped, or passed only because of audit mode.
    Packet {
        /// `dropped` or `audit_allowed`.
        verdict: String,
        /// The client network, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
        /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
        proto: String,
        /// Source address.
        src: IpAddr,
        /// Source port (0 for ICMP).
        sport: u16,
        /// Destination address.
        dst: IpAddr,
        /// Destination port (0 for ICMP).
        dport: u16,
        /// Why (`drop_policy`, ...).
        reason: String,
    },
    /// A finished DNS query.
    Dns {
        /// [`neuwerk_core::events::DnsResult::name`].
        result: String,
        /// The client's network, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
        /// The client.
        client: IpAddr,
        /// The query name.
        name: String,
        /// Query type mnemonic.
        qtype: String,
        /// Addresses learned from the answer.
        #[serde(default)]
        addrs: Vec<IpAddr>,
    },
    /// A special-use address of an allowed answer that was not learned.
    Filtered {
        /// `filtered` (left out of the answer) or `audit_filtered` (the
        /// network audits: left in the answer, still not granted).
        result: String,
        /// The client's network.
        network: String,
        /// The client.
        client: IpAddr,
        /// The query name.
        name: String,
        /// The address not learned.
        address: IpAddr,
        /// Its class: `loopback`, `link_local`, `node`, `private`, ...
        class: String,
    },
    /// A grant added, expired or revoked.
    Grant {
        /// `added`, `expired` or `revoked`.
        action: String,
        /// The network.
        network: String,
        /// The queried name.
        hostname: String,
        /// The granted address.
        address: IpAddr,
        /// Ports as `tcp/443`, `all`.
        ports: Vec<String>,
        /// Seconds left (0 unless added).
        ttl_s: u64,
    },
    /// Events that could not be reported (kernel rate limit or full ring,
    /// or this subscriber falling behind).
    Lost {
        /// How many.
        count: u64,
    },
}

impl EventLine {
    /// The wire form of `event`. `now` and `now_ns` (CLOCK_MONOTONIC) map
    /// kernel timestamps to wall-clock time.
    pub fn new(event: &Event, now: SystemTime, now_ns: u64) -> EventLine {
        let mut time = now;
        let body = match event {
            Event::Packet(p) => {
                time = now
                    .checked_sub(Duration::from_nanos(now_ns.saturating_sub(p.time_ns)))
                    .unwrap_or(now);
                EventBody::Packet {
                    verdict: crate::model::Verdict::from(p.verdict).name().to_string(),
                    network: p.network.as_deref().map(str::to_string),
                    proto: protocol_name(p.proto).into_owned(),
                    src: p.src,
                    sport: p.sport,
                    dst: p.dst,
                    dport: p.dport,
                    reason: p.reason.to_string(),
                }
            }
            Event::Dns(d) => EventBody::Dns {
                result: d.result.name().to_string(),
                network: d.network.as_deref().map(str::to_string),
                client: d.client,
                name: d.name.clone(),
                qtype: d.qtype.clone(),
                addrs: d.addrs.clone(),
            },
            Event::Filtered(f) => EventBody::Filtered {
                result: filtered_result(f).to_string(),
                network: f.network.to_string(),
                client: f.client,
                name: f.name.clone(),
                address: f.addr,
                class: f.class.name().to_string(),
            },
            Event::Grant(g) => {
                let (action, grant) = grant_action(g);
                EventBody::Grant {
                    action: action.to_string(),
                    network: grant.network.to_string(),
                    hostname: grant.hostname.to_string(),
                    address: grant.addr,
                    ports: format_ports(&grant.ports),
                    ttl_s: match g {
                        GrantEvent::Learned(g) => ttl_remaining_s(g.expires_ns, now_ns),
                        _ => 0,
                    },
                }
            }
            Event::Lost { count } => EventBody::Lost { count: *count },
        };
        EventLine {
            time: rfc3339_ms(time),
            body,
        }
    }
}

fn filtered_result(f: &FilteredEvent) -> &'static str {
    if f.audit {
        "audit_filtered"
    } else {
        "filtered"
    }
}

fn grant_action(g: &GrantEvent) -> (&'static str, &Grant) {
    match g {
        GrantEvent::Learned(g) => ("added", g),
        GrantEvent::Expired(g) => ("expired", g),
        GrantEvent::Revoked(g) => ("revoked", g),
    }
}

/// Which events a subscriber wants; empty fields match everything. `lost`
/// events always pass, so a filtered view still says what it missed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only events of this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Only packets of this verdict (`dropped`, `audit_allowed`), DNS
    /// queries of this result (`denied`, ...), special-use addresses left
    /// out (`filtered`, `audit_filtered`) or grants of this action
    /// (`added`, `expired`, `revoked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Only events involving this address (source, destination, DNS client
    /// or answer, granted address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Only events of this kind (`packet`, `dns`, `filtered`, `grant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        let (kind, network, verdict): (&str, Option<&str>, &str) = match event {
            Event::Lost { .. } => return true,
            Event::Packet(p) => (
                "packet",
                p.network.as_deref(),
                match p.verdict {
                    PacketVerdict::Dropped => "dropped",
                    PacketVerdict::AuditAllowed => "audit_allowed",
                },
            ),
            Event::Dns(d) => ("dns", d.network.as_deref(), d.result.name()),
            Event::Filtered(f) => ("filtered", Some(&*f.network), filtered_result(f)),
            Event::Grant(g) => {
                let (action, grant) = grant_action(g);
                ("grant", Some(&*grant.network), action)
            }
        };
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref()
                .is_none_or(|w| have.is_some_and(|h| h.eq_ignore_ascii_case(w)))
        };
        eq(&self.kind, Some(kind))
            && eq(&self.network, network)
            && eq(&self.verdict, Some(verdict))
            && self.address.is_none_or(|a| involves(event, a))
    }
}

fn involves(event: &Event, a: IpAddr) -> bool {
    match event {
        Event::Packet(p) => p.src == a || p.dst == a,
        Event::Dns(d) => d.client == a || d.addrs.contains(&a),
        Event::Filtered(f) => f.client == a || f.addr == a,
        Event::Grant(g) => grant_action(g).1.addr == a,
        Event::Lost { .. } => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_format() {
        let set = PortSet::new(vec![
            PortRange {
                proto: Proto::Tcp,
                lo: 443,
                hi: 443,
            },
            PortRange {
                proto: Proto::Any,
                lo: 8000,
                hi: 8100,
            },
            PortRange {
                proto: Proto::Udp,
                lo: 0,
                hi: u16::MAX,
            },
        ]);
        assert_eq!(format_ports(&set), ["any/8000-8100", "tcp/443", "udp/all"]);
        assert_eq!(format_ports(&PortSet::all()), ["all"]);
    }

    #[test]
    fn ttl_rounds_up() {
        assert_eq!(ttl_remaining_s(10_000_000_001, 0), 11);
        assert_eq!(ttl_remaining_s(10_000_000_000, 0), 10);
        assert_eq!(ttl_remaining_s(5, 10), 0);
    }

    #[test]
    fn rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_776_686_401_123);
        assert_eq!(rfc3339_ms(t), "2026-04-20T12:00:01.123Z");
        assert_eq!(rfc3339_ms(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_ms(leap), "2000-02-29T00:00:00.000Z");
    }
}
