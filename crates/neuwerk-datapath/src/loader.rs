//! Embeds the compiled object, sets its load-time globals and attaches the
//! two TC programs. The returned [`aya::Ebpf`] owns the links: dropping it
//! detaches both programs.

use aya::programs::{tc, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use neuwerk_core::config::ConntrackConfig;

use crate::error::DataplaneError;

/// The object built by build.rs from bpf/neuwerk.bpf.c.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/neuwerk.bpf.o"));

/// TC program for what clients send (ingress of the client-facing interface).
pub const PROG_FROM_CLIENT: &str = "nw_from_client";
/// TC program for what comes back (ingress of the upstream-facing interface).
pub const PROG_FROM_UPSTREAM: &str = "nw_from_upstream";

/// Fails with a clear error when `iface` does not exist in this namespace.
pub fn check_interface(iface: &str) -> Result<(), DataplaneError> {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return Err(DataplaneError::NoInterface(iface.to_string()));
    };
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::NoInterface(iface.to_string()));
    }
    Ok(())
}

/// Loads the object with the conntrack timeouts baked in as constants.
pub fn load(ct: &ConntrackConfig) -> Result<Ebpf, DataplaneError> {
    let ns = |d: std::time::Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
    let (tcp, closing, udp, icmp) = (
        ns(ct.tcp_idle),
        ns(ct.tcp_closing),
        ns(ct.udp_idle),
        ns(ct.icmp_idle),
    );
    EbpfLoader::new()
        .override_global("CT_TCP_IDLE_NS", &tcp, true)
        .override_global("CT_TCP_CLOSING_NS", &closing, true)
        .override_global("CT_UDP_IDLE_NS", &udp, true)
        .override_global("CT_ICMP_IDLE_NS", &icmp, true)
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
