//! What reaches the log at info level: each denial once, audited or not,
//! with client, network, name, type and reason; nothing for allowed queries
//! but the special-use addresses left out of them, a few lines at most.
//!
//! A test binary of its own: tracing caches per call site whether anyone
//! listens, and proxies of concurrent tests in the same process would race
//! this test's thread-local subscriber for that.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_core::policy::NetworkMode;

#[path = "../proxy/harness.rs"]
#[allow(dead_code)]
mod harness;

use harness::*;

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }
}

// A current-thread runtime, so that the proxy's tasks log to this test's
// subscriber.
#[tokio::test]
async fn denials_are_logged_once_at_info() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, [192, 0, 2, 1])],
    );
    // 127.0.0.0/8 enforces, ::1 audits.
    let mut policy = policy(&["127.0.0.0/8"]);
    let mut audit = policy_in(&["::1/128"], NetworkMode::Audit)
        .networks
        .remove(0);
    audit.name = "lab".into();
    policy.networks.push(audit);
    let proxy = Proxy::start(config(&[up.addr]), policy.clone()).await;

    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::NoError);
    let (reply, _) = udp(proxy.udp, &query("Evil.test.", RecordType::AAAA, None)).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);

    let lines = logs.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let denied = &lines[0];
    for part in [
        " INFO ",
        "query denied",
        "client=127.0.0.1",
        "network=\"lan\"",
        "name=\"evil.test\"",
        "qtype=\"AAAA\"",
        "reason=\"no_rule\"",
    ] {
        assert!(denied.contains(part), "{part} not in {denied}");
    }

    let v6 = "[::1]:0".parse().unwrap();
    if std::net::UdpSocket::bind(v6).is_ok() {
        let mut cfg = config(&[up.addr]);
        cfg.listen = vec![v6];
        let proxy = Proxy::start(cfg, policy).await;
        let client = tokio::net::UdpSocket::bind(v6).await.unwrap();
        let q = query("evil.test.", RecordType::A, None).to_vec().unwrap();
        client.send_to(&q, proxy.udp).await.unwrap();
        let mut buf = vec![0u8; 4096];
        tokio::time::timeout(CLIENT_WAIT, client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let lines = logs.lines();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        let audited = &lines[1];
        for part in [
            " INFO ",
            "audit-denied",
            "client=::1",
            "network=\"lab\"",
            "name=\"evil.test\"",
            "qtype=\"A\"",
            "reason=\"no_rule\"",
        ] {
            assert!(audited.contains(part), "{part} not in {audited}");
        }
    }

    // Special-use addresses left out: a few lines, however many there are.
    let many: Vec<_> = (1..=20)
        .map(|i| a("many.example.net.", 60, [10, 0, 0, i]))
        .collect();
    up.answer("many.example.net", RecordType::A, many);
    let before = logs.lines().len();
    let lan = harness::policy(&["127.0.0.0/8"]);
    let proxy = Proxy::start(config(&[up.addr]), lan).await;
    let (reply, _) = udp(proxy.udp, &query("many.example.net.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    let lines = logs.lines().split_off(before);
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for part in [
        " INFO ",
        "special-use address not learned, removed from the answer",
        "client=127.0.0.1",
        "network=\"lan\"",
        "name=\"many.example.net\"",
        "addr=10.0.0.1 ",
        "class=\"private\"",
    ] {
        assert!(lines[0].contains(part), "{part} not in {}", lines[0]);
    }
    assert_eq!(proxy.observed.filtered.lock().unwrap().len(), 20);
}
