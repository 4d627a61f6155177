//! Policy changes at runtime (`policy-static.yaml` -> `policy-updated.yaml`):
//! additions apply, removals revoke grants and open connections at once,
//! an invalid file keeps the old policy and is reported with
//! file:line:column; plus `neuwerk policy check`.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::{Host, ALLOWED, BLOCKED};
use neuwerk_integration::neuwerk::{fixture, fixture_path, policy_check};
use neuwerk_integration::topology::*;
use neuwerk_integration::zone::NEW_V4;
use neuwerk_integration::{DnsOpts, Neuwerk, Topology};

/// Line of the bad address in `fixtures/policy-invalid.yaml`.
const INVALID_LINE: usize = 8;

/// Waits until `name` resolves through neuwerk (the new policy is live).
fn wait_until_allowed(c: Host<'_>, name: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let m = c.dns_query(NEUWERK_DNS_V4, name, RecordType::A, DnsOpts::udp());
        if matches!(&m, Ok(m) if m.metadata.response_code == ResponseCode::NoError) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{name} still not allowed after {limit:?}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_update_applied(topo: &Topology, nw: &mut Neuwerk<'_>, sighup: bool) {
    let c = topo.client();
    // Old policy: old.example.com and 192.0.2.100:443 allowed, new one not.
    assert_resolves(c, NEUWERK_DNS_V4, "old.example.com", &[DEST2_V4.into()]);
    let mut old_conn = c.http_connect(sa(DEST2_V4, 443), ALLOWED).unwrap();
    assert_eq!(old_conn.get(ALLOWED).unwrap(), "ok 443");
    let mut static_conn = c.http_connect(sa(DEST_V4, 443), ALLOWED).unwrap();
    assert_eq!(static_conn.get(ALLOWED).unwrap(), "ok 443");
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "new.example.com",
        RecordType::A,
        ResponseCode::Refused,
    );
    assert_tcp_blocked(c, sa(DEST_V4, 8443));
    assert_tcp_blocked(c, sa(NEW_V4, 443));

    nw.replace_policy(&fixture("policy-updated.yaml"), sighup);
    let took = wait_until_allowed(c, "new.example.com", Duration::from_secs(5));
    println!("policy update live after {took:?} (sighup: {sighup})");

    // Added: the new name's address and the changed static port.
    assert_http_ok(c, sa(NEW_V4, 443));
    assert_http_ok(c, sa(DEST_V4, 8443));
    // Removed: the name is refused, its grant and open connection are gone.
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "old.example.com",
        RecordType::A,
        ResponseCode::Refused,
    );
    assert_tcp_blocked(c, sa(DEST2_V4, 443));
    assert!(
        old_conn.get(BLOCKED).is_err(),
        "connection of a removed name still works"
    );
    // Changed static rule: 443 is no longer allowed, also not the open connection.
    assert_tcp_blocked(c, sa(DEST_V4, 443));
    assert!(
        static_conn.get(BLOCKED).is_err(),
        "connection of a removed rule still works"
    );
    // Unchanged rules keep working.
    assert_http_ok(c, sa(DEST_V6, 443));
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
}

#[test]
fn update_with_sighup_adds_and_revokes() {
    let topo = Topology::new();
    let mut nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    check_update_applied(&topo, &mut nw, true);
    nw.stop();
}

#[test]
fn update_picked_up_without_signal() {
    let topo = Topology::new();
    let mut nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    check_update_applied(&topo, &mut nw, false);
    nw.stop();
}

#[test]
fn invalid_policy_keeps_old_one() {
    let topo = Topology::new();
    let c = topo.client();
    let mut nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    assert_resolves(c, NEUWERK_DNS_V4, "old.example.com", &[DEST2_V4.into()]);
    let mut conn = c.http_connect(sa(DEST2_V4, 443), ALLOWED).unwrap();

    nw.replace_policy(&fixture("policy-invalid.yaml"), true);
    let path = nw.policy_path().display().to_string();
    let start = Instant::now();
    while !has_location(&nw.logs(), &path, Some(INVALID_LINE)) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "log does not report {path}:{INVALID_LINE}:<column>\n{}",
            nw.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(nw.is_running(), "neuwerk exited on an invalid policy");
    // Old policy still in force: grants, connections, static rules, names.
    assert_eq!(conn.get(ALLOWED).unwrap(), "ok 443");
    assert_http_ok(c, sa(DEST2_V4, 443));
    assert_http_ok(c, sa(DEST_V4, 443));
    assert_resolves(c, NEUWERK_DNS_V4, "old.example.com", &[DEST2_V4.into()]);
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "new.example.com",
        RecordType::A,
        ResponseCode::Refused,
    );

    // A valid file afterwards is applied.
    nw.replace_policy(&fixture("policy-updated.yaml"), true);
    wait_until_allowed(c, "new.example.com", Duration::from_secs(5));
    assert_http_ok(c, sa(NEW_V4, 443));
    nw.stop();
}

#[test]
fn policy_check_accepts_fixtures() {
    for name in [
        "policy-static.yaml",
        "policy-dns-only.yaml",
        "policy-updated.yaml",
    ] {
        let out = policy_check(&fixture_path(name));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // A summary line, then what DNS answers never grant (per network).
        let lines: Vec<&str> = stdout.trim().lines().collect();
        assert!(lines[0].contains(": ok: "), "{name}: {stdout:?}");
        assert!(
            lines[1].starts_with("never learned from DNS answers"),
            "{name}: {stdout:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("  network clients: ")),
            "{name}: {stdout:?}"
        );
    }
}

#[test]
fn policy_check_rejects_broken_files_with_location() {
    let cases = [
        ("policy-invalid.yaml", Some(INVALID_LINE)),
        ("policy-malformed.yaml", None),
    ];
    for (name, line) in cases {
        let path = fixture_path(name);
        let out = policy_check(&path);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{name} accepted: {text}");
        assert!(
            has_location(&text, &path.display().to_string(), line),
            "{name}: no {}:{}:<column> in {text:?}",
            path.display(),
            line.map_or("<line>".to_owned(), |l| l.to_string())
        );
    }
}
