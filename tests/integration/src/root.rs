//! The suite needs root (namespaces, veths, eBPF): fail loudly without it.

/// Panics unless the effective user is root, so that a run without
/// privileges fails instead of silently passing or skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "needs root: run as root / sudo make test.integration \
             (the integration suite creates network namespaces and loads eBPF; euid is {euid})"
        );
    }
}
