//! Helpers of the failsafe suites (`tests/failsafe.rs`,
//! `tests/failsafe_reload.rs`, `tests/failsafe_start.rs`): a dataplane
//! that outlives the neuwerk process, and reloads and starts that keep
//! what the policy still allows. What neuwerk pins in the host bpffs and
//! logs about it (adoption, reloads, upgrades, readiness), waiting for a
//! condition instead of sleeping, a connection that only connection
//! tracking carries, and a background DNS client that measures how long
//! answers stop during a restart.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::checks::{assert_exchange, assert_resolves, assert_tcp_blocked};
use crate::client::ALLOWED;
use crate::dns_client::{self, DnsOpts};
use crate::kernel_maps::grant_expired_v4;
use crate::netns::Netns;
use crate::neuwerk::Neuwerk;
use crate::topology::{Topology, NEUWERK_DNS_V4};
use crate::zone::SHORT_TTL;
use crate::HttpConn;

/// Logged by a starting neuwerk that took over a pinned dataplane (with
/// a `grants=N` field: the live grants it found).
pub const ADOPTED: &str = "adopted the pinned dataplane";
/// Logged once at start by a neuwerk whose `/sys/fs/bpf` is private to
/// its mount namespace (`ip netns exec`), so that its pins cannot
/// outlive it.
pub const PRIVATE_BPFFS_WARNING: &str = "will not outlive this process";
/// Logged by neuwerk on SIGTERM: it exits without detaching.
pub const LEFT_IN_PLACE: &str = "leaving the dataplane in place";
/// The pinned link of the client-facing program.
pub const LINK_CLIENT: &str = "link_client";
/// The pinned link of the upstream-facing program.
pub const LINK_UPSTREAM: &str = "link_upstream";
/// Maps that every pinned map dir must hold (a subset: one file per map).
pub const EXPECTED_MAPS: [&str; 3] = ["nw_grants", "nw_conntrack", "nw_networks"];

/// Logged once per reload that took effect, with the fields
/// `generation=N`, `grants_revoked=N` and `connections_closed=N`.
pub const RELOADED: &str = "policy reloaded";
/// Starts each line a starting neuwerk logs about state it carried over
/// from pinned maps of another layout (an upgrade).
pub const UPGRADE: &str = "upgrade:";
/// Logged (with the problems) when a running neuwerk stops being ready.
pub const NOT_READY: &str = "not ready:";

/// Polls `f` every `every` until it is true (returns true) or `limit`
/// has passed (returns false). `f` runs at least once.
pub fn wait_until(limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Removes ANSI colour sequences (neuwerk colours only on a terminal,
/// but a field parsed out of a coloured line must not fail the test).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The number after `key=` in a log line (text or JSON-ish `"key":N`).
pub fn log_field(line: &str, key: &str) -> Option<u64> {
    let line = strip_ansi(line);
    let at = [format!("{key}="), format!("\"{key}\":")]
        .iter()
        .find_map(|p| line.find(p.as_str()).map(|i| i + p.len()))?;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The first log line containing [`ADOPTED`].
pub fn adopted_line(logs: &str) -> Option<String> {
    logs.lines().find(|l| l.contains(ADOPTED)).map(strip_ansi)
}

/// The log line of the reload that made `generation` the policy in force
/// ([`RELOADED`] with `generation=N`), without colour.
pub fn reload_line(logs: &str, generation: u64) -> Option<String> {
    logs.lines()
        .filter(|l| l.contains(RELOADED))
        .map(strip_ansi)
        .find(|l| log_field(l, "generation") == Some(generation))
}

/// Waits up to `limit` for the reload line of `generation` in the current
/// process's log and returns it; panics with the log tail when it does not
/// come.
#[track_caller]
pub fn wait_reload(nw: &Neuwerk<'_>, generation: u64, limit: Duration) -> String {
    let mut line = None;
    wait_until(limit, Duration::from_millis(100), || {
        line = reload_line(&nw.logs(), generation);
        line.is_some()
    });
    line.unwrap_or_else(|| {
        panic!(
            "no {RELOADED:?} line with generation={generation} within {limit:?}\n{}",
            nw.log_tail(40)
        )
    })
}

/// `connections_closed=N` of a reload line; panics when it has none.
#[track_caller]
pub fn connections_closed(reload_line: &str) -> u64 {
    log_field(reload_line, "connections_closed")
        .unwrap_or_else(|| panic!("no connections_closed=N in the reload line: {reload_line}"))
}

/// Resolves `name` (a name of TTL [`SHORT_TTL`] in the standard zone)
/// through neuwerk, opens a keep-alive HTTP connection to `dst` (its IPv4
/// address and a port its rule allows) under the fresh grant, then waits
/// until the grant in neuwerk's kernel map has run out. Asserts that a new
/// connection to `dst` is then blocked and the open one still exchanges
/// data: from here on only connection tracking carries it. No other
/// connection to `dst` is opened under the grant, so the returned one is
/// the only tracked connection the name opened.
pub fn open_under_expiring_grant(
    topo: &Topology,
    nw: &Neuwerk<'_>,
    name: &str,
    dst: SocketAddr,
) -> HttpConn {
    let IpAddr::V4(v4) = dst.ip() else {
        panic!("open_under_expiring_grant reads IPv4 grants; {dst} is not IPv4");
    };
    let c = topo.client();
    let resolved_at = Instant::now();
    assert_resolves(c, NEUWERK_DNS_V4, name, &[dst.ip()]);
    let mut conn = c
        .http_connect(dst, ALLOWED)
        .unwrap_or_else(|e| panic!("connect to {dst} under the fresh grant of {name}: {e:#}"));
    assert_exchange(
        &mut conn,
        &format!("first exchange under the grant of {name}"),
    );
    let ttl = Duration::from_secs(SHORT_TTL.into());
    assert!(
        resolved_at.elapsed() < ttl,
        "setup too slow: the grant of {name} (TTL {ttl:?}) may have run out before the \
         connection was open"
    );
    let expired = wait_until(
        ttl + Duration::from_secs(10),
        Duration::from_millis(100),
        || grant_expired_v4(nw.pid(), v4),
    );
    assert!(
        expired,
        "the kernel map still allows {v4} {:?} after resolving {name} (TTL {ttl:?})",
        resolved_at.elapsed()
    );
    assert_tcp_blocked(c, dst);
    assert_exchange(
        &mut conn,
        &format!("tracked connection to {dst} after the grant of {name} ran out"),
    );
    conn
}

/// Exchanges (`GET /`) on `conn` every 10 ms until `stop`, counting them
/// in `count`; returns the completion times, or the first failure. Meant
/// for a thread that keeps a connection busy across a restart.
pub fn keep_exchanging(
    conn: &mut HttpConn,
    stop: &AtomicBool,
    count: &AtomicUsize,
) -> Result<Vec<Instant>> {
    let mut done = Vec::new();
    let want = format!("ok {}", conn.peer().port());
    while !stop.load(Ordering::Relaxed) {
        match conn.get(ALLOWED) {
            Ok(body) if body == want => done.push(Instant::now()),
            Ok(body) => bail!("exchange {}: unexpected body {body:?}", done.len() + 1),
            Err(e) => {
                return Err(anyhow!(
                    "exchange {} on the open connection: {e:#}",
                    done.len() + 1
                ))
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(done)
}

/// Whether `text` (output of `neuwerk detach`) says there was nothing to
/// detach. The exact words are the product's; this accepts the usual ways
/// of saying it.
pub fn says_nothing_pinned(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("pin")
        && [
            "nothing",
            "no pinned",
            "not pinned",
            "no pins",
            "none pinned",
        ]
        .iter()
        .any(|p| t.contains(p))
}

/// What a pin dir holds: the two links and the maps dirs
/// (`maps-<16 hex digits>`) with their map files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLayout {
    /// `<pin_dir>/link_client` exists.
    pub link_client: bool,
    /// `<pin_dir>/link_upstream` exists.
    pub link_upstream: bool,
    /// The `maps-<16 hex>` dirs and the files in each, sorted.
    pub map_dirs: Vec<(PathBuf, Vec<String>)>,
    /// Every entry under the pin dir, one per line (for messages).
    pub listing: String,
}

/// Whether `name` is `maps-` and 16 hex digits.
fn is_maps_dir_name(name: &str) -> bool {
    name.strip_prefix("maps-")
        .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Reads the layout of `pin_dir`; an error if it cannot be read (e.g.
/// does not exist).
pub fn pinned_layout(pin_dir: &Path) -> std::io::Result<PinnedLayout> {
    let mut names: Vec<String> = std::fs::read_dir(pin_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut listing = String::new();
    let mut map_dirs = Vec::new();
    for name in &names {
        let path = pin_dir.join(name);
        let _ = writeln!(listing, "{}", path.display());
        if is_maps_dir_name(name) && path.is_dir() {
            let mut files: Vec<String> = std::fs::read_dir(&path)?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            for f in &files {
                let _ = writeln!(listing, "{}/{f}", path.display());
            }
            map_dirs.push((path, files));
        }
    }
    Ok(PinnedLayout {
        link_client: names.iter().any(|n| n == LINK_CLIENT),
        link_upstream: names.iter().any(|n| n == LINK_UPSTREAM),
        map_dirs,
        listing,
    })
}

/// Asserts that `pin_dir` holds both links and a maps dir with (at least)
/// [`EXPECTED_MAPS`]; `when` goes into the message.
#[track_caller]
pub fn assert_pinned(pin_dir: &Path, when: &str) {
    let layout = pinned_layout(pin_dir)
        .unwrap_or_else(|e| panic!("{when}: cannot read pin dir {}: {e}", pin_dir.display()));
    let complete = layout.link_client
        && layout.link_upstream
        && layout
            .map_dirs
            .iter()
            .any(|(_, files)| EXPECTED_MAPS.iter().all(|m| files.iter().any(|f| f == m)));
    assert!(
        complete,
        "{when}: {} should hold {LINK_CLIENT}, {LINK_UPSTREAM} and maps-<16 hex>/{{{}}}; it holds:\n{}",
        pin_dir.display(),
        EXPECTED_MAPS.join(","),
        layout.listing
    );
}

/// Counters shared with the [`DnsLoop`] thread.
#[derive(Debug, Default)]
struct LoopState {
    sent: AtomicU64,
    /// Arrival times of the expected answers.
    answers: Mutex<Vec<Instant>>,
    /// Answers other than NOERROR with the expected address.
    wrong: Mutex<Vec<String>>,
}

/// A thread in a namespace sending one DNS query after another (each on a
/// fresh socket, with a short timeout, so a query lost while the server
/// is down is retried at once) and recording when the expected answers
/// arrive. Stops (and joins) on [`DnsLoop::finish`] or drop.
#[derive(Debug)]
pub struct DnsLoop {
    stop: Arc<AtomicBool>,
    state: Arc<LoopState>,
    started: Instant,
    thread: Option<JoinHandle<()>>,
}

/// Pause between two queries of a [`DnsLoop`]: back to back, except that
/// a server that is down answers with ICMP at once, and a loop that then
/// spins would load the shared machine for nothing. 1 ms is far finer
/// than any gap worth measuring.
const LOOP_PAUSE: Duration = Duration::from_millis(1);

impl DnsLoop {
    /// Starts querying `server` for `name` (A) from `ns`; an answer counts
    /// when it is NOERROR and contains `expected`. Each query waits at most
    /// `timeout`.
    pub fn start(
        ns: &Netns,
        server: SocketAddr,
        name: &str,
        expected: IpAddr,
        timeout: Duration,
    ) -> DnsLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(LoopState::default());
        let (ns_name, name) = (ns.name().to_owned(), name.to_owned());
        let (thread_stop, thread_state) = (stop.clone(), state.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("dns-loop-{ns_name}"))
            .spawn(move || {
                let entered = crate::netns::enter(&ns_name).map_err(|e| format!("{e:#}"));
                let failed = entered.is_err();
                let _ = ready_tx.send(entered);
                if failed {
                    return;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build tokio runtime");
                rt.block_on(query_loop(
                    server,
                    name,
                    expected,
                    DnsOpts::udp().timeout(timeout),
                    thread_stop,
                    thread_state,
                ));
            })
            .expect("spawn DNS loop thread");
        if let Err(e) = ready_rx.recv().expect("DNS loop thread died") {
            panic!("DNS loop cannot enter its namespace: {e}");
        }
        DnsLoop {
            stop,
            state,
            started: Instant::now(),
            thread: Some(thread),
        }
    }

    /// Expected answers so far.
    pub fn answered(&self) -> usize {
        lock(&self.state.answers).len()
    }

    /// Expected answers that arrived after `t`.
    pub fn answered_since(&self, t: Instant) -> usize {
        lock(&self.state.answers).iter().filter(|&&a| a > t).count()
    }

    /// Stops the loop and returns what it saw.
    pub fn finish(mut self) -> DnsLoopReport {
        self.halt();
        DnsLoopReport {
            started: self.started,
            finished: Instant::now(),
            sent: self.state.sent.load(Ordering::Relaxed),
            answers: std::mem::take(&mut *lock(&self.state.answers)),
            wrong: std::mem::take(&mut *lock(&self.state.wrong)),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DnsLoop {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Locks a mutex, ignoring poisoning (the data is plain counters).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn query_loop(
    server: SocketAddr,
    name: String,
    expected: IpAddr,
    opts: DnsOpts,
    stop: Arc<AtomicBool>,
    state: Arc<LoopState>,
) {
    while !stop.load(Ordering::Relaxed) {
        state.sent.fetch_add(1, Ordering::Relaxed);
        // No answer (timeout, ICMP unreachable) is what a restart looks
        // like: try again. Any answer is judged.
        if let Ok(msg) = dns_client::query(server, &name, RecordType::A, opts).await {
            let arrived = Instant::now();
            let ok = dns_client::rcode(&msg) == ResponseCode::NoError
                && dns_client::addresses(&msg).contains(&expected);
            if ok {
                lock(&state.answers).push(arrived);
            } else {
                let mut wrong = lock(&state.wrong);
                // Keep the first few for the message, not an unbounded log.
                if wrong.len() < 20 {
                    wrong.push(format!("{msg:?}"));
                }
            }
        }
        tokio::time::sleep(LOOP_PAUSE).await;
    }
}

/// What a [`DnsLoop`] saw.
#[derive(Debug, Clone)]
pub struct DnsLoopReport {
    /// When the loop started.
    pub started: Instant,
    /// When it was stopped.
    pub finished: Instant,
    /// Queries sent.
    pub sent: u64,
    /// Arrival times of the expected answers, in order.
    pub answers: Vec<Instant>,
    /// Unexpected answers (rcode other than NOERROR, or without the
    /// expected address); at most the first 20.
    pub wrong: Vec<String>,
}

impl DnsLoopReport {
    /// The longest time between two consecutive expected answers, and
    /// when the answer that ended it arrived; `None` with fewer than two
    /// answers.
    pub fn longest_gap(&self) -> Option<(Duration, Instant)> {
        self.answers
            .windows(2)
            .map(|w| (w[1] - w[0], w[1]))
            .max_by_key(|&(gap, _)| gap)
    }

    /// Expected answers that arrived after `t`.
    pub fn answered_since(&self, t: Instant) -> usize {
        self.answers.iter().filter(|&&a| a > t).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_phrases() {
        let line = "2026-01-01T00:00:00Z  INFO neuwerk::run: adopted the pinned dataplane \
                    pin_dir=/sys/fs/bpf/x grants=3 connections=1";
        assert_eq!(log_field(line, "grants"), Some(3));
        assert_eq!(log_field(line, "connections"), Some(1));
        assert_eq!(log_field(line, "missing"), None);
        assert_eq!(
            log_field("\u{1b}[3mgrants\u{1b}[0m\u{1b}[2m=\u{1b}[0m7", "grants"),
            Some(7)
        );
        assert_eq!(log_field(r#"{"grants":12,"x":1}"#, "grants"), Some(12));
        assert!(adopted_line(&format!("a\n{line}\nb")).is_some());
        let reloads = "x INFO neuwerk::reload: policy reloaded (SIGHUP): 1 network \
                       generation=2 grants_revoked=0 connections_closed=0\n\
                       x INFO neuwerk::reload: policy reloaded (file changed): 1 network \
                       generation=3 grants_revoked=1 connections_closed=1\n";
        let third = reload_line(reloads, 3).expect("generation 3");
        assert!(third.contains("file changed"), "{third}");
        assert_eq!(connections_closed(&third), 1);
        assert_eq!(
            reload_line(reloads, 2).map(|l| connections_closed(&l)),
            Some(0)
        );
        assert!(reload_line(reloads, 4).is_none());
        assert!(says_nothing_pinned("nothing is pinned under /sys/fs/bpf/x"));
        assert!(says_nothing_pinned("neuwerk: no pinned dataplane in /x"));
        assert!(!says_nothing_pinned(
            "detached nwi0 and nwe0, removed 12 pins"
        ));
        assert!(is_maps_dir_name("maps-0123456789abcdef"));
        assert!(!is_maps_dir_name("maps-0123"));
        assert!(!is_maps_dir_name("link_client"));
    }

    #[test]
    fn longest_gap() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let r = DnsLoopReport {
            started: t,
            finished: t + ms(60),
            sent: 4,
            answers: vec![t, t + ms(2), t + ms(50), t + ms(51)],
            wrong: vec![],
        };
        assert_eq!(r.longest_gap(), Some((ms(48), t + ms(50))));
        assert_eq!(r.answered_since(t + ms(2)), 2);
    }
}
