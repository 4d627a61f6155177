//! `/api/v1/events`: NDJSON, filtered server-side, keepalive, lag, shutdown.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use neuwerk_core::events::{DnsEvent, DnsResult, Event, FilteredEvent, PacketEvent, PacketVerdict};
use neuwerk_core::grants::GrantEvent;
use neuwerk_core::special::SpecialClass;
use neuwerk_core::time::monotonic_ns;
use neuwerk_mgmt::EventBus;
use serde_json::{json, Value};

use crate::harness::{grant, ip, send, Harness};

pub fn packet(network: Option<&str>, src: &str, dst: &str, verdict: PacketVerdict) -> Event {
    Event::Packet(PacketEvent {
        time_ns: monotonic_ns(),
        network: network.map(Arc::from),
        src: ip(src),
        dst: ip(dst),
        sport: 41000,
        dport: 443,
        proto: 6,
        verdict,
        reason: "drop_policy",
    })
}

pub fn dns(network: &str, name: &str, result: DnsResult, addrs: &[&str]) -> Event {
    Event::Dns(DnsEvent {
        client: ip("10.100.1.100"),
        network: Some(Arc::from(network)),
        name: name.into(),
        qtype: "A".into(),
        result,
        addrs: addrs.iter().map(|a| ip(a)).collect(),
    })
}

pub fn filtered(network: &str, addr: &str, class: SpecialClass, audit: bool) -> Event {
    Event::Filtered(FilteredEvent {
        client: ip("10.100.1.100"),
        network: Arc::from(network),
        name: "meta.example.com".into(),
        addr: ip(addr),
        class,
        audit,
    })
}

/// Reads NDJSON lines (keepalives included, as "") from a streaming body.
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    async fn open(h: &Harness, query: &str) -> Lines {
        let resp = send(h.addr, "GET", &format!("/api/v1/events{query}"), None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        Lines {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next line within `limit`; `None` at the end of the stream.
    async fn next(&mut self, limit: Duration) -> Option<String> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return Some(String::from_utf8(line[..nl].to_vec()).unwrap());
            }
            let frame = tokio::time::timeout(limit, self.body.frame())
                .await
                .expect("a line within the limit")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    async fn json(&mut self) -> Value {
        let line = self
            .next(Duration::from_secs(1))
            .await
            .expect("stream open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }
}

#[test]
fn a_published_event_arrives_within_a_second() {
    let h = Harness::start();
    h.rt.block_on(async {
        let mut lines = Lines::open(&h, "").await;
        h.bus.publish(packet(
            Some("clients"),
            "10.100.1.100",
            "192.0.2.102",
            PacketVerdict::Dropped,
        ));
        let v = lines.json().await;
        assert_eq!(v["kind"], "packet");
        assert_eq!(v["verdict"], "dropped");
        assert_eq!(v["network"], "clients");
        assert_eq!(v["proto"], "tcp");
        assert_eq!(
            (v["src"].clone(), v["sport"].clone()),
            (json!("10.100.1.100"), json!(41000))
        );
        assert_eq!(
            (v["dst"].clone(), v["dport"].clone()),
            (json!("192.0.2.102"), json!(443))
        );
        assert_eq!(v["reason"], "drop_policy");
        let time = v["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{time}");

        h.bus.publish(dns(
            "clients",
            "api.github.com",
            DnsResult::Allowed,
            &["192.0.2.101"],
        ));
        let v = lines.json().await;
        assert_eq!(
            (
                v["kind"].clone(),
                v["result"].clone(),
                v["client"].clone(),
                v["name"].clone(),
                v["qtype"].clone()
            ),
            (
                json!("dns"),
                json!("allowed"),
                json!("10.100.1.100"),
                json!("api.github.com"),
                json!("A")
            )
        );
        assert_eq!(v["addrs"], json!(["192.0.2.101"]));

        h.bus.publish(Event::Grant(GrantEvent::Learned(grant(
            "clients",
            "api.github.com",
            "192.0.2.101",
            30_000,
        ))));
        let v = lines.json().await;
        assert_eq!(v["kind"], "grant");
        assert_eq!(v["action"], "added");
        assert_eq!(v["address"], "192.0.2.101");
        assert_eq!(v["hostname"], "api.github.com");
        assert_eq!(v["ports"], json!(["tcp/443"]));
        assert!((29..=30).contains(&v["ttl_s"].as_u64().unwrap()));

        h.bus.publish(filtered(
            "clients",
            "169.254.169.254",
            SpecialClass::LinkLocal,
            false,
        ));
        let v = lines.json().await;
        assert_eq!(v["kind"], "filtered");
        assert_eq!(v["result"], "filtered");
        assert_eq!(v["network"], "clients");
        assert_eq!(v["client"], "10.100.1.100");
        assert_eq!(v["name"], "meta.example.com");
        assert_eq!(v["address"], "169.254.169.254");
        assert_eq!(v["class"], "link_local");

        h.bus.publish(Event::Lost { count: 17 });
        let v = lines.json().await;
        assert_eq!(
            (v["kind"].clone(), v["count"].clone()),
            (json!("lost"), json!(17))
        );
    });
}

#[test]
fn filters_are_applied_by_the_server() {
    let h = Harness::start();
    h.rt.block_on(async {
        let mut by_net = Lines::open(&h, "?network=lab").await;
        let mut by_verdict = Lines::open(&h, "?verdict=denied").await;
        let mut by_addr = Lines::open(&h, "?address=192.0.2.7&json").await;
        let mut by_kind = Lines::open(&h, "?kind=grant").await;
        let mut filtered_only = Lines::open(&h, "?kind=filtered&network=lab").await;
        let events = [
            packet(
                Some("clients"),
                "10.100.1.100",
                "192.0.2.7",
                PacketVerdict::Dropped,
            ),
            packet(
                Some("lab"),
                "10.100.2.5",
                "192.0.2.8",
                PacketVerdict::AuditAllowed,
            ),
            dns("clients", "evil.example.net", DnsResult::Denied, &[]),
            dns("lab", "example.com", DnsResult::Allowed, &["192.0.2.7"]),
            Event::Grant(GrantEvent::Revoked(grant(
                "clients",
                "x.example.org",
                "192.0.2.9",
                0,
            ))),
            filtered("clients", "10.0.0.7", SpecialClass::Private, false),
            filtered("lab", "192.0.2.7", SpecialClass::Node, true),
            Event::Lost { count: 3 },
        ];
        for e in events {
            h.bus.publish(e);
        }
        let seen = |v: Value| format!("{} {}", v["kind"].as_str().unwrap(), v["network"]);
        assert_eq!(seen(by_net.json().await), "packet \"lab\"");
        assert_eq!(seen(by_net.json().await), "dns \"lab\"");
        assert_eq!(seen(by_net.json().await), "filtered \"lab\"");
        assert_eq!(seen(by_net.json().await), "lost null", "lost always passes");
        assert_eq!(seen(by_verdict.json().await), "dns \"clients\"");
        assert_eq!(seen(by_verdict.json().await), "lost null");
        assert_eq!(seen(by_addr.json().await), "packet \"clients\"");
        assert_eq!(seen(by_addr.json().await), "dns \"lab\"", "answer address");
        assert_eq!(seen(by_addr.json().await), "filtered \"lab\"");
        assert_eq!(seen(by_addr.json().await), "lost null");
        assert_eq!(seen(by_kind.json().await), "grant \"clients\"");
        assert_eq!(seen(by_kind.json().await), "lost null");
        let v = filtered_only.json().await;
        assert_eq!(
            (v["result"].as_str(), v["class"].as_str()),
            (Some("audit_filtered"), Some("node"))
        );
        assert_eq!(seen(filtered_only.json().await), "lost null");
        let resp = send(h.addr, "GET", "/api/v1/events?address=10.1", None).await;
        assert_eq!(resp.status(), 400);
    });
}

#[test]
fn idle_streams_send_keepalive_lines() {
    let h = Harness::with(None, Duration::from_millis(100), EventBus::default());
    h.rt.block_on(async {
        let mut lines = Lines::open(&h, "").await;
        assert_eq!(
            lines.next(Duration::from_secs(1)).await.as_deref(),
            Some("")
        );
        assert_eq!(
            lines.next(Duration::from_secs(1)).await.as_deref(),
            Some("")
        );
    });
}

#[test]
fn shutdown_ends_open_streams() {
    let mut h = Harness::start();
    let mut lines = h.rt.block_on(Lines::open(&h, ""));
    h.shutdown().expect("serve returns Ok");
    let end = h.rt.block_on(lines.next(Duration::from_secs(2)));
    assert_eq!(end, None, "the stream ends");
}

#[test]
fn publishing_without_subscribers_builds_nothing() {
    let bus = EventBus::default();
    assert!(!bus.has_subscribers());
    bus.publish_with(|| unreachable!("built without a subscriber"));
    let mut rx = bus.subscribe();
    let mut built = false;
    bus.publish_with(|| {
        built = true;
        Event::Lost { count: 1 }
    });
    assert!(built);
    assert_eq!(*rx.try_recv().unwrap(), Event::Lost { count: 1 });
}
