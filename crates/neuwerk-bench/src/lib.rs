//! Benchmark tools for Neuwerk (not part of the daemon; `publish = false`,
//! not a default member: `cargo build --release -p neuwerk-bench`).
//!
//! - `nw-synth-dns`: a synthetic authoritative DNS server for a benchmark
//!   zone. Every name under the zone has an A record derived from its first
//!   label, so a benchmark can ask millions of distinct names and no cache
//!   can answer; it counts the queries it receives (`--stats-file`, and one
//!   JSON line on stdout at SIGTERM/SIGINT). Used by `bench/dns.py`.
//!
//! Latency percentiles come from `dnsperf -v` (per-query RTTs, 1 µs
//! resolution), so no latency client lives here.

pub mod synth;

use std::io;
use std::os::fd::AsRawFd;

/// Sets `SO_REUSEPORT` (socket2 gates it behind a feature the workspace
/// does not enable).
pub fn set_reuse_port(sock: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid descriptor, a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
