//! `neuwerk status` and `neuwerk monitor` against the test server.

use std::io::{self, Write};
use std::sync::mpsc;
use std::time::Duration;

use neuwerk_core::events::{DnsObserver, DnsQueryView, DnsResult, Event, PacketVerdict};
use neuwerk_core::grants::GrantEvent;
use neuwerk_mgmt::{monitor, status, ApiTarget, ClientError, EventBus, MonitorFilter};

use crate::events::{dns, filtered, packet};
use crate::harness::{grant, ip, kernel, Harness};

fn target(h: &Harness, token: Option<&str>) -> ApiTarget {
    ApiTarget::from_url(&h.url(), token.map(str::to_string)).unwrap()
}

#[test]
fn status_prints_a_summary() {
    let h = Harness::start();
    *h.fake.kernel.lock().unwrap() = kernel(1);
    *h.fake.grants.lock().unwrap() =
        vec![grant("clients", "api.github.com", "192.0.2.101", 30_000)];
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
    let mut out = Vec::new();
    status(&target(&h, None), false, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    for want in [
        "neuwerk 9.9.9, up 1h 2m 3s",
        "ready:        yes",
        "interfaces:   ingress nwi0, egress nwe0",
        "policy:       generation 7, /etc/neuwerk/policy.yaml",
        "2 networks, 4 rules (3 hostname, 1 static)",
        "conntrack:    34 entries",
        "network clients (enforce): 10.100.1.0/24, fd00:100:1::/64",
        "  rules     3 (2 hostname, 1 static)",
        "  grants    1 active",
        "  packets   120 allowed, 5 dropped (tcp 105, udp 20)",
        "  dns       1 denied",
        "network lab (audit): 10.100.2.0/24",
        "no network (ARP, ND, DNS to neuwerk, unknown sources):",
        "  packets   7 dropped (icmp 7)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    h.fake.ready.lock().unwrap().dns_listening = false;
    let mut out = Vec::new();
    status(&target(&h, None), false, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("ready:        no (DNS not listening)"),
        "{text}"
    );
}

#[test]
fn status_json_is_the_servers() {
    let h = Harness::start();
    let mut out = Vec::new();
    status(&target(&h, None), true, &mut out).unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(printed, h.json("/api/v1/status"));
    assert!(out.ends_with(b"\n"));
}

#[test]
fn client_errors_say_what_to_check() {
    let h = Harness::with(Some("tok"), Duration::from_secs(10), EventBus::default());
    let mut out = Vec::new();
    let e = status(&target(&h, None), false, &mut out).unwrap_err();
    assert!(matches!(e, ClientError::Unauthorized { .. }));
    assert!(e.to_string().contains("token required or wrong"), "{e}");
    let e = status(&target(&h, Some("bad")), false, &mut out).unwrap_err();
    assert!(e.to_string().contains("token required or wrong"), "{e}");
    status(&target(&h, Some("tok")), false, &mut out).unwrap();

    // A port nothing listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = ApiTarget::from_url(&format!("http://127.0.0.1:{port}"), None).unwrap();
    let e = status(&t, false, &mut out).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ClientError::Connect { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "cannot connect to neuwerk at http://127.0.0.1:{port}"
        )),
        "{msg}"
    );
}

#[test]
fn target_from_the_daemon_config() {
    let dir = std::env::temp_dir().join(format!("neuwerk-mgmt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        "interfaces: { ingress: nwi0, egress: nwe0 }\n\
         dns:\n  listen: [\"10.100.1.10:53\"]\n  upstreams: [\"10.100.2.100:53\"]\n\
         policy:\n  file: policy.yaml\n\
         management:\n  listen: 0.0.0.0:3999\n  token: hunter2\n",
    )
    .unwrap();
    let t = ApiTarget::from_config(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(t.base, "http://127.0.0.1:3999");
    assert_eq!(t.token.as_deref(), Some("hunter2"));
    assert!(!format!("{t:?}").contains("hunter2"), "token redacted");
    let e = ApiTarget::from_config(&dir.join("missing.yaml")).unwrap_err();
    assert!(e.to_string().contains("missing.yaml"), "{e}");
}

/// Forwards complete lines to a channel; fails (like a closed pipe) after
/// `left` lines, which ends `monitor`.
struct LineSink {
    tx: mpsc::Sender<String>,
    buf: Vec<u8>,
    left: usize,
}

impl Write for LineSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.buf.extend_from_slice(data);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let _ = self
                .tx
                .send(String::from_utf8_lossy(&line[..nl]).into_owned());
            self.left = self.left.saturating_sub(1);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `monitor` on a thread, publishes `events`, and returns the first
/// `n` lines it prints and the error that ended it.
fn run_monitor(
    h: &Harness,
    filter: MonitorFilter,
    json: bool,
    events: Vec<Event>,
    n: usize,
) -> (Vec<String>, ClientError) {
    let t = target(h, None);
    let (tx, rx) = mpsc::channel();
    let th = std::thread::spawn(move || {
        let mut sink = LineSink {
            tx,
            buf: Vec::new(),
            left: n,
        };
        monitor(&t, &filter, json, &mut sink)
    });
    h.wait_subscribers(1);
    for e in events {
        h.bus.publish(e);
    }
    let lines: Vec<String> = (0..n)
        .map(|_| rx.recv_timeout(Duration::from_secs(2)).expect("a line"))
        .collect();
    // One more event makes the sink fail, which ends `monitor`.
    h.bus.publish(Event::Lost { count: 0 });
    let err = th.join().unwrap().unwrap_err();
    (lines, err)
}

#[test]
fn monitor_prints_one_line_per_event() {
    let h = Harness::start();
    let events = vec![
        packet(
            Some("clients"),
            "10.100.1.100",
            "192.0.2.102",
            PacketVerdict::Dropped,
        ),
        packet(
            None,
            "fd00:100:1::5",
            "2001:db8::1",
            PacketVerdict::AuditAllowed,
        ),
        dns("clients", "evil.example.net", DnsResult::Denied, &[]),
        dns(
            "clients",
            "api.github.com",
            DnsResult::Allowed,
            &["192.0.2.101", "192.0.2.102"],
        ),
        Event::Grant(GrantEvent::Learned(grant(
            "clients",
            "api.github.com",
            "192.0.2.101",
            29_500,
        ))),
        Event::Grant(GrantEvent::Expired(grant(
            "clients",
            "api.github.com",
            "192.0.2.101",
            0,
        ))),
        filtered(
            "clients",
            "169.254.169.254",
            neuwerk_core::special::SpecialClass::LinkLocal,
            false,
        ),
        filtered(
            "lab",
            "10.0.0.7",
            neuwerk_core::special::SpecialClass::Private,
            true,
        ),
        Event::Lost { count: 17 },
    ];
    let n = events.len();
    let (lines, err) = run_monitor(&h, MonitorFilter::default(), false, events, n);
    assert!(err.is_broken_pipe(), "{err}");
    let rest: Vec<&str> = lines
        .iter()
        .map(|l| {
            let (time, rest) = l.split_once(' ').unwrap();
            assert_eq!(time.len(), 12, "HH:MM:SS.mmm in {l:?}");
            assert_eq!((&time[2..3], &time[8..9]), (":", "."));
            rest
        })
        .collect();
    assert_eq!(
        rest,
        [
            "DROPPED  clients tcp 10.100.1.100:41000 -> 192.0.2.102:443 (drop_policy)",
            "AUDIT    - tcp [fd00:100:1::5]:41000 -> [2001:db8::1]:443 (drop_policy)",
            "DNS DENIED clients 10.100.1.100 evil.example.net A",
            "DNS ALLOWED clients 10.100.1.100 api.github.com A -> 192.0.2.101, 192.0.2.102",
            "GRANT ADDED clients api.github.com 192.0.2.101 tcp/443 ttl 30s",
            "GRANT EXPIRED clients api.github.com 192.0.2.101 tcp/443",
            "DNS FILTERED clients 10.100.1.100 meta.example.com 169.254.169.254 (link_local)",
            "DNS AUDIT_FILTERED lab 10.100.1.100 meta.example.com 10.0.0.7 (private)",
            "LOST 17 events",
        ]
    );
}

#[test]
fn monitor_json_and_filters() {
    let h = Harness::start();
    let filter = MonitorFilter {
        network: Some("clients".into()),
        verdict: Some("denied".into()),
        ..MonitorFilter::default()
    };
    let events = vec![
        dns("lab", "evil.example.net", DnsResult::Denied, &[]),
        dns(
            "clients",
            "ok.example.org",
            DnsResult::Allowed,
            &["192.0.2.1"],
        ),
        dns("clients", "evil.example.net", DnsResult::Denied, &[]),
    ];
    // Only the third passes the filter; then the `lost` event that ends
    // the run (lost events always pass).
    let (lines, err) = run_monitor(&h, filter, true, events, 1);
    assert!(err.is_broken_pipe(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["name"], "evil.example.net");
    assert_eq!(
        (v["network"].as_str(), v["result"].as_str()),
        (Some("clients"), Some("denied"))
    );
}
