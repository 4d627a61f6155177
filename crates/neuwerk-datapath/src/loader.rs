//! Embeds the compiled object, sets its load-time globals, loads it with
//! every map pinned (reusing pinned maps of the same layout) and attaches
//! the two TC programs through pinned links, swapping them into links a
//! previous daemon left. Nothing here detaches: see [`crate::pins`].

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{tc, LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use neuwerk_core::config::{ConntrackConfig, Forwarding};

use crate::error::DataplaneError;
use crate::link;
use crate::pins::{self, Hook, PinLayout};

/// The object built by build.rs from bpf/neuwerk.bpf.c.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/neuwerk.bpf.o"));

/// The embedded eBPF object.
pub fn object() -> &'static [u8] {
    OBJECT
}

/// TC program for what clients send (ingress of the client-facing interface).
pub const PROG_FROM_CLIENT: &str = "nw_from_client";
/// TC program for what comes back (ingress of the upstream-facing interface).
pub const PROG_FROM_UPSTREAM: &str = "nw_from_upstream";
/// TC program for what the node sends to clients (egress of the
/// client-facing interface): intercepted DNS replies.
pub const PROG_TO_CLIENT: &str = "nw_to_client";

/// The programs, each with the link it is attached through.
pub const PROGRAMS: [(&str, Hook); 3] = [
    (PROG_FROM_CLIENT, Hook::Client),
    (PROG_FROM_UPSTREAM, Hook::Upstream),
    (PROG_TO_CLIENT, Hook::ClientEgress),
];

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

/// Transparent DNS interception (bpf/lib/intercept.h): where a client's
/// DNS for another resolver goes, per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsIntercept {
    /// The IPv4 listener queries over IPv4 go to; none: not intercepted.
    pub v4: Option<SocketAddrV4>,
    /// The IPv6 listener queries over IPv6 go to; none: not intercepted.
    pub v6: Option<SocketAddrV6>,
}

impl DnsIntercept {
    /// The first listener of each family, or nothing when `enabled` is
    /// false. A wildcard listener has no address to send queries to.
    pub fn new(enabled: bool, listen: &[SocketAddr]) -> DnsIntercept {
        let mut out = DnsIntercept::default();
        if !enabled {
            return out;
        }
        for sa in listen.iter().filter(|sa| !sa.ip().is_unspecified()) {
            match sa {
                SocketAddr::V4(a) => out.v4 = out.v4.or(Some(*a)),
                SocketAddr::V6(a) => out.v6 = out.v6.or(Some(*a)),
            }
        }
        out
    }

    fn is_on(&self) -> bool {
        self.v4.is_some() || self.v6.is_some()
    }
}

/// What a load bakes into the programs as constants.
#[derive(Debug, Clone, Copy)]
pub struct LoadConstants<'a> {
    pub conntrack: &'a ConntrackConfig,
    pub forwarding: &'a ForwardSetup,
    pub events: &'a EventLimits,
    pub intercept: &'a DnsIntercept,
}

/// Loads the object with the conntrack timeouts, the forwarding set-up and
/// event limits baked in as constants, every map pinned under `maps_dir`
/// (a map already pinned there is reused as it is).
pub fn load(c: LoadConstants<'_>, maps_dir: &Path) -> Result<Ebpf, DataplaneError> {
    let LoadConstants {
        conntrack: ct,
        forwarding,
        events,
        intercept,
    } = c;
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
    let dns_on = u32::from(intercept.is_on());
    // Addresses in network order, as the programs compare them.
    let v4_addr = intercept
        .v4
        .map_or(0, |a| u32::from_ne_bytes(a.ip().octets()));
    let v4_port = intercept.v4.map_or(0, |a| u32::from(a.port()));
    let v6_octets = intercept.v6.map_or([0; 16], |a| a.ip().octets());
    let v6_addr: [u32; 4] = std::array::from_fn(|i| {
        u32::from_ne_bytes(v6_octets[i * 4..i * 4 + 4].try_into().unwrap())
    });
    let v6_port = intercept.v6.map_or(0, |a| u32::from(a.port()));
    let names = pins::pinned_map_names(OBJECT)?;
    let paths: Vec<_> = names.iter().map(|n| maps_dir.join(n)).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in names.iter().zip(&paths) {
        loader.map_pin_path(name.as_str(), path.as_path());
    }
    loader
        .override_global("CT_TCP_IDLE_NS", &tcp, true)
        .override_global("CT_TCP_CLOSING_NS", &closing, true)
        .override_global("CT_UDP_IDLE_NS", &udp, true)
        .override_global("CT_ICMP_IDLE_NS", &icmp, true)
        .override_global("EVENTS_PER_SEC", &per_sec, true)
        .override_global("EVENTS_BURST", &burst, true)
        .override_global("DIRECT_FORWARD", &direct, true)
        .override_global("PEER_IFINDEX_INGRESS", &peer_in, true)
        .override_global("PEER_IFINDEX_EGRESS", &peer_out, true)
        .override_global("DNS_INTERCEPT", &dns_on, true)
        .override_global("DNS_LISTEN4_ADDR", &v4_addr, true)
        .override_global("DNS_LISTEN4_PORT", &v4_port, true)
        .override_global("DNS_LISTEN6_ADDR", &v6_addr, true)
        .override_global("DNS_LISTEN6_PORT", &v6_port, true)
        .load(OBJECT)
        .map_err(|e| DataplaneError::Load(Box::new(e)))
}

/// Loads program `name` into the kernel: the verifier's pass, most of a
/// start's time.
pub fn verify(ebpf: &mut Ebpf, name: &'static str) -> Result<(), DataplaneError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::Program {
            name,
            source: Box::new(aya::programs::ProgramError::NotLoaded),
        })?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DataplaneError::Program {
            name,
            source: Box::new(e),
        })?;
    prog.load().map_err(|e| DataplaneError::Program {
        name,
        source: Box::new(e),
    })
}

/// Where a hook's program runs on its interface.
fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Client | Hook::Upstream => TcAttachType::Ingress,
        Hook::ClientEgress => TcAttachType::Egress,
    }
}

/// Attaches program `name` (loaded by [`verify`]) to `iface` at `hook`'s
/// place through the link pinned for it: an existing link gets the
/// program swapped in atomically; otherwise (or when that link's interface
/// is gone) a new TCX link is made and pinned.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    pins: &PinLayout,
    hook: Hook,
) -> Result<Attached, DataplaneError> {
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
    let mut done = Attached {
        program: name,
        iface: iface.to_string(),
        hook,
        prog_id: 0,
        replaced: false,
    };
    done.prog_id = prog
        .info()
        .map_err(|e| attach_err(format!("reading the program's id: {e}")))?
        .id();
    let path = pins.link(hook);
    let ifindex = interface_index(iface)?;
    if let Some(old) = pinned_link(&path, ifindex).map_err(|e| attach_err(e.to_string()))? {
        let id = prog
            .attach_to_link(old)
            .map_err(|e| attach_err(format!("replacing the program of {}: {e}", path.display())))?;
        // Still pinned: dropping our handle leaves the link in place.
        drop(prog.take_link(id));
        done.replaced = true;
        return Ok(done);
    }
    // Needed only for the netlink fallback; already present is fine.
    let _ = tc::qdisc_add_clsact(iface);
    let id = prog
        .attach_with_options(
            iface,
            attach_type(hook),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| attach_err(e.to_string()))?;
    let link = prog.take_link(id).map_err(|e| attach_err(e.to_string()))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e: LinkError| attach_err(e.to_string()))?;
    let _ = std::fs::remove_file(&path);
    fd.pin(&path)
        .map_err(|e| attach_err(format!("pinning the link at {}: {e}", path.display())))?;
    Ok(done)
}

/// A program attached by [`attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub program: &'static str,
    pub iface: String,
    /// Where on the interface it runs.
    pub hook: Hook,
    /// The kernel's id of the loaded program.
    pub prog_id: u32,
    /// Whether it was swapped into a link a previous daemon left.
    pub replaced: bool,
}

impl Attached {
    /// Whether the program is still attached to its interface (someone
    /// may have taken it off by hand).
    pub fn check(&self) -> Result<(), String> {
        let (_, progs) = SchedClassifier::query_tcx(&self.iface, attach_type(self.hook))
            .map_err(|e| format!("querying the programs on {}: {e}", self.iface))?;
        if progs.iter().any(|p| p.id() == self.prog_id) {
            Ok(())
        } else {
            Err(format!(
                "{} is no longer attached to {}",
                self.program, self.iface
            ))
        }
    }
}

/// The link pinned at `path` if it is attached to `ifindex`; a link on an
/// interface that is gone or another one is unpinned (it holds nothing
/// worth keeping, and a new link replaces it).
fn pinned_link(path: &Path, ifindex: u32) -> io::Result<Option<SchedClassifierLink>> {
    match pins::link_ifindex(path)? {
        None => return Ok(None),
        Some(i) if i != ifindex => {
            // Unpinning takes the old program off that other interface.
            std::fs::remove_file(path)?;
            return Ok(None);
        }
        Some(_) => {}
    }
    let pinned = PinnedLink::from_pin(path).map_err(|e| io::Error::other(e.to_string()))?;
    SchedClassifierLink::try_from(FdLink::from(pinned))
        .map(Some)
        .map_err(|e| io::Error::other(e.to_string()))
}
