//! Drop and audit events from the kernel's `nw_events` ring buffer.
//!
//! The kernel rate-limits them per CPU (see [`crate::loader::EventLimits`])
//! and counts what it holds back ([`Dataplane::events_lost`]), so the reader
//! can never be flooded: at most a few thousand events per second and CPU.
//!
//! ```no_run
//! # async fn f(dp: &neuwerk_datapath::Dataplane) -> Result<(), Box<dyn std::error::Error>> {
//! let mut events = dp.packet_events()?; // once, inside the tokio runtime
//! let mut batch = Vec::new();
//! loop {
//!     events.next_batch(&mut batch).await?;
//!     for _event in batch.drain(..) { /* fan out */ }
//! }
//! # }
//! ```

use std::io;

use aya::maps::{MapData, RingBuf};
use neuwerk_abi::{self as abi, Reason};
use neuwerk_core::events::{PacketEvent, PacketVerdict};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::addr::addr_from_bytes;
use crate::compile::NetNames;
use crate::dataplane::Dataplane;
use crate::error::DataplaneError;

/// Records taken per [`PacketEvents::next_batch`] at most: the whole ring
/// (256 KiB of 64-byte records). Past it the call returns and the next one
/// continues at once.
pub const MAX_BATCH: usize = 4096;

/// The reader of the kernel's packet events; from
/// [`Dataplane::packet_events`].
pub struct PacketEvents {
    ring: AsyncFd<RingBuf<MapData>>,
    names: NetNames,
}

impl std::fmt::Debug for PacketEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketEvents").finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Takes the packet event stream. Callable once (then
    /// [`DataplaneError::EventsTaken`]), from inside a tokio runtime (the
    /// ring buffer's fd is registered with its reactor).
    pub fn packet_events(&self) -> Result<PacketEvents, DataplaneError> {
        let ring = self.take_event_ring().ok_or(DataplaneError::EventsTaken)?;
        if tokio::runtime::Handle::try_current().is_err() {
            // Put it back: the caller may retry inside the runtime.
            self.return_event_ring(ring);
            return Err(DataplaneError::Io {
                what: "packet events need a tokio runtime",
                source: io::Error::other("no tokio runtime"),
            });
        }
        // SAFETY: the RingBuf owns the map's fd (its MapData holds the
        // OwnedFd) and returns that same fd from as_raw_fd until dropped,
        // which happens only with the AsyncFd.
        let ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
            Ok(ring) => ring,
            Err(e) => {
                let (ring, source) = e.into_parts();
                self.return_event_ring(ring);
                return Err(DataplaneError::Io {
                    what: "registering the event ring buffer",
                    source,
                });
            }
        };
        Ok(PacketEvents {
            ring,
            names: self.net_names(),
        })
    }
}

impl PacketEvents {
    /// Waits until the kernel has reported something, then appends every
    /// event available (up to [`MAX_BATCH`]) to `out`. Returns with at least
    /// one event appended, or an error of the reactor.
    pub async fn next_batch(&mut self, out: &mut Vec<PacketEvent>) -> io::Result<()> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let (taken, pushed) = drain(guard.get_inner_mut(), &self.names, out, MAX_BATCH);
            if taken < MAX_BATCH {
                // Emptied: wait for the kernel's next wakeup. (A record
                // committed since keeps readiness set; tokio doesn't clear
                // an event newer than the one this guard saw.)
                guard.clear_ready();
            }
            if pushed > 0 {
                return Ok(());
            }
        }
    }
}

/// Takes up to `max` records from `ring`, appending the decodable ones to
/// `out`; returns (records taken, events appended).
fn drain(
    ring: &mut RingBuf<MapData>,
    names: &NetNames,
    out: &mut Vec<PacketEvent>,
    max: usize,
) -> (usize, usize) {
    let before = out.len();
    let mut taken = 0;
    // The names' read lock is held for the drain only, never across an
    // await; a policy swap assigning a new id waits at most this long.
    names.with(|names| {
        while taken < max {
            let Some(item) = ring.next() else { break };
            taken += 1;
            if let Some(e) = decode(&item, names) {
                out.push(e);
            }
        }
    });
    (taken, out.len() - before)
}

/// A ring buffer record as a [`PacketEvent`]; `names[id - 1]` is the name
/// of network `id`. `None` for records that are not a reported verdict
/// (short, unknown reason, an allowing reason).
pub fn decode(record: &[u8], names: &[std::sync::Arc<str>]) -> Option<PacketEvent> {
    let e = abi::Event::from_bytes(record)?;
    let reason = Reason::from_index(e.reason.into())?;
    let verdict = match reason {
        Reason::PassAudit => PacketVerdict::AuditAllowed,
        r if r.is_drop() => PacketVerdict::Dropped,
        _ => return None,
    };
    let network = usize::try_from(e.net_id)
        .ok()
        .and_then(|id| id.checked_sub(1))
        .and_then(|i| names.get(i).cloned());
    Some(PacketEvent {
        time_ns: e.time_ns,
        network,
        src: addr_from_bytes(e.saddr),
        dst: addr_from_bytes(e.daddr),
        sport: e.sport,
        dport: e.dport,
        proto: e.proto,
        verdict,
        reason: reason.name(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::addr_bytes;
    use std::net::IpAddr;
    use std::sync::Arc;

    fn record(net_id: u32, reason: Reason, src: &str, dst: &str) -> Vec<u8> {
        let src: IpAddr = src.parse().unwrap();
        let dst: IpAddr = dst.parse().unwrap();
        let mut b = vec![0u8; abi::Event::SIZE];
        b[0..8].copy_from_slice(&42u64.to_ne_bytes());
        b[8..12].copy_from_slice(&net_id.to_ne_bytes());
        b[12] = reason as u8;
        b[13] = 17;
        b[14..16].copy_from_slice(&5353u16.to_ne_bytes());
        b[16..18].copy_from_slice(&53u16.to_ne_bytes());
        b[20..36].copy_from_slice(&addr_bytes(src));
        b[36..52].copy_from_slice(&addr_bytes(dst));
        b
    }

    #[test]
    fn handles_cross_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Dataplane>();
        send::<PacketEvents>();
    }

    #[test]
    fn drops_decode_with_network_name_and_v4_addresses() {
        let names: Vec<Arc<str>> = vec!["clients".into(), "servers".into()];
        let b = record(2, Reason::DropPolicy, "10.100.1.10", "192.0.2.1");
        let e = decode(&b, &names).unwrap();
        assert_eq!(e.network.as_deref(), Some("servers"));
        assert_eq!(e.verdict, PacketVerdict::Dropped);
        assert_eq!(e.reason, "drop_policy");
        assert_eq!(e.src, "10.100.1.10".parse::<IpAddr>().unwrap());
        assert_eq!(e.dst, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!((e.proto, e.sport, e.dport, e.time_ns), (17, 5353, 53, 42));
    }

    #[test]
    fn audit_passes_decode_as_audit_allowed() {
        let names: Vec<Arc<str>> = vec!["clients".into()];
        let b = record(1, Reason::PassAudit, "fd00:100:1::10", "2001:db8::1");
        let e = decode(&b, &names).unwrap();
        assert_eq!(e.verdict, PacketVerdict::AuditAllowed);
        assert_eq!(e.reason, "pass_audit");
        assert_eq!(e.src, "fd00:100:1::10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn no_network_unknown_ids_and_non_events() {
        let names: Vec<Arc<str>> = vec!["clients".into()];
        let e = decode(
            &record(0, Reason::DropNoNetwork, "10.9.9.9", "192.0.2.1"),
            &names,
        );
        assert_eq!(e.unwrap().network, None);
        let e = decode(
            &record(7, Reason::DropPolicy, "10.9.9.9", "192.0.2.1"),
            &names,
        );
        assert_eq!(e.unwrap().network, None, "an id without a name");
        assert!(decode(&record(1, Reason::PassRule, "10.0.0.1", "10.0.0.2"), &names).is_none());
        let mut bad = record(1, Reason::DropPolicy, "10.0.0.1", "10.0.0.2");
        bad[12] = 200;
        assert!(decode(&bad, &names).is_none());
        assert!(decode(&bad[..10], &names).is_none());
    }
}
