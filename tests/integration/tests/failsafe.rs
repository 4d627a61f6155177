//! The dataplane outlives the neuwerk process. Killed (SIGKILL) or
//! stopped (SIGTERM), neuwerk leaves its programs attached and its maps
//! pinned in the host bpffs: live grants go on allowing their addresses,
//! established connections go on, everything else stays dropped. A new
//! process on the same config adopts the pinned state; `neuwerk detach`
//! is the explicit way to stop filtering. Started with `ip netns exec`
//! (a private /sys), neuwerk warns that none of this can hold.
//!
//! Survival runs start neuwerk through nsenter in the host's mount
//! namespace with a pin dir of their own ([`NeuwerkConfig::survivable`]);
//! the harness removes the pins when the test ends, also on panic.
//!
//! Destinations (all served by the HTTP mock, so a block can only be the
//! firewall's; each test checks that first, before neuwerk runs):
//! - [`GRANTED`]: example.com (TTL 300 s), granted by a DNS answer that
//!   stays live for the whole test;
//! - [`EXPIRED`]: short.example.com (TTL 2 s), whose grant runs out
//!   before neuwerk goes down, so only connection tracking lets an open
//!   connection to it go on;
//! - [`NEVER`]: an address the policy never names.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::{ALLOWED, BLOCKED};
use neuwerk_integration::failsafe::*;
use neuwerk_integration::topology::*;
use neuwerk_integration::zone::{NEW_V4, SHORT_TTL};
use neuwerk_integration::{DnsOpts, HttpConn, Neuwerk, NeuwerkConfig, Topology};

/// example.com's address and the port the policy grants it.
const GRANTED: SocketAddr = SocketAddr::new(IpAddr::V4(DEST_V4), 443);
/// short.example.com's address and the port the policy grants it.
const EXPIRED: SocketAddr = SocketAddr::new(IpAddr::V4(DEST2_V4), 8443);
/// An address no rule and no allowed name of the policy leads to.
const NEVER: SocketAddr = SocketAddr::new(IpAddr::V4(NEW_V4), 443);
/// A name the mock serves (192.0.2.100) that the policy does not allow,
/// used to ask resolvers directly (so as not to add queries for
/// example.com to the mock's log).
const OTHER_NAME: &str = "example.org";
/// How long a starting neuwerk may take to log what it adopted.
const LOGGED: Duration = Duration::from_secs(5);

/// The policy of every test: two names, TCP only.
fn policy() -> String {
    "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]\n    policies:\n      \
     - { hostname: example.com, ports: [443], protocol: tcp }\n      \
     - { hostname: short.example.com, ports: [8443], protocol: tcp }\n"
        .to_owned()
}

/// `GET /` on the open connection `conn`; panics, saying `what`, unless
/// the mock answers.
#[track_caller]
fn exchange(conn: &mut HttpConn, what: &str) {
    let port = conn.peer().port();
    match conn.get(ALLOWED) {
        Ok(body) => assert_eq!(body, format!("ok {port}"), "{what}"),
        Err(e) => panic!(
            "{what}: the open connection to {} failed: {e:#}",
            conn.peer()
        ),
    }
}

/// Without neuwerk the firewall namespace is a plain router: every
/// destination the tests expect blocked answers, and the client reaches
/// the upstream resolver directly.
fn assert_baseline(topo: &Topology) {
    let c = topo.client();
    for dst in [GRANTED, EXPIRED, NEVER] {
        assert_http_ok(c, dst);
    }
    assert_resolves(c, UPSTREAM_DNS_V4, OTHER_NAME, &[DEST_V4.into()]);
}

/// Starts the survivable neuwerk and checks that it runs in the host's
/// mount namespace with its dataplane pinned there.
fn start_survivable(topo: &Topology) -> Neuwerk<'_> {
    let nw = Neuwerk::start_with(topo, &NeuwerkConfig::survivable(), &policy());
    assert_host_bpffs(&nw, "after the first start");
    nw
}

/// The process did not warn about a private bpffs (the launch through
/// nsenter worked) and its pins are in the host bpffs.
#[track_caller]
fn assert_host_bpffs(nw: &Neuwerk<'_>, when: &str) {
    assert!(
        !nw.logs().contains(PRIVATE_BPFFS_WARNING),
        "{when}: neuwerk started through nsenter warns that its pins will not outlive it\n{}",
        nw.log_tail(30)
    );
    assert_pinned(pin_dir(nw), when);
}

/// The pin dir of a survivable run.
fn pin_dir<'a>(nw: &'a Neuwerk<'_>) -> &'a Path {
    nw.pin_dir().expect("survivable config has a pin dir")
}

/// Queries `name` through neuwerk and asserts the address.
#[track_caller]
fn resolve_via_neuwerk(topo: &Topology, name: &str, expected: IpAddr) {
    assert_resolves(topo.client(), NEUWERK_DNS_V4, name, &[expected]);
}

/// Opens a connection to [`EXPIRED`] under its 2 s grant, then waits until
/// the grant has run out (a new connection is dropped) while the open one
/// still exchanges data: from then on only connection tracking carries it.
fn open_tracked_only(topo: &Topology) -> HttpConn {
    let c = topo.client();
    let resolved_at = Instant::now();
    resolve_via_neuwerk(topo, "short.example.com", EXPIRED.ip());
    let mut conn = c
        .http_connect(EXPIRED, ALLOWED)
        .unwrap_or_else(|e| panic!("connect to {EXPIRED} under a fresh grant: {e:#}"));
    exchange(&mut conn, "first exchange under the short grant");
    assert!(
        resolved_at.elapsed() < Duration::from_secs(u64::from(SHORT_TTL)),
        "setup too slow: the short grant may have run out before the connection was open"
    );
    let expired = wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        !c.can_connect(EXPIRED, BLOCKED)
    });
    assert!(
        expired,
        "the grant of short.example.com (TTL {SHORT_TTL}s) still allows new connections \
         to {EXPIRED} 10s later"
    );
    exchange(&mut conn, "tracked connection after its grant ran out");
    conn
}

/// A DNS query from the client straight to the upstream resolver (not
/// through neuwerk) never reaches the resolver: while neuwerk runs it is
/// intercepted and answered by neuwerk's proxy, while none runs it goes
/// unanswered. The resolver itself still answers (asked from the node,
/// whose own traffic is not filtered), so the containment is the
/// firewall's.
#[track_caller]
fn assert_direct_dns_contained(topo: &Topology, when: &str) {
    let from_client = || {
        topo.dns()
            .queries()
            .iter()
            .filter(|q| q.client.ip() == IpAddr::V4(CLIENT_V4))
            .count()
    };
    let before = from_client();
    let _ = topo.client().dns_query(
        UPSTREAM_DNS_V4,
        OTHER_NAME,
        RecordType::A,
        DnsOpts::udp().timeout(BLOCKED),
    );
    assert_eq!(
        from_client(),
        before,
        "{when}: the client's direct query reached the resolver"
    );
    assert_resolves(
        topo.firewall(),
        UPSTREAM_DNS_V4,
        OTHER_NAME,
        &[DEST_V4.into()],
    );
}

/// What the node enforces before and after neuwerk exits, and after it
/// restarts: open connections (one under a live grant, one whose grant ran
/// out) go on, the live grant allows a new connection, and the expired
/// grant's destination, an address never granted and DNS past the node
/// stay dropped.
fn assert_enforcing(topo: &Topology, live: &mut HttpConn, tracked: &mut HttpConn, when: &str) {
    let c = topo.client();
    exchange(live, &format!("{when}: connection under the live grant"));
    exchange(
        tracked,
        &format!("{when}: tracked connection, grant expired"),
    );
    match c.http_get(GRANTED, ALLOWED) {
        Ok(body) => assert_eq!(body, "ok 443", "{when}: new connection to {GRANTED}"),
        Err(e) => panic!("{when}: new connection to {GRANTED} (live grant) failed: {e:#}"),
    }
    assert!(
        !c.can_connect(NEVER, BLOCKED),
        "{when}: {NEVER} (never granted) accepted a connection"
    );
    assert!(
        !c.can_connect(EXPIRED, BLOCKED),
        "{when}: {EXPIRED} (grant expired) accepted a new connection"
    );
    assert_direct_dns_contained(topo, when);
}

/// How a survival test ends the first process.
#[derive(Debug, Clone, Copy)]
enum Exit {
    Kill9,
    Term,
}

/// The survival scenario: grants and connections, `exit`, enforcement
/// with no process, restart, adoption, enforcement again.
fn survives(exit: Exit) {
    let topo = Topology::new();
    let c = topo.client();
    assert_baseline(&topo);
    let mut nw = start_survivable(&topo);
    // Nothing is granted before a DNS answer.
    assert!(
        !c.can_connect(GRANTED, BLOCKED),
        "{GRANTED} reachable before example.com was resolved"
    );

    let mut tracked = open_tracked_only(&topo);
    resolve_via_neuwerk(&topo, "example.com", GRANTED.ip());
    let mut live = c
        .http_connect(GRANTED, ALLOWED)
        .unwrap_or_else(|e| panic!("connect to {GRANTED} after resolving: {e:#}"));
    assert_enforcing(&topo, &mut live, &mut tracked, "while neuwerk runs");

    let status = match exit {
        Exit::Kill9 => {
            let s = nw.kill9();
            assert_eq!(s.signal(), Some(libc::SIGKILL), "status after SIGKILL: {s}");
            s
        }
        Exit::Term => {
            let s = nw.terminate();
            assert!(
                s.success(),
                "neuwerk exited with {s} after SIGTERM\n{}",
                nw.log_tail(40)
            );
            assert!(
                nw.logs().contains(LEFT_IN_PLACE),
                "no {LEFT_IN_PLACE:?} in the log after SIGTERM\n{}",
                nw.log_tail(40)
            );
            s
        }
    };
    eprintln!("neuwerk exited ({status}) after {exit:?}");
    assert_pinned(pin_dir(&nw), "after the exit");

    // No process: DNS to the node goes unanswered...
    let r = c.dns_query(
        NEUWERK_DNS_V4,
        "example.com",
        RecordType::A,
        DnsOpts::udp().timeout(BLOCKED),
    );
    assert!(r.is_err(), "DNS answered with neuwerk gone: {r:?}");
    // ...and the kernel enforces what it enforced.
    assert_enforcing(&topo, &mut live, &mut tracked, "while neuwerk is down");

    let example_queries = topo.dns().queries_for("example.com").len();
    nw.restart();
    assert_host_bpffs(&nw, "after the restart");
    assert!(
        nw.wait_for_log(ADOPTED, LOGGED),
        "the restarted neuwerk did not log {ADOPTED:?}\n{}",
        nw.log_tail(40)
    );
    let line = adopted_line(&nw.logs()).expect("line just seen");
    let grants = log_field(&line, "grants")
        .unwrap_or_else(|| panic!("no grants=N in the adoption line: {line}"));
    assert!(
        grants >= 1,
        "adopted {grants} grants (example.com's is live): {line}"
    );
    eprintln!("{line}");

    assert_enforcing(&topo, &mut live, &mut tracked, "after the restart");
    // The new connection to GRANTED above was allowed by the adopted grant:
    // nobody asked for example.com again.
    assert_eq!(
        topo.dns().queries_for("example.com").len(),
        example_queries,
        "example.com was resolved again across the restart"
    );
    // The new process serves DNS with the policy in force.
    resolve_via_neuwerk(&topo, "example.com", GRANTED.ip());
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "www.example.com",
        RecordType::A,
        ResponseCode::Refused,
    );
    nw.stop();
}

/// SIGKILL: no chance to clean up, and none needed.
#[test]
fn kill_9_keeps_enforcing() {
    survives(Exit::Kill9);
}

/// SIGTERM: a clean exit (status 0) that leaves the dataplane in place.
#[test]
fn sigterm_keeps_enforcing() {
    survives(Exit::Term);
}

/// Exchanges on `conn` every 10 ms until `stop`, counting them in
/// `count`; returns the completion times, or the first failure.
fn keep_exchanging(
    conn: &mut HttpConn,
    stop: &AtomicBool,
    count: &AtomicUsize,
) -> Result<Vec<Instant>> {
    let mut done = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match conn.get(ALLOWED) {
            Ok(body) if body == "ok 443" => done.push(Instant::now()),
            Ok(body) => bail!("exchange {}: unexpected body {body:?}", done.len() + 1),
            Err(e) => {
                return Err(anyhow!(
                    "exchange {} on the open connection: {e:#}",
                    done.len() + 1
                ))
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        sleep(Duration::from_millis(10));
    }
    Ok(done)
}

/// The longest time between two consecutive instants.
fn longest_gap(times: &[Instant]) -> Duration {
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// A restart (SIGTERM, start) while a client resolves through neuwerk back
/// to back and an open connection exchanges data: the connection never
/// fails, DNS answers again after the restart, and the longest silence of
/// DNS is reported (not judged: the machine is shared).
#[test]
fn restart_under_traffic() {
    let topo = Topology::new();
    let c = topo.client();
    assert_baseline(&topo);
    let mut nw = start_survivable(&topo);
    resolve_via_neuwerk(&topo, "example.com", GRANTED.ip());
    let mut conn = c
        .http_connect(GRANTED, ALLOWED)
        .unwrap_or_else(|e| panic!("connect to {GRANTED} after resolving: {e:#}"));
    exchange(&mut conn, "before the restart");

    let dns = DnsLoop::start(
        topo.client_ns(),
        NEUWERK_DNS_V4,
        "example.com",
        GRANTED.ip(),
        Duration::from_millis(100),
    );
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(10), || dns
            .answered()
            >= 20),
        "the DNS loop got {} answers in 5s before the restart",
        dns.answered()
    );

    let stop = AtomicBool::new(false);
    let count = AtomicUsize::new(0);
    let (exchanges, term_at, ready_at) = std::thread::scope(|s| {
        let tcp = s.spawn(|| keep_exchanging(&mut conn, &stop, &count));
        let term_at = Instant::now();
        let status = nw.terminate();
        assert!(
            status.success(),
            "neuwerk exited with {status} after SIGTERM\n{}",
            nw.log_tail(40)
        );
        nw.restart();
        let ready_at = Instant::now();
        assert!(
            nw.wait_for_log(ADOPTED, LOGGED),
            "the restarted neuwerk did not log {ADOPTED:?}\n{}",
            nw.log_tail(40)
        );
        let answered = wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            dns.answered_since(ready_at) >= 20
        });
        // A few exchanges after the restart too (or the thread's failure).
        let base = count.load(Ordering::Relaxed);
        let _ = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            tcp.is_finished() || count.load(Ordering::Relaxed) >= base + 5
        });
        stop.store(true, Ordering::Relaxed);
        let exchanges = tcp
            .join()
            .expect("exchange thread")
            .unwrap_or_else(|e| panic!("the open connection failed across the restart: {e:#}"));
        assert!(
            answered,
            "DNS through neuwerk: {} answers in the 10s after the restart\n{}",
            dns.answered_since(ready_at),
            nw.log_tail(40)
        );
        (exchanges, term_at, ready_at)
    });
    let report = dns.finish();

    let after = exchanges.iter().filter(|&&t| t > ready_at).count();
    assert!(
        after > 0,
        "no exchange on the open connection after the restart ({} before)",
        exchanges.len()
    );
    let (gap, ended) = report.longest_gap().expect("answers before and after");
    eprintln!(
        "restart under traffic: SIGTERM to ready {:?}; DNS: {} queries in {:?}, {} answered, \
         longest gap between answers {gap:?} (ended {:?} after SIGTERM); TCP: {} exchanges \
         ({after} after the restart), longest gap {:?}",
        ready_at - term_at,
        report.sent,
        report.finished - report.started,
        report.answers.len(),
        ended.saturating_duration_since(term_at),
        exchanges.len(),
        longest_gap(&exchanges),
    );
    assert!(
        report.answered_since(ready_at) > 0,
        "no DNS answer after the restart"
    );
    assert!(
        report.wrong.is_empty(),
        "an allowed name got unexpected answers around the restart:\n{}",
        report.wrong.join("\n")
    );
    // Still a firewall after all this.
    exchange(&mut conn, "after the restart, from the test thread");
    assert_http_ok(c, GRANTED);
    assert!(
        !c.can_connect(NEVER, BLOCKED),
        "{NEVER} (never granted) accepted a connection after the restart"
    );
    nw.stop();
}

/// `neuwerk detach` on a node neuwerk left enforcing: the programs and
/// every pin go, so the node filters nothing; a second detach finds
/// nothing and still succeeds; a start after it begins from nothing.
#[test]
fn detach_removes_programs_and_pins() {
    let topo = Topology::new();
    let c = topo.client();
    assert_baseline(&topo);
    let mut nw = start_survivable(&topo);
    let dir = pin_dir(&nw).to_path_buf();
    resolve_via_neuwerk(&topo, "example.com", GRANTED.ip());
    assert_http_ok(c, GRANTED);
    assert_tcp_blocked(c, NEVER);

    let status = nw.terminate();
    assert!(
        status.success(),
        "neuwerk exited with {status} after SIGTERM\n{}",
        nw.log_tail(40)
    );
    // Still enforcing with no process: what detach is there to end.
    assert_http_ok(c, GRANTED);
    assert_tcp_blocked(c, NEVER);
    assert_pinned(&dir, "before detach");

    let out = nw.detach();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("neuwerk detach: {}", text.trim());
    assert!(
        out.status.success(),
        "neuwerk detach: {}: {text}",
        out.status
    );
    assert!(
        std::fs::symlink_metadata(&dir).is_err(),
        "{} still exists after detach:\n{}",
        dir.display(),
        pinned_layout(&dir).map(|l| l.listing).unwrap_or_default()
    );
    // The programs are off: what was never allowed passes, what was
    // allowed still does, and DNS reaches the resolver directly.
    assert_http_ok(c, NEVER);
    assert_http_ok(c, GRANTED);
    assert_resolves(c, UPSTREAM_DNS_V4, OTHER_NAME, &[DEST_V4.into()]);

    let again = nw.detach();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    eprintln!("neuwerk detach (again): {}", text.trim());
    assert!(
        again.status.success(),
        "second neuwerk detach: {}: {text}",
        again.status
    );
    assert!(
        says_nothing_pinned(&text),
        "second neuwerk detach should say nothing is pinned: {text:?}"
    );

    // Detach also freed the maps: a new process adopts nothing and its
    // grants start empty.
    nw.restart();
    assert_host_bpffs(&nw, "after a start following detach");
    assert!(
        !nw.logs().contains(ADOPTED),
        "neuwerk adopted a dataplane after detach\n{}",
        nw.log_tail(30)
    );
    assert_tcp_blocked(c, GRANTED);
    assert_tcp_blocked(c, NEVER);
    resolve_via_neuwerk(&topo, "example.com", GRANTED.ip());
    assert_http_ok(c, GRANTED);
    nw.stop();
}

/// Started the old way (`ip netns exec`: a private /sys), neuwerk warns
/// once that its dataplane cannot outlive it, and works as before; and
/// indeed, once it has exited, nothing is filtered any more.
#[test]
fn private_bpffs_warns() {
    let topo = Topology::new();
    let c = topo.client();
    assert_baseline(&topo);
    let nw = Neuwerk::start(&topo, &policy());
    assert!(
        nw.wait_for_log(PRIVATE_BPFFS_WARNING, LOGGED),
        "no {PRIVATE_BPFFS_WARNING:?} warning with a private /sys\n{}",
        nw.log_tail(30)
    );
    resolve_via_neuwerk(&topo, "example.com", GRANTED.ip());
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "www.example.com",
        RecordType::A,
        ResponseCode::Refused,
    );
    assert_http_ok(c, GRANTED);
    assert_tcp_blocked(c, NEVER);
    assert_direct_dns_contained(&topo, "neuwerk with a private /sys");
    let warnings = nw.logs().matches(PRIVATE_BPFFS_WARNING).count();
    assert_eq!(
        warnings,
        1,
        "the warning should be logged once\n{}",
        nw.log_tail(30)
    );
    nw.stop();
    // Its pins died with its mount namespace: the programs are gone.
    let open = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        c.http_get(NEVER, BLOCKED).is_ok()
    });
    assert!(
        open,
        "{NEVER} still blocked 10s after a neuwerk with a private /sys exited: \
         its dataplane outlived it"
    );
}
