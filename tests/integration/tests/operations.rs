//! Operating neuwerk: metrics move with real traffic, the admin API shows
//! grants with their TTL, `neuwerk monitor` shows a drop as it happens,
//! audit mode lets denied traffic through while counting it, the token is
//! enforced, and reloads can be asked for over the API.

use std::net::SocketAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use neuwerk_integration::checks::*;
use neuwerk_integration::client::BLOCKED;
use neuwerk_integration::kernel_maps::grant_entries;
use neuwerk_integration::mgmt::{cli, CliStream, Mgmt};
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::{Neuwerk, NeuwerkConfig, Topology};
use serde_json::Value;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const MGMT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 3000);

fn mgmt(topo: &Topology) -> Mgmt<'_> {
    Mgmt::new(topo.firewall_ns(), MGMT, None)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A policy allowing example.com:443 to `clients`, in `mode`.
fn policy(mode: &str) -> String {
    format!(
        "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]\n    mode: {mode}\n    policies:\n      - hostname: example.com\n        ports: [443]\n"
    )
}

/// Packet and DNS counters move with real traffic, read from /metrics.
#[test]
fn metrics_move_as_traffic_is_allowed_and_dropped() {
    let topo = Topology::new();
    let c = topo.client();
    let _nw = Neuwerk::start(&topo, &policy("enforce"));
    let m = mgmt(&topo);
    let pkts = |verdict: &str| {
        m.metric(
            "neuwerk_packets",
            &[
                ("network", "clients"),
                ("protocol", "tcp"),
                ("verdict", verdict),
            ],
        )
        .unwrap()
    };
    let dns = |result: &str| {
        m.metric(
            "neuwerk_dns_queries",
            &[("network", "clients"), ("result", result)],
        )
        .unwrap()
    };
    let (dropped0, allowed0) = (pkts("dropped"), pkts("allowed"));
    let (dns_ok0, dns_denied0) = (dns("allowed"), dns("denied"));

    assert_tcp_blocked(c, sa(DEST2_V4, 443));
    assert!(
        pkts("dropped") > dropped0,
        "a dropped SYN must count as dropped tcp for clients"
    );

    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    assert_http_ok(c, sa(DEST_V4, 443));
    assert!(
        pkts("allowed") > allowed0,
        "allowed tcp for clients must move"
    );
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "denied.example.com",
        RecordType::A,
        ResponseCode::Refused,
    );
    assert_eq!(dns("allowed"), dns_ok0 + 1.0);
    assert_eq!(dns("denied"), dns_denied0 + 1.0);
    assert_eq!(
        m.metric("neuwerk_grants_learned", &[("network", "clients")])
            .unwrap(),
        1.0
    );
    assert_eq!(
        m.metric("neuwerk_grants_active", &[("network", "clients")])
            .unwrap(),
        1.0
    );
    assert!(m.metric("neuwerk_dns_duration_seconds_count", &[]).unwrap() >= 2.0);
    assert!(
        m.metric("neuwerk_map_entries", &[("map", "networks")])
            .unwrap()
            >= 2.0
    );
    assert_eq!(m.metric("neuwerk_policy_generation", &[]).unwrap(), 1.0);
}

/// /api/v1/grants shows a grant with its remaining TTL, and not after expiry.
#[test]
fn grants_endpoint_shows_ttl_then_forgets_expired_grant() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = Neuwerk::start(&topo, &fixture("policy-dns-only.yaml"));
    let m = mgmt(&topo);
    let list = || {
        let r = m.get("/api/v1/grants?hostname=short.example.com").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        json(&r.body)["grants"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(list().is_empty(), "nothing is granted before the query");
    assert_resolves(c, NEUWERK_DNS_V4, "short.example.com", &[DEST2_V4.into()]);
    let grants = list();
    assert_eq!(grants.len(), 1, "{grants:?}");
    let g = &grants[0];
    assert_eq!(g["address"], "192.0.2.101");
    assert_eq!(g["network"], "clients");
    assert_eq!(g["hostname"], "short.example.com");
    let ttl = g["ttl_remaining_s"].as_f64().unwrap();
    assert!(ttl > 0.0 && ttl <= 2.0, "TTL 2 s answer, remaining {ttl}");
    assert_eq!(grant_entries(nw.pid()), 1, "the grant is in the kernel map");
    sleep(Duration::from_millis(3500));
    assert!(list().is_empty(), "an expired grant is not listed");
    // The expiry sweep deleted it from the kernel map too (in a batch).
    assert_eq!(grant_entries(nw.pid()), 0, "expired grant left in the map");
}

/// `neuwerk monitor` prints a drop within a second of it happening, and
/// DNS decisions and grants as they are made.
#[test]
fn monitor_shows_drops_dns_and_grants_as_they_happen() {
    let topo = Topology::new();
    let c = topo.client();
    let _nw = Neuwerk::start(&topo, &policy("enforce"));
    let mon = CliStream::start(
        topo.firewall_ns(),
        &["monitor", "--api", "http://127.0.0.1:3000"],
    )
    .unwrap();
    // The stream is up once a DNS denial shows: then timing starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut synced = false;
    while !synced && Instant::now() < deadline {
        assert_rcode(
            c,
            NEUWERK_DNS_V4,
            "denied.example.com",
            RecordType::A,
            ResponseCode::Refused,
        );
        synced = mon
            .wait_line(
                &["DNS", "DENIED", "denied.example.com"],
                Duration::from_millis(500),
            )
            .is_some();
    }
    assert!(synced, "monitor never showed the denied query");

    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| assert_tcp_blocked(c, sa(DEST2_V4, 8443)));
        let line = mon.wait_line(&["DROPPED", "192.0.2.101:8443"], Duration::from_secs(1));
        assert!(line.is_some(), "no DROPPED line within 1 s");
        assert!(
            line.unwrap().contains("clients"),
            "the drop names the network"
        );
    });
    assert!(t0.elapsed() < BLOCKED + Duration::from_secs(1));

    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    assert!(mon
        .wait_line(
            &["GRANT", "ADDED", "example.com", "192.0.2.100"],
            Duration::from_secs(2)
        )
        .is_some());
}

/// Audit mode: denied traffic and queries pass and are counted as
/// audit-denied; switching the same policy to enforce blocks them.
#[test]
fn audit_mode_lets_denied_traffic_through_and_counts_it() {
    let topo = Topology::new();
    let c = topo.client();
    let mut nw = Neuwerk::start(&topo, &policy("audit"));
    let m = mgmt(&topo);
    let audited = || {
        m.metric(
            "neuwerk_packets",
            &[("network", "clients"), ("verdict", "audit_allowed")],
        )
        .unwrap()
    };
    let audit_denied = || {
        m.metric(
            "neuwerk_dns_queries",
            &[("network", "clients"), ("result", "audit_denied")],
        )
        .unwrap()
    };
    let (before, denied_before) = (audited(), audit_denied());
    assert_http_ok(c, sa(DEST2_V4, 443));
    assert!(audited() > before, "the audited connection is counted");
    assert_resolves(c, NEUWERK_DNS_V4, "denied.example.com", &[DEST2_V4.into()]);
    assert_eq!(audit_denied(), denied_before + 1.0);

    nw.replace_policy(&policy("enforce"), true);
    assert!(nw.wait_for_log("policy reloaded", Duration::from_secs(5)));
    assert_tcp_blocked(c, sa(DEST2_V4, 443));
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "denied.example.com",
        RecordType::A,
        ResponseCode::Refused,
    );
}

/// `policy.audit: true` in the config puts every network in audit mode.
#[test]
fn config_audit_applies_to_every_network() {
    let topo = Topology::new();
    let c = topo.client();
    let cfg = NeuwerkConfig {
        audit: true,
        ..Default::default()
    };
    let _nw = Neuwerk::start_with(&topo, &cfg, &policy("enforce"));
    assert_http_ok(c, sa(DEST2_V4, 443));
    let r = mgmt(&topo).get("/api/v1/status").unwrap();
    assert_eq!(
        json(&r.body)["policy"]["networks"][0]["mode"],
        "audit",
        "{}",
        r.body
    );
}

/// With a token configured, /api and /metrics need it; health does not;
/// `neuwerk status --config` finds the token in the config.
#[test]
fn token_is_enforced_when_set() {
    let topo = Topology::new();
    let cfg = NeuwerkConfig {
        token: Some("s3cret-token".into()),
        ..Default::default()
    };
    let nw = Neuwerk::start_with(&topo, &cfg, &policy("enforce"));
    let open = mgmt(&topo);
    let right = open.with_token(Some("s3cret-token"));
    let wrong = open.with_token(Some("guess"));
    for path in ["/api/v1/status", "/api/v1/grants", "/metrics"] {
        assert_eq!(open.get(path).unwrap().status, 401, "{path} without token");
        assert_eq!(
            wrong.get(path).unwrap().status,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            right.get(path).unwrap().status,
            200,
            "{path} with the token"
        );
    }
    assert_eq!(open.post("/api/v1/policy/reload").unwrap().status, 401);
    assert_eq!(open.get("/healthz").unwrap().status, 200);
    assert_eq!(open.get("/readyz").unwrap().status, 200);

    let cfg_path = nw.config_path().to_str().unwrap().to_string();
    let out = cli(topo.firewall_ns(), &["status", "--config", &cfg_path]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("network clients"), "{text}");
    let out = cli(
        topo.firewall_ns(),
        &["status", "--api", "http://127.0.0.1:3000"],
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
}

/// Readiness, the policy endpoint and reloads through the API, counted.
#[test]
fn reload_over_the_api_validates_and_counts() {
    let topo = Topology::new();
    let c = topo.client();
    let mut nw = Neuwerk::start(&topo, &policy("enforce"));
    let m = mgmt(&topo);
    assert_eq!(m.get("/readyz").unwrap().status, 200);
    let shown = json(&m.get("/api/v1/policy").unwrap().body);
    assert_eq!(shown["generation"], 1);
    assert_eq!(shown["text"], policy("enforce"));

    nw.replace_policy(
        "networks:\n  - name: clients\n    cidr: 10.100.1.0/33\n",
        false,
    );
    let r = m.post("/api/v1/policy/reload").unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains(":3:"),
        "the error names the line: {}",
        r.body
    );
    assert_eq!(
        m.metric("neuwerk_policy_reloads", &[("result", "failed")])
            .unwrap(),
        1.0
    );
    assert_http_blocked_then_allowed(c);

    let updated = policy("enforce").replace("example.com", "www.example.com");
    nw.replace_policy(&updated, false);
    let r = m.post("/api/v1/policy/reload").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r.body)["generation"], 2);
    assert_eq!(m.metric("neuwerk_policy_generation", &[]).unwrap(), 2.0);
    assert_eq!(
        m.metric("neuwerk_policy_reloads", &[("result", "ok")])
            .unwrap(),
        1.0
    );
    assert_resolves(c, NEUWERK_DNS_V4, "www.example.com", &[DEST2_V4.into()]);
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "example.com",
        RecordType::A,
        ResponseCode::Refused,
    );
}

/// The policy in force after a rejected reload is still the old one.
fn assert_http_blocked_then_allowed(c: neuwerk_integration::Host<'_>) {
    assert_tcp_blocked(c, sa(DEST_V4, 443));
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    assert_http_ok(c, sa(DEST_V4, 443));
}
