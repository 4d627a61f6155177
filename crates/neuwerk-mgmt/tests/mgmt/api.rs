//! The JSON endpoints, readiness and the bearer token.

use std::time::Duration;

use neuwerk_core::events::{DnsObserver, DnsQueryView, DnsResult};
use neuwerk_mgmt::{EventBus, Readiness};
use serde_json::json;

use crate::harness::{grant, ip, kernel, Harness};

#[test]
fn healthz_is_ok() {
    let h = Harness::start();
    assert_eq!(h.get("/healthz"), (200, "ok".to_string()));
}

#[test]
fn readyz_is_503_until_every_flag_is_set() {
    let h = Harness::start();
    *h.fake.ready.lock().unwrap() = Readiness {
        dataplane_attached: true,
        policy_loaded: true,
        dns_listening: false,
        forwarding: true,
        problems: vec!["the DNS listeners are not serving yet".into()],
    };
    let (code, body) = h.get("/readyz");
    assert_eq!(code, 503);
    let flags: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        flags,
        json!({"dataplane_attached": true, "policy_loaded": true, "dns_listening": false,
               "forwarding": true, "problems": ["the DNS listeners are not serving yet"]})
    );
    {
        let mut r = h.fake.ready.lock().unwrap();
        r.dns_listening = true;
        r.problems.clear();
    }
    let (code, body) = h.get("/readyz");
    assert_eq!(code, 200, "{body}");
    h.fake.ready.lock().unwrap().forwarding = false;
    assert_eq!(h.get("/readyz").0, 503, "forwarding off is not ready");
}

#[test]
fn status_has_node_policy_counters_and_readiness() {
    let h = Harness::start();
    *h.fake.kernel.lock().unwrap() = kernel(1);
    *h.fake.grants.lock().unwrap() = vec![
        grant("clients", "api.github.com", "192.0.2.101", 30_000),
        grant("clients", "api.github.com", "192.0.2.102", 30_000),
        grant("lab", "example.com", "192.0.2.50", -1000),
    ];
    h.metrics.query(&DnsQueryView {
        client: ip("10.100.1.100"),
        network: Some("clients"),
        name: "evil.example.net",
        qtype: "A",
        result: DnsResult::Denied,
        addrs: &[],
        total: Duration::from_micros(80),
        upstream: None,
        grant_commit: None,
    });
    let s = h.json("/api/v1/status");
    assert_eq!(s["version"], "9.9.9");
    assert_eq!(s["uptime_s"], 3723);
    assert_eq!(
        s["interfaces"],
        json!({"ingress": "nwi0", "egress": "nwe0"})
    );
    let p = &s["policy"];
    assert_eq!(p["generation"], 7);
    assert_eq!(p["file"], "/etc/neuwerk/policy.yaml");
    assert_eq!(p["summary"], "2 networks, 4 rules (3 hostname, 1 static)");
    assert_eq!(
        p["networks"][0],
        json!({"name": "clients", "cidrs": ["10.100.1.0/24", "fd00:100:1::/64"], "mode": "enforce",
               "rules": 3, "hostname_rules": 2, "static_rules": 1})
    );
    assert_eq!(p["networks"][1]["mode"], "audit");
    let c = &s["counters"];
    assert!(c["packets"].as_array().unwrap().contains(
        &json!({"network": "clients", "protocol": "tcp", "verdict": "dropped", "count": 5})
    ));
    assert!(c["packets"]
        .as_array()
        .unwrap()
        .contains(&json!({"network": null, "protocol": "icmp", "verdict": "dropped", "count": 7})));
    assert_eq!(
        c["dns"],
        json!([{"network": "clients", "result": "denied", "count": 1}])
    );
    // The expired grant does not count.
    assert_eq!(
        c["grants_active"],
        json!([{"network": "clients", "count": 2}])
    );
    assert_eq!(c["conntrack_entries"], 34);
    assert_eq!(c["events_lost"], 2);
    assert_eq!(
        s["ready"],
        json!({"dataplane_attached": true, "policy_loaded": true, "dns_listening": true,
               "forwarding": true, "problems": []})
    );
}

#[test]
fn grants_are_filtered_with_ttl_and_expired_ones_hidden() {
    let h = Harness::start();
    *h.fake.grants.lock().unwrap() = vec![
        grant("clients", "api.github.com", "192.0.2.101", 30_000),
        grant("clients", "www.example.org", "192.0.2.7", 5_500),
        grant("lab", "example.com", "192.0.2.101", 60_000),
        grant("lab", "old.example.com", "192.0.2.9", -1),
    ];
    let all = h.json("/api/v1/grants");
    let list = all["grants"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{all}");
    let first = &list[0];
    assert_eq!(first["network"], "clients");
    assert_eq!(first["hostname"], "api.github.com");
    assert_eq!(first["address"], "192.0.2.101");
    assert_eq!(first["ports"], json!(["tcp/443"]));
    let ttl = first["ttl_remaining_s"].as_u64().unwrap();
    assert!((29..=30).contains(&ttl), "ttl {ttl}");
    assert_eq!(list[1]["ttl_remaining_s"], 6, "5.5 s left rounds up");

    let names = |path: &str| -> Vec<String> {
        h.json(path)["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                format!(
                    "{}/{}",
                    g["network"].as_str().unwrap(),
                    g["hostname"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(names("/api/v1/grants?network=lab"), ["lab/example.com"]);
    assert_eq!(
        names("/api/v1/grants?hostname=API.GitHub.com."),
        ["clients/api.github.com"]
    );
    assert_eq!(
        names("/api/v1/grants?address=192.0.2.101"),
        ["clients/api.github.com", "lab/example.com"]
    );
    assert_eq!(
        names("/api/v1/grants?network=clients&address=192.0.2.101&hostname="),
        ["clients/api.github.com"]
    );
    let (code, body) = h.get("/api/v1/grants?address=nope");
    assert_eq!(code, 400);
    assert!(body.contains("not an IP address"), "{body}");
}

#[test]
fn policy_text_is_served() {
    let h = Harness::start();
    let p = h.json("/api/v1/policy");
    assert_eq!(p["file"], "/etc/neuwerk/policy.yaml");
    assert_eq!(p["generation"], 7);
    assert_eq!(p["text"], crate::harness::POLICY);
}

#[test]
fn reload_reports_or_explains() {
    let h = Harness::start();
    let (code, body) = h.call("POST", "/api/v1/policy/reload", None);
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        r,
        json!({"generation": 8, "summary": "2 networks", "grants_revoked": 3, "connections_closed": 1})
    );
    *h.fake.reload.lock().unwrap() = Err("policy.yaml:3:5: unknown key `nme`".into());
    let (code, body) = h.call("POST", "/api/v1/policy/reload", None);
    assert_eq!(code, 422);
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["error"], "policy.yaml:3:5: unknown key `nme`");
    assert_eq!(h.get("/api/v1/policy/reload").0, 405, "GET does not reload");
    assert_eq!(h.fake.reloads.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn unknown_paths_are_404() {
    let h = Harness::start();
    let (code, body) = h.get("/api/v2/nothing");
    assert_eq!(code, 404);
    assert!(body.contains("no such endpoint"));
}

#[test]
fn token_guards_api_and_metrics_but_not_health() {
    let h = Harness::with(Some("s3cret"), Duration::from_secs(10), EventBus::default());
    for path in [
        "/metrics",
        "/api/v1/status",
        "/api/v1/grants",
        "/api/v1/policy",
        "/api/v1/events",
    ] {
        let (code, body) = h.call("GET", path, None);
        assert_eq!(code, 401, "{path} without a token");
        assert!(body.contains("token required or wrong"), "{body}");
        assert_eq!(
            h.call("GET", path, Some("s3cre")).0,
            401,
            "{path} wrong token"
        );
        assert_eq!(
            h.call("GET", path, Some("s3cret!")).0,
            401,
            "{path} longer token"
        );
    }
    assert_eq!(h.call("POST", "/api/v1/policy/reload", Some("nope")).0, 401);
    assert_eq!(h.fake.reloads.load(std::sync::atomic::Ordering::SeqCst), 0);
    for path in [
        "/metrics",
        "/api/v1/status",
        "/api/v1/grants",
        "/api/v1/policy",
    ] {
        assert_eq!(
            h.call("GET", path, Some("s3cret")).0,
            200,
            "{path} right token"
        );
    }
    assert_eq!(
        h.call("POST", "/api/v1/policy/reload", Some("s3cret")).0,
        200
    );
    assert_eq!(h.get("/healthz").0, 200);
    assert_eq!(h.get("/readyz").0, 200);
    // The WWW-Authenticate challenge.
    let resp =
        h.rt.block_on(crate::harness::send(h.addr, "GET", "/metrics", None));
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
}
