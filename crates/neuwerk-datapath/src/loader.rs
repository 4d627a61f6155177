//! Embeds the compiled object, sets its load-time globals and attaches the
//! two TC programs. The returned [`aya::Ebpf`] owns the links: dropping it
//! detaches both programs.

use aya::programs::{tc, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use neuwerk_core::config::{ConntrackConfig, Forwarding};

use crate::error::DataplaneError;
use crate::link;

/// The object built by build.rs from bpf/neuwerk.bpf.c.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/neuwerk.bpf.o"));

/// TC program for what clients send (ingress of the client-facing interface).
pub const PROG_FROM_CLIENT: &str = "nw_from_client";
/// TC program for what comes back (ingress of the upstream-facing interface).
pub const PROG_FROM_UPSTREAM: &str = "nw_from_upstream";

/// The index of `iface`, or a clear error when it does not exist in this
/// namespace.
pub fn interface_index(iface: &str) -> Result<u32, DataplaneError> {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return Err(DataplaneError::NoInterface(iface.to_string()));
    };
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::NoInterface(iface.to_string()));
    }
    Ok(index)
}

/// How the programs forward what they pass (bpf/lib/forward.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSetup {
    /// Direct or through the kernel's stack.
    pub mode: Forwarding,
    /// Ingress and egress interface indexes where the interface is a veth
    /// with its other end in another namespace, else 0: direct forwarding
    /// hands packets routed out of these to that end.
    pub peer_ifindex: [u32; 2],
}

impl ForwardSetup {
    /// Looks the node's two interfaces up (index, and over rtnetlink
    /// whether each is a veth with a peer elsewhere).
    pub fn probe(mode: Forwarding, ingress: &str, egress: &str) -> Result<Self, DataplaneError> {
        let mut peer_ifindex = [0; 2];
        for (slot, iface) in peer_ifindex.iter_mut().zip([ingress, egress]) {
            let index = interface_index(iface)?;
            if mode == Forwarding::Direct && link::has_foreign_veth_peer(index)? {
                *slot = index;
            }
        }
        Ok(ForwardSetup { mode, peer_ifindex })
    }
}

/// How many drop and audit events the kernel may report, per CPU: a
/// sustained rate and a burst (a token bucket in bpf/lib/events.h). What
/// exceeds them is only counted ([`crate::Dataplane::events_lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Sustained events per second and CPU; 0 reports none.
    pub per_sec: u32,
    /// Events a CPU may report at once after a quiet period (at least 1).
    pub burst: u32,
}

impl Default for EventLimits {
    /// 1000 events/s with a burst of 200, per CPU.
    fn default() -> Self {
        EventLimits {
            per_sec: 1000,
            burst: 200,
        }
    }
}

/// Loads the object with the conntrack timeouts, the forwarding set-up and
/// event limits baked in as constants.
pub fn load(
    ct: &ConntrackConfig,
    forwarding: &ForwardSetup,
    events: &EventLimits,
) -> Result<Ebpf, DataplaneError> {
    let ns = |d: std::time::Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
    let (tcp, closing, udp, icmp) = (
        ns(ct.tcp_idle),
        ns(ct.tcp_closing),
        ns(ct.udp_idle),
        ns(ct.icmp_idle),
    );
    // u64 in the kernel; from u32 so that burst * (1e9 / rate) cannot overflow.
    let per_sec = u64::from(events.per_sec);
    let burst = u64::from(events.burst.max(1));
    let direct = u32::from(forwarding.mode == Forwarding::Direct);
    let [peer_in, peer_out] = forwarding.peer_ifindex;
    EbpfLoader::new()
        .override_global("CT_TCP_IDLE_NS", &tcp, true)
        .override_global("CT_TCP_CLOSING_NS", &closing, true)
        .override_global("CT_UDP_IDLE_NS", &udp, true)
        .override_global("CT_ICMP_IDLE_NS", &icmp, true)
        .override_global("EVENTS_PER_SEC", &per_sec, true)
        .override_global("EVENTS_BURST", &burst, true)
        .override_global("DIRECT_FORWARD", &direct, true)
        .override_global("PEER_IFINDEX_INGRESS", &peer_in, true)
        .override_global("PEER_IFINDEX_EGRESS", &peer_out, true)
        .load(OBJECT)
        .map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Loads program `name` into the kernel and attaches it to the ingress of
/// `iface` (TCX on kernels >= 6.6, a clsact filter before).
pub fn attach(ebpf: &mut Ebpf, name: &'static str, iface: &str) -> Result<(), DataplaneError> {
    let attach_err = |reason: String| DataplaneError::Attach {
        name,
        iface: iface.to_string(),
        reason,
    };
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| attach_err("program missing from the object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| attach_err(e.to_string()))?;
    prog.load().map_err(|e| DataplaneError::Program {
        name,
        source: Box::new(e),
    })?;
    // Needed only for the netlink fallback; already present is fine.
    let _ = tc::qdisc_add_clsact(iface);
    prog.attach(iface, TcAttachType::Ingress)
        .map_err(|e| attach_err(e.to_string()))?;
    Ok(())
}
