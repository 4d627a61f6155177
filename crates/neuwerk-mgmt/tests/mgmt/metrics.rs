//! `/metrics`: every family is there, in OpenMetrics text, and moves.

use std::time::Duration;

use neuwerk_core::events::{DnsObserver, DnsQueryView, DnsResult, FilteredView};
use neuwerk_core::special::SpecialClass;

use crate::harness::{grant, ip, kernel, Harness};

/// The value of the sample `series` (`name{labels}` exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn scrape(h: &Harness) -> String {
    let (code, text) = h.get("/metrics");
    assert_eq!(code, 200);
    text
}

fn query(result: DnsResult, network: Option<&str>, upstream: Option<Duration>) -> DnsQueryView<'_> {
    DnsQueryView {
        client: ip("10.100.1.100"),
        network,
        name: "api.github.com",
        qtype: "A",
        result,
        addrs: &[],
        total: Duration::from_micros(300),
        upstream,
        grant_commit: None,
    }
}

#[test]
fn families_are_exported_in_openmetrics_text() {
    let h = Harness::start();
    h.metrics.declare_network("clients");
    let resp =
        h.rt.block_on(crate::harness::send(h.addr, "GET", "/metrics", None));
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = scrape(&h);
    for (family, kind) in [
        ("neuwerk_packets", "counter"),
        ("neuwerk_packet_reasons", "counter"),
        ("neuwerk_dns_queries", "counter"),
        ("neuwerk_dns_duration_seconds", "histogram"),
        ("neuwerk_dns_upstream_duration_seconds", "histogram"),
        ("neuwerk_grant_commit_seconds", "histogram"),
        ("neuwerk_grants_active", "gauge"),
        ("neuwerk_grants_learned", "counter"),
        ("neuwerk_map_entries", "gauge"),
        ("neuwerk_map_capacity", "gauge"),
        ("neuwerk_conntrack_entries", "gauge"),
        ("neuwerk_events_lost", "counter"),
        ("neuwerk_policy_reloads", "counter"),
        ("neuwerk_policy_generation", "gauge"),
        ("neuwerk_build", "info"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} {kind} missing:\n{text}"
        );
    }
    assert_eq!(
        sample(&text, r#"neuwerk_build_info{version="9.9.9"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_policy_reloads_total{result="ok"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_policy_reloads_total{result="failed"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"neuwerk_dns_queries_total{network="clients",result="denied"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_grants_learned_total{network="clients"}"#),
        Some(0.0)
    );
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn special_use_addresses_count_by_network_and_class() {
    let h = Harness::start();
    h.metrics.declare_network("clients");
    let view = |network, class| FilteredView {
        client: ip("10.100.1.100"),
        network,
        name: "meta.example.com",
        addr: ip("169.254.169.254"),
        class,
        audit: false,
    };
    // No series (nor, so, the family) until a class is first seen.
    assert!(!scrape(&h).contains("neuwerk_dns_records_filtered"));
    for _ in 0..3 {
        h.metrics
            .filtered(&view("clients", SpecialClass::LinkLocal));
    }
    h.metrics.filtered(&view("clients", SpecialClass::Node));
    h.metrics.filtered(&view("lab", SpecialClass::LinkLocal));
    let text = scrape(&h);
    assert!(text.contains("# TYPE neuwerk_dns_records_filtered counter\n"));
    let f = |labels: &str| {
        sample(
            &text,
            &format!("neuwerk_dns_records_filtered_total{{{labels}}}"),
        )
    };
    assert_eq!(f(r#"network="clients",class="link_local""#), Some(3.0));
    assert_eq!(f(r#"network="clients",class="node""#), Some(1.0));
    assert_eq!(f(r#"network="lab",class="link_local""#), Some(1.0));
    assert_eq!(f(r#"network="lab",class="node""#), None);
}

#[test]
fn dns_queries_count_and_time() {
    let h = Harness::start();
    h.metrics.query(&query(
        DnsResult::Allowed,
        Some("clients"),
        Some(Duration::from_millis(3)),
    ));
    h.metrics.query(&query(
        DnsResult::Allowed,
        Some("clients"),
        Some(Duration::from_millis(3)),
    ));
    h.metrics
        .query(&query(DnsResult::Denied, Some("clients"), None));
    h.metrics.query(&query(DnsResult::Malformed, None, None));
    let text = scrape(&h);
    let q = |labels: &str| sample(&text, &format!("neuwerk_dns_queries_total{{{labels}}}"));
    assert_eq!(q(r#"network="clients",result="allowed""#), Some(2.0));
    assert_eq!(q(r#"network="clients",result="denied""#), Some(1.0));
    assert_eq!(q(r#"network="clients",result="servfail""#), Some(0.0));
    assert_eq!(q(r#"network="",result="malformed""#), Some(1.0));
    assert_eq!(
        sample(&text, "neuwerk_dns_duration_seconds_count"),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "neuwerk_dns_upstream_duration_seconds_count"),
        Some(2.0)
    );
    // 300 µs lands in the 0.0005 bucket, not the 0.00025 one.
    assert_eq!(
        sample(
            &text,
            r#"neuwerk_dns_duration_seconds_bucket{le="0.00025"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_dns_duration_seconds_bucket{le="0.0005"}"#),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"neuwerk_dns_duration_seconds_bucket{le="0.00005"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"neuwerk_dns_upstream_duration_seconds_bucket{le="0.005"}"#
        ),
        Some(2.0)
    );
    // No per-client or per-name labels.
    assert!(
        !text.contains("10.100.1.100") && !text.contains("github"),
        "{text}"
    );

    h.metrics
        .query(&query(DnsResult::Allowed, Some("clients"), None));
    let text = scrape(&h);
    assert_eq!(
        sample(
            &text,
            r#"neuwerk_dns_queries_total{network="clients",result="allowed"}"#
        ),
        Some(3.0)
    );
}

#[test]
fn grant_commit_time_is_observed_only_when_grants_were_learned() {
    let h = Harness::start();
    let mut learned = query(DnsResult::Allowed, Some("clients"), None);
    learned.grant_commit = Some(Duration::from_micros(12));
    h.metrics.query(&learned);
    h.metrics
        .query(&query(DnsResult::Allowed, Some("clients"), None));
    let text = scrape(&h);
    assert_eq!(
        sample(&text, "neuwerk_grant_commit_seconds_count"),
        Some(1.0)
    );
    // 12 µs lands in the 15 µs bucket, not the 10 µs one.
    assert_eq!(
        sample(&text, r#"neuwerk_grant_commit_seconds_bucket{le="1e-5"}"#).or_else(|| sample(
            &text,
            r#"neuwerk_grant_commit_seconds_bucket{le="0.00001"}"#
        )),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_grant_commit_seconds_bucket{le="1.5e-5"}"#).or_else(|| sample(
            &text,
            r#"neuwerk_grant_commit_seconds_bucket{le="0.000015"}"#
        )),
        Some(1.0)
    );
}

#[test]
fn grants_and_reloads_move() {
    let h = Harness::start();
    *h.fake.grants.lock().unwrap() = vec![
        grant("clients", "a.example.org", "192.0.2.1", 10_000),
        grant("clients", "b.example.org", "192.0.2.2", 10_000),
        grant("lab", "example.com", "192.0.2.3", -5),
    ];
    h.metrics.grant_learned("clients", 2);
    h.metrics.grant_learned("clients", 1);
    h.metrics.reload(true, 8);
    h.metrics.reload(false, 8);
    h.metrics.reload(false, 8);
    let text = scrape(&h);
    assert_eq!(
        sample(&text, r#"neuwerk_grants_active{network="clients"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_grants_active{network="lab"}"#),
        None,
        "expired"
    );
    assert_eq!(
        sample(&text, r#"neuwerk_grants_learned_total{network="clients"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_policy_reloads_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_policy_reloads_total{result="failed"}"#),
        Some(2.0)
    );
    assert_eq!(sample(&text, "neuwerk_policy_generation"), Some(8.0));
}

#[test]
fn kernel_counters_are_read_at_scrape() {
    let h = Harness::start();
    *h.fake.kernel.lock().unwrap() = kernel(1);
    let text = scrape(&h);
    let p = |labels: &str| sample(&text, &format!("neuwerk_packets_total{{{labels}}}"));
    assert_eq!(
        p(r#"network="clients",protocol="tcp",verdict="allowed""#),
        Some(100.0)
    );
    assert_eq!(
        p(r#"network="clients",protocol="tcp",verdict="dropped""#),
        Some(5.0),
        "summed"
    );
    assert_eq!(
        p(r#"network="",protocol="icmp",verdict="dropped""#),
        Some(7.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"neuwerk_packet_reasons_total{reason="drop_policy"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_map_entries{map="grants"}"#),
        Some(12.0)
    );
    assert_eq!(
        sample(&text, r#"neuwerk_map_capacity{map="grants"}"#),
        Some(1048576.0)
    );
    assert_eq!(sample(&text, "neuwerk_conntrack_entries"), Some(34.0));
    assert_eq!(sample(&text, "neuwerk_events_lost_total"), Some(2.0));

    *h.fake.kernel.lock().unwrap() = kernel(3);
    let text = scrape(&h);
    assert_eq!(
        sample(
            &text,
            r#"neuwerk_packets_total{network="clients",protocol="tcp",verdict="allowed"}"#
        ),
        Some(300.0)
    );
    assert_eq!(sample(&text, "neuwerk_conntrack_entries"), Some(102.0));
    assert_eq!(sample(&text, "neuwerk_events_lost_total"), Some(6.0));
}
