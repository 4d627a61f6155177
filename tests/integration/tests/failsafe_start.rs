//! What a starting neuwerk checks and takes over, and how it reports
//! readiness while it runs:
//! - an upgrade whose maps have another layout: the new daemon finds only
//!   pinned maps of another layout (`maps-<16 hex>`), builds its own,
//!   carries grants, connections and the rest over, swaps its programs
//!   into the pinned links and removes the old maps, and traffic never
//!   notices;
//! - IP forwarding off at start: turned on (the default, `set`), or a
//!   refusal to start (`require`);
//! - `/readyz` from the real state: a program taken off its interface by
//!   hand, forwarding turned off while running.
//!
//! Destinations (all served by the HTTP mock, so a block can only be the
//! firewall's; each test checks that first, before neuwerk runs):
//! - [`GRANTED`]: example.com (TTL 300 s), live for the whole test;
//! - [`EXPIRED`]: short.example.com (TTL 2 s), whose grant runs out, so
//!   only connection tracking carries a connection opened under it;
//! - [`NEVER`]: an address the policy never names.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::{ALLOWED, BLOCKED};
use neuwerk_integration::failsafe::*;
use neuwerk_integration::mgmt::Mgmt;
use neuwerk_integration::neuwerk::READY_TIMEOUT;
use neuwerk_integration::topology::*;
use neuwerk_integration::zone::NEW_V4;
use neuwerk_integration::{DnsOpts, Neuwerk, NeuwerkConfig, Topology};

/// example.com's address and the port the policy grants it.
const GRANTED: SocketAddr = SocketAddr::new(IpAddr::V4(DEST_V4), 443);
/// short.example.com's address and the port the policy grants it.
const EXPIRED: SocketAddr = SocketAddr::new(IpAddr::V4(DEST2_V4), 8443);
/// An address no rule and no allowed name of the policy leads to.
const NEVER: SocketAddr = SocketAddr::new(IpAddr::V4(NEW_V4), 443);
/// A layout no build has: the maps dir of another build, as this one
/// sees it.
const FOREIGN_LAYOUT: &str = "0000000000000001";
/// How long a starting neuwerk may take to log what it found.
const LOGGED: Duration = Duration::from_secs(5);
/// How often neuwerk checks readiness in the background (its
/// `READINESS_CHECK`): a loss of readiness is logged at the next check.
const READINESS_PERIOD: Duration = Duration::from_secs(5);
/// The sysctls neuwerk needs on.
const FORWARDING: [&str; 2] = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"];

/// The policy of every test: two names, TCP only.
fn policy() -> String {
    "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]\n    policies:\n      \
     - { hostname: example.com, ports: [443], protocol: tcp }\n      \
     - { hostname: short.example.com, ports: [8443], protocol: tcp }\n"
        .to_owned()
}

/// Without neuwerk the firewall namespace is a plain router: every
/// destination the tests expect blocked answers.
fn assert_baseline(topo: &Topology) {
    for dst in [GRANTED, EXPIRED, NEVER] {
        assert_http_ok(topo.client(), dst);
    }
}

/// The pin dir of a survivable run.
fn pin_dir<'a>(nw: &'a Neuwerk<'_>) -> &'a Path {
    nw.pin_dir().expect("survivable config has a pin dir")
}

/// The `maps-<layout>` dirs under `pin_dir`.
fn map_dirs(pin_dir: &Path) -> Vec<PathBuf> {
    pinned_layout(pin_dir)
        .unwrap_or_else(|e| panic!("cannot read pin dir {}: {e}", pin_dir.display()))
        .map_dirs
        .into_iter()
        .map(|(dir, _)| dir)
        .collect()
}

/// The number before `entries carried over` in the upgrade line of `map`.
fn carried(upgrade_lines: &[String], map: &str) -> Option<u64> {
    let prefix = format!("{map}: ");
    upgrade_lines.iter().find_map(|l| {
        let rest = &l[l.find(&prefix)? + prefix.len()..];
        let n = rest.strip_suffix(" entries carried over")?;
        n.trim().parse().ok()
    })
}

/// An upgrade to a build whose maps have another layout, simulated by
/// renaming the pinned maps dir to a layout no build has: the new daemon
/// carries grants and connections over into maps of its own layout,
/// removes the old ones, and neither the open connections (one under a
/// live grant, exchanging all along; one whose grant expired, carried by
/// connection tracking alone) nor the granted address notice; what was
/// never granted stays blocked.
#[test]
fn a_foreign_layout_is_carried_over_without_a_gap() {
    let topo = Topology::new();
    let c = topo.client();
    assert_baseline(&topo);
    let mut nw = Neuwerk::start_with(&topo, &NeuwerkConfig::survivable(), &policy());
    let dir = pin_dir(&nw).to_path_buf();
    assert_pinned(&dir, "after the first start");
    let own = map_dirs(&dir);
    assert_eq!(own.len(), 1, "one maps dir after the first start: {own:?}");
    let own = own[0].clone();
    let foreign = dir.join(format!("maps-{FOREIGN_LAYOUT}"));
    assert_ne!(own, foreign, "this build's layout is {FOREIGN_LAYOUT}");

    let mut tracked = open_under_expiring_grant(&topo, &nw, "short.example.com", EXPIRED);
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[GRANTED.ip()]);
    let mut live = c
        .http_connect(GRANTED, ALLOWED)
        .unwrap_or_else(|e| panic!("connect to {GRANTED} after resolving: {e:#}"));
    assert_exchange(&mut live, "before the upgrade");
    assert_tcp_blocked(c, NEVER);

    let stop = AtomicBool::new(false);
    let count = AtomicUsize::new(0);
    let (exchanges, ready_at, queries_before) = std::thread::scope(|s| {
        let tcp = s.spawn(|| keep_exchanging(&mut live, &stop, &count));
        let status = nw.terminate();
        assert!(
            status.success(),
            "neuwerk exited with {status} after SIGTERM\n{}",
            nw.log_tail(40)
        );
        assert_exchange(&mut tracked, "neuwerk down, maps not yet renamed");
        std::fs::rename(&own, &foreign)
            .unwrap_or_else(|e| panic!("rename {} to {}: {e}", own.display(), foreign.display()));
        assert_exchange(&mut tracked, "neuwerk down, maps renamed");
        let queries_before = topo.dns().queries_for("example.com").len();
        nw.restart();
        let ready_at = Instant::now();
        // A few exchanges after the restart too (or the thread's failure).
        let base = count.load(Ordering::Relaxed);
        let _ = wait_until(Duration::from_secs(5), Duration::from_millis(10), || {
            tcp.is_finished() || count.load(Ordering::Relaxed) >= base + 5
        });
        stop.store(true, Ordering::Relaxed);
        let exchanges = tcp
            .join()
            .expect("exchange thread")
            .unwrap_or_else(|e| panic!("the open connection failed across the upgrade: {e:#}"));
        (exchanges, ready_at, queries_before)
    });
    let after = exchanges.iter().filter(|&&t| t > ready_at).count();
    assert!(
        after > 0,
        "no exchange on the open connection after the upgrade ({} before)",
        exchanges.len()
    );
    eprintln!(
        "{} exchanges on the live connection across the upgrade, {after} after it",
        exchanges.len()
    );

    let removed = format!("{UPGRADE} removed the maps of layout {FOREIGN_LAYOUT}");
    assert!(
        nw.wait_for_log(&removed, LOGGED),
        "the upgraded neuwerk did not log {removed:?}\n{}",
        nw.log_tail(40)
    );
    let logs = nw.logs();
    let upgrade: Vec<String> = logs
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains(UPGRADE))
        .collect();
    eprintln!("{}", upgrade.join("\n"));
    assert!(
        upgrade
            .iter()
            .any(|l| l.contains(&format!("from the maps of layout {FOREIGN_LAYOUT}"))),
        "no upgrade line naming layout {FOREIGN_LAYOUT}:\n{}",
        upgrade.join("\n")
    );
    for map in ["nw_grants", "nw_conntrack"] {
        let n = carried(&upgrade, map).unwrap_or_else(|| {
            panic!(
                "no \"{map}: N entries carried over\" line:\n{}",
                upgrade.join("\n")
            )
        });
        assert!(
            n >= 1,
            "{map}: {n} entries carried over, expected at least 1"
        );
    }
    assert!(
        !logs.contains(ADOPTED),
        "the maps of another layout are carried over, not adopted\n{}",
        nw.log_tail(30)
    );
    assert!(
        std::fs::symlink_metadata(&foreign).is_err(),
        "{} still exists after the upgrade",
        foreign.display()
    );
    assert_eq!(
        map_dirs(&dir),
        vec![own.clone()],
        "the upgraded neuwerk pins its maps under its own layout"
    );
    assert_pinned(&dir, "after the upgrade");

    // Connection tracking came along: the connection whose grant expired
    // goes on, a new one to its address is still dropped.
    assert_exchange(&mut tracked, "after the upgrade, grant expired");
    assert_exchange(&mut live, "after the upgrade, from the test thread");
    assert_tcp_blocked(c, EXPIRED);
    // The grant came along: a new connection to its address, with nobody
    // asking for the name again; what was never granted stays dropped.
    assert_http_ok(c, GRANTED);
    assert_eq!(
        topo.dns().queries_for("example.com").len(),
        queries_before,
        "example.com was resolved again across the upgrade"
    );
    assert_tcp_blocked(c, NEVER);
    // And the new process serves DNS.
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[GRANTED.ip()]);
    nw.stop();
}

/// Sets the forwarding sysctls of the firewall namespace to `value`.
fn set_forwarding(topo: &Topology, value: u8) {
    let settings: Vec<String> = FORWARDING.iter().map(|k| format!("{k}={value}")).collect();
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    topo.firewall_ns().sysctl(&settings);
}

/// Asserts the forwarding sysctls of the firewall namespace read `value`.
#[track_caller]
fn assert_forwarding(topo: &Topology, value: &str, when: &str) {
    for key in FORWARDING {
        assert_eq!(
            topo.firewall_ns().sysctl_value(key),
            value,
            "{when}: {key} in the firewall namespace"
        );
    }
}

/// A node whose forwarding is off when neuwerk starts (the default,
/// `forwarding_sysctls: set`): neuwerk turns both sysctls on, says so,
/// and allowed traffic flows, where before it went nowhere.
#[test]
fn forwarding_off_at_start_is_turned_on() {
    let topo = Topology::new();
    let c = topo.client();
    assert_baseline(&topo);
    set_forwarding(&topo, 0);
    assert_forwarding(&topo, "0", "before neuwerk");
    // Forwarding off is what stops traffic here: the node routes nothing.
    assert_tcp_blocked(c, GRANTED);

    let nw = Neuwerk::start(&topo, &policy());
    for key in FORWARDING {
        let said = format!("turned {key} on");
        assert!(
            nw.wait_for_log(&said, LOGGED),
            "no {said:?} in the log\n{}",
            nw.log_tail(30)
        );
    }
    assert_forwarding(&topo, "1", "after neuwerk started");
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[GRANTED.ip()]);
    assert_http_ok(c, GRANTED);
    assert_tcp_blocked(c, NEVER);
    nw.stop();
}

/// With `forwarding_sysctls: require`, neuwerk refuses to start while
/// forwarding is off: it exits non-zero naming the sysctl, never answers
/// DNS, and leaves the sysctls alone. With forwarding on, the same config
/// starts and answers.
#[test]
fn forwarding_required_refuses_to_start() {
    let topo = Topology::new();
    let c = topo.client();
    // The resolver neuwerk would forward to answers (from the node).
    assert_resolves(
        topo.firewall(),
        UPSTREAM_DNS_V4,
        "example.com",
        &[GRANTED.ip()],
    );
    set_forwarding(&topo, 0);
    let cfg = NeuwerkConfig {
        forwarding_sysctls: Some("require"),
        ..NeuwerkConfig::default()
    };
    // Ask neuwerk for an allowed name from before the process exists
    // until it has exited.
    let dns = DnsLoop::start(
        topo.client_ns(),
        NEUWERK_DNS_V4,
        "example.com",
        GRANTED.ip(),
        Duration::from_millis(100),
    );
    let mut nw = Neuwerk::spawn(&topo, &cfg, &policy());
    let status = nw.wait_exit(READY_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "neuwerk still running {READY_TIMEOUT:?} with forwarding off and \
             forwarding_sysctls: require\n{}",
            nw.log_tail(30)
        )
    });
    let report = dns.finish();
    let logs = nw.logs();
    eprintln!("neuwerk exited with {status}:\n{}", logs.trim());
    assert!(!status.success(), "neuwerk exited with {status}");
    assert!(
        logs.contains("net.ipv4.ip_forward"),
        "the error should name net.ipv4.ip_forward\n{}",
        nw.log_tail(30)
    );
    assert!(
        report.sent > 0 && report.answers.is_empty() && report.wrong.is_empty(),
        "DNS to neuwerk while it refused to start: {} queries, {} answered, {} other answers {:?}",
        report.sent,
        report.answers.len(),
        report.wrong.len(),
        report.wrong
    );
    assert_forwarding(&topo, "0", "after neuwerk refused to start");

    // The refusal was about forwarding only: turned on, the same config
    // starts and answers.
    set_forwarding(&topo, 1);
    nw.restart();
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[GRANTED.ip()]);
    assert_http_ok(c, GRANTED);
    assert_tcp_blocked(c, NEVER);
    nw.stop();
}

/// `/readyz` as status code and JSON body.
fn readyz(m: &Mgmt<'_>) -> (u16, serde_json::Value) {
    let r = m
        .get("/readyz")
        .unwrap_or_else(|e| panic!("GET /readyz: {e:#}"));
    let body = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("/readyz body is not JSON ({e}): {}", r.body));
    (r.status, body)
}

/// The `problems` of a `/readyz` body.
fn problems(body: &serde_json::Value) -> Vec<String> {
    body["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems array in /readyz: {body}"))
        .iter()
        .map(|p| p.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Asserts the four flags of a `/readyz` body.
#[track_caller]
fn assert_flags(body: &serde_json::Value, attached: bool, forwarding: bool, when: &str) {
    for (flag, want) in [
        ("dataplane_attached", attached),
        ("policy_loaded", true),
        ("dns_listening", true),
        ("forwarding", forwarding),
    ] {
        assert_eq!(body[flag], want, "{when}: {flag} in /readyz: {body}");
    }
}

/// Polls `/readyz` until it answers `status` (at most 10 s); returns the
/// body, or panics with the last answer.
#[track_caller]
fn wait_readyz(m: &Mgmt<'_>, status: u16, when: &str) -> serde_json::Value {
    let mut last = (0, serde_json::Value::Null);
    let seen = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        last = readyz(m);
        last.0 == status
    });
    assert!(seen, "{when}: /readyz answers {} {}", last.0, last.1);
    last.1
}

/// Client queries straight to the upstream resolver that reached it.
fn direct_queries(topo: &Topology) -> usize {
    topo.dns()
        .queries()
        .iter()
        .filter(|q| q.client.ip() == IpAddr::V4(CLIENT_V4))
        .count()
}

/// Sends one DNS query from the client straight to the upstream resolver
/// (the answer, if any, is not awaited long: the reply direction is not
/// what is checked).
fn query_upstream_directly(topo: &Topology) {
    let _ = topo.client().dns_query(
        UPSTREAM_DNS_V4,
        "example.org",
        RecordType::A,
        DnsOpts::udp().timeout(BLOCKED),
    );
}

/// `/readyz` reports the real state: ready with everything in place;
/// forwarding turned off while running makes it 503 naming the sysctl
/// (and ready again once on); the client program taken off its interface
/// by hand (its pinned link removed) makes it 503 naming the program and
/// the interface, and is logged once as `not ready:`.
#[test]
fn readiness_notices_a_program_taken_off() {
    let topo = Topology::new();
    let c = topo.client();
    assert_baseline(&topo);
    let nw = Neuwerk::start_with(&topo, &NeuwerkConfig::survivable(), &policy());
    let m = Mgmt::new(
        topo.firewall_ns(),
        NeuwerkConfig::default().management,
        None,
    );
    let (status, body) = readyz(&m);
    assert_eq!(status, 200, "/readyz after start: {body}");
    assert_flags(&body, true, true, "after start");
    assert_eq!(problems(&body), Vec::<String>::new(), "{body}");
    // Enforcing: direct DNS past the node never reaches the resolver,
    // which the node itself reaches.
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[GRANTED.ip()]);
    assert_http_ok(c, GRANTED);
    assert_tcp_blocked(c, NEVER);
    let before = direct_queries(&topo);
    query_upstream_directly(&topo);
    assert_eq!(
        direct_queries(&topo),
        before,
        "a client query straight to the resolver got past the node"
    );
    assert_resolves(
        topo.firewall(),
        UPSTREAM_DNS_V4,
        "example.org",
        &[DEST_V4.into()],
    );

    // Forwarding off while running.
    topo.firewall_ns().sysctl(&["net.ipv4.ip_forward=0"]);
    let body = wait_readyz(&m, 503, "ip_forward off");
    assert_flags(&body, true, false, "ip_forward off");
    let found = problems(&body);
    assert!(
        found.len() == 1 && found[0].contains("net.ipv4.ip_forward"),
        "ip_forward off: one problem naming net.ipv4.ip_forward: {found:?}"
    );
    topo.firewall_ns().sysctl(&["net.ipv4.ip_forward=1"]);
    let body = wait_readyz(&m, 200, "ip_forward on again");
    assert_flags(&body, true, true, "ip_forward on again");

    // The client program off: remove its pinned link, the only thing
    // holding it on the interface.
    let link = pin_dir(&nw).join(LINK_CLIENT);
    std::fs::remove_file(&link).unwrap_or_else(|e| panic!("remove {}: {e}", link.display()));
    let removed_at = Instant::now();
    let body = wait_readyz(&m, 503, "client link removed");
    assert_flags(&body, false, true, "client link removed");
    let found = problems(&body);
    assert!(
        found
            .iter()
            .any(|p| p.contains("nw_from_client") && p.contains(IF_INGRESS)),
        "client link removed: a problem naming nw_from_client and {IF_INGRESS}: {found:?}"
    );
    // It is really off: a client query straight to the resolver now
    // reaches it.
    let before = direct_queries(&topo);
    let reached = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
        query_upstream_directly(&topo);
        direct_queries(&topo) > before
    });
    assert!(
        reached,
        "with the client program off, a client query straight to the resolver still \
         does not reach it"
    );

    let not_ready = |logs: &str| -> Vec<String> {
        logs.lines()
            .map(strip_ansi)
            .filter(|l| l.contains(NOT_READY) && l.contains("nw_from_client"))
            .collect()
    };
    let logged = wait_until(
        2 * READINESS_PERIOD + Duration::from_secs(2),
        Duration::from_millis(200),
        || !not_ready(&nw.logs()).is_empty(),
    );
    assert!(
        logged,
        "no {NOT_READY:?} line naming nw_from_client {:?} after the link was removed\n{}",
        removed_at.elapsed(),
        nw.log_tail(30)
    );
    // Once: the next periodic check finds the same problem and says nothing.
    sleep(READINESS_PERIOD + Duration::from_secs(1));
    let lines = not_ready(&nw.logs());
    eprintln!("{}", lines.join("\n"));
    assert_eq!(
        lines.len(),
        1,
        "the loss of readiness should be logged once\n{}",
        nw.log_tail(30)
    );
    nw.stop();
}

/// The policy file changed while no daemon ran: the starting daemon
/// adopts the pinned grants and connections, then revokes the grant and
/// closes the connection of the name its policy no longer allows, and
/// keeps the rest.
#[test]
fn a_start_revokes_what_its_policy_no_longer_allows() {
    let topo = Topology::new();
    let c = topo.client();
    assert_baseline(&topo);
    let mut nw = Neuwerk::start_with(&topo, &NeuwerkConfig::survivable(), &policy());
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[GRANTED.ip()]);
    assert_resolves(c, NEUWERK_DNS_V4, "short.example.com", &[EXPIRED.ip()]);
    let mut dropped = c
        .http_connect(EXPIRED, ALLOWED)
        .unwrap_or_else(|e| panic!("connect to {EXPIRED} after resolving: {e:#}"));
    let mut kept = c
        .http_connect(GRANTED, ALLOWED)
        .unwrap_or_else(|e| panic!("connect to {GRANTED} after resolving: {e:#}"));
    assert_exchange(&mut dropped, "before the restart");
    assert_exchange(&mut kept, "before the restart");

    nw.terminate();
    let only_example =
        "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]\n    \
         policies:\n      - { hostname: example.com, ports: [443], protocol: tcp }\n";
    std::fs::write(nw.policy_path(), only_example).expect("rewrite the policy");
    nw.restart();
    assert!(nw.wait_for_log(ADOPTED, LOGGED), "{}", nw.log_tail(30));
    let line = adopted_line(&nw.logs()).expect("the adoption line");
    assert_eq!(log_field(&line, "grants"), Some(1), "{line}");
    assert_eq!(log_field(&line, "grants_revoked"), Some(1), "{line}");
    assert_eq!(log_field(&line, "connections_closed"), Some(1), "{line}");

    assert_exchange_fails(&mut dropped, "the name's rule is gone");
    assert_tcp_blocked(c, EXPIRED);
    assert_exchange(&mut kept, "example.com is still allowed");
    assert_http_ok(c, GRANTED);
    assert_tcp_blocked(c, NEVER);
}
