//! A policy reload judges each tracked connection by what opened it: a
//! static rule, or the DNS grant of a name (the kernel entry records which
//! name), or audit mode. It closes a connection only when the new policy
//! no longer allows that: the static rule is gone, or the rule of the
//! name no longer matches that name, network and port. A grant that
//! expired long ago is no reason to close anything, and a reload that
//! changes nothing (SIGHUP, a rewritten file, the API) closes nothing. The
//! log line of each reload counts what it closed (`connections_closed=N`).
//!
//! Destinations (served by the HTTP mock, so a block can only be the
//! firewall's; each test checks that before neuwerk runs):
//! - [`BY_NAME`]: short.example.com (TTL 2 s), port 8443; its connection
//!   is opened under the grant, which then runs out, so only connection
//!   tracking carries it;
//! - [`BY_RULE`]: 192.0.2.100:80, allowed by a static `ip:` rule that
//!   every policy here keeps.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::ALLOWED;
use neuwerk_integration::failsafe::*;
use neuwerk_integration::mgmt::Mgmt;
use neuwerk_integration::topology::*;
use neuwerk_integration::{HttpConn, Neuwerk, NeuwerkConfig, Topology};

/// short.example.com's address and the port its rule allows.
const BY_NAME: SocketAddr = SocketAddr::new(IpAddr::V4(DEST2_V4), 8443);
/// The name whose grant opens the connection to [`BY_NAME`].
const NAME: &str = "short.example.com";
/// An address and port a static rule allows.
const BY_RULE: SocketAddr = SocketAddr::new(IpAddr::V4(DEST_V4), 80);
/// How long a reload may take to show up in the log: a file change is
/// promised within 2 s; this only bounds a wait, it is not a measurement.
const RELOADED_WITHIN: Duration = Duration::from_secs(10);

/// The static rule every policy of this file keeps (so the network and
/// [`BY_RULE`] stay).
const STATIC_RULE: &str = "- { ip: 192.0.2.100, ports: [80], protocol: tcp }";

/// A policy for the client networks with `rules` (one YAML list item per
/// line, leading whitespace ignored) and [`STATIC_RULE`].
fn policy(rules: &str) -> String {
    let mut p = String::from(
        "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]\n    policies:\n",
    );
    for line in rules.lines().chain([STATIC_RULE]) {
        if !line.trim().is_empty() {
            p.push_str("      ");
            p.push_str(line.trim_start());
            p.push('\n');
        }
    }
    p
}

/// The policy the tests start with: [`NAME`] by an exact rule on the port
/// of [`BY_NAME`].
fn initial_policy() -> String {
    policy("- { hostname: short.example.com, ports: [8443], protocol: tcp }")
}

/// The management API in the firewall namespace (default listener).
fn mgmt(topo: &Topology) -> Mgmt<'_> {
    Mgmt::new(
        topo.firewall_ns(),
        NeuwerkConfig::default().management,
        None,
    )
}

/// Without neuwerk the firewall namespace is a plain router: both
/// destinations answer, so a block later on is neuwerk's.
fn assert_baseline(topo: &Topology) {
    assert_http_ok(topo.client(), BY_NAME);
    assert_http_ok(topo.client(), BY_RULE);
}

/// Starts neuwerk on [`initial_policy`] and opens the two connections: one
/// under the grant of [`NAME`], which has run out when this returns, and
/// one allowed by the static rule.
fn start_with_connections(topo: &Topology) -> (Neuwerk<'_>, HttpConn, HttpConn) {
    assert_baseline(topo);
    let nw = Neuwerk::start(topo, &initial_policy());
    let by_name = open_under_expiring_grant(topo, &nw, NAME, BY_NAME);
    let mut by_rule = topo
        .client()
        .http_connect(BY_RULE, ALLOWED)
        .unwrap_or_else(|e| panic!("connect to {BY_RULE} (static rule): {e:#}"));
    assert_exchange(
        &mut by_rule,
        "first exchange on the static rule's connection",
    );
    (nw, by_name, by_rule)
}

/// Waits for the reload of `generation` and asserts what it says it
/// closed; returns the line.
#[track_caller]
fn assert_reload_closed(nw: &Neuwerk<'_>, generation: u64, closed: u64, what: &str) -> String {
    let line = wait_reload(nw, generation, RELOADED_WITHIN);
    eprintln!("{what}: {line}");
    assert_eq!(
        connections_closed(&line),
        closed,
        "{what}: connections closed by reload {generation}: {line}"
    );
    line
}

/// Replaces the policy file (no signal: the file watcher alone reloads it,
/// so exactly one reload follows) and waits for that reload, which must
/// close `closed` connections.
#[track_caller]
fn replace_and_reload(nw: &mut Neuwerk<'_>, text: &str, generation: u64, closed: u64, what: &str) {
    nw.replace_policy(text, false);
    let line = assert_reload_closed(nw, generation, closed, what);
    assert!(
        line.contains("file changed"),
        "{what}: reload {generation} should come from the file watcher: {line}"
    );
}

/// A reload that changes nothing keeps a connection whose grant expired
/// long ago, whichever way it is asked for: SIGHUP with the file as it
/// was, the same text written again (the file watcher), the API.
#[test]
fn unchanged_reload_keeps_a_connection_whose_grant_expired() {
    let topo = Topology::new();
    let c = topo.client();
    let (mut nw, mut by_name, mut by_rule) = start_with_connections(&topo);

    // 1. SIGHUP, the file untouched.
    nw.reload();
    let line = assert_reload_closed(&nw, 2, 0, "SIGHUP, policy unchanged");
    assert!(line.contains("SIGHUP"), "reload 2 is the SIGHUP's: {line}");
    assert_exchange(&mut by_name, "after a SIGHUP reload of the same policy");

    // 2. The same text written again (new inode and mtime): the watcher.
    replace_and_reload(
        &mut nw,
        &initial_policy(),
        3,
        0,
        "the same policy rewritten",
    );
    assert_exchange(
        &mut by_name,
        "after the file watcher reloaded the same policy",
    );

    // 3. The management API.
    let r = mgmt(&topo)
        .post("/api/v1/policy/reload")
        .unwrap_or_else(|e| panic!("POST /api/v1/policy/reload: {e:#}"));
    assert_eq!(r.status, 200, "API reload: {}", r.body);
    let report: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("API reload answer is not JSON ({e}): {}", r.body));
    assert_eq!(report["generation"], 4, "API reload answer: {}", r.body);
    assert_eq!(
        report["connections_closed"], 0,
        "API reload answer: {}",
        r.body
    );
    let line = assert_reload_closed(&nw, 4, 0, "API reload, policy unchanged");
    assert!(line.contains("admin API"), "reload 4 is the API's: {line}");
    assert_exchange(&mut by_name, "after an API reload of the same policy");

    // Still a firewall: the grant is gone for new connections, and the
    // static rule's connection went on too.
    assert_tcp_blocked(c, BY_NAME);
    assert_exchange(&mut by_rule, "static rule's connection after three reloads");
    assert_eq!(
        nw.logs().matches(RELOADED).count(),
        3,
        "three reloads asked for, three logged\n{}",
        nw.log_tail(20)
    );
    nw.stop();
}

/// A new policy without the name's rule closes the connection that name's
/// grant opened (one connection, logged), and keeps the one its static
/// rule still allows.
#[test]
fn reload_removing_the_rule_closes_the_connection() {
    let topo = Topology::new();
    let c = topo.client();
    let (mut nw, mut by_name, mut by_rule) = start_with_connections(&topo);

    replace_and_reload(
        &mut nw,
        &policy(""),
        2,
        1,
        "policy without short.example.com",
    );
    assert_exchange_fails(&mut by_name, "after the rule of short.example.com went");
    assert_exchange(
        &mut by_rule,
        "static rule's connection after a reload that kept the rule",
    );
    assert_http_ok(c, BY_RULE);
    // The name itself is no longer allowed, so nothing can grant it again.
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        NAME,
        RecordType::A,
        ResponseCode::Refused,
    );
    assert_tcp_blocked(c, BY_NAME);
    nw.stop();
}

/// What opened the connection was the name, not the exact rule: a
/// wildcard that still matches the name on the same port keeps it (one
/// label, `*.`, then any depth, `**.`); the same name on another port
/// closes it.
#[test]
fn a_wildcard_that_still_matches_keeps_the_connection() {
    let topo = Topology::new();
    let c = topo.client();
    let (mut nw, mut by_name, mut by_rule) = start_with_connections(&topo);

    replace_and_reload(
        &mut nw,
        &policy("- { hostname: \"*.example.com\", ports: [8443], protocol: tcp }"),
        2,
        0,
        "exact rule replaced by *.example.com",
    );
    assert_exchange(&mut by_name, "after the exact rule became *.example.com");
    replace_and_reload(
        &mut nw,
        &policy("- { hostname: \"**.example.com\", ports: [8443], protocol: tcp }"),
        3,
        0,
        "*.example.com replaced by **.example.com",
    );
    assert_exchange(&mut by_name, "after *.example.com became **.example.com");

    replace_and_reload(
        &mut nw,
        &policy("- { hostname: short.example.com, ports: [443], protocol: tcp }"),
        4,
        1,
        "short.example.com on port 443 instead of 8443",
    );
    assert_exchange_fails(&mut by_name, "after the name's rule moved to port 443");
    assert_exchange(
        &mut by_rule,
        "static rule's connection after the name's rule moved",
    );
    // The name is still allowed, on its new port only.
    assert_resolves(c, NEUWERK_DNS_V4, NAME, &[DEST2_V4.into()]);
    assert_http_ok(c, sa(DEST2_V4, 443));
    assert_tcp_blocked(c, BY_NAME);
    nw.stop();
}
