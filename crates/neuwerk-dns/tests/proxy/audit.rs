//! Networks in audit mode: names the policy would deny are forwarded and
//! relayed like allowed ones, nothing is learned for them, and they are
//! reported as audit-denied.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use neuwerk_core::events::DnsResult;
use neuwerk_core::policy::NetworkMode;

use crate::harness::*;

const LAN: &[&str] = &["127.0.0.0/8", "::1/128"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_names_are_forwarded_and_relayed_without_learning() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "evil.test",
        RecordType::A,
        vec![a("evil.test.", 60, [6, 6, 6, 6])],
    );
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, [192, 0, 2, 1])],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy_in(LAN, NetworkMode::Audit)).await;

    for (i, edns) in [None, Some(1232)].into_iter().enumerate() {
        let (reply, _) = udp(proxy.udp, &query("Evil.test.", RecordType::A, edns)).await;
        assert_eq!(reply.response_code, ResponseCode::NoError);
        assert_eq!(reply.id, 0x4242);
        assert_eq!(reply.answers, vec![a("evil.test.", 60, [6, 6, 6, 6])]);
        assert_eq!(reply.edns.is_some(), edns.is_some());
        let o = proxy.observed.nth(i + 1).await;
        assert_eq!(o.event.result, DnsResult::AuditDenied);
        assert_eq!(o.event.network.as_deref(), Some("lan"));
        assert_eq!(o.event.name, "evil.test");
        assert!(o.event.addrs.is_empty());
        let upstream = o.upstream.expect("forwarded");
        assert!(upstream > std::time::Duration::ZERO && upstream <= o.total);
    }
    // Over TCP too.
    let reply = tcp(proxy.tcp, &query("evil.test.", RecordType::A, None)).await;
    assert_eq!(reply.answers.len(), 1);
    let log = up.log();
    assert_eq!(log.len(), 3, "forwarded each time: {log:?}");
    assert!(log
        .iter()
        .all(|l| l.name == "evil.test" && l.qtype == RecordType::A));
    assert!(
        proxy.sink.batches.lock().unwrap().is_empty(),
        "nothing learned for an audited name"
    );

    // A name the rules allow is still learned in an auditing network.
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(proxy.sink.addrs(), vec![IpAddr::from([192, 0, 2, 1])]);
    let o = proxy.observed.nth(4).await;
    assert_eq!(o.event.result, DnsResult::Allowed);
    assert_eq!(o.event.addrs, vec![IpAddr::from([192, 0, 2, 1])]);
    assert_eq!(proxy.observed.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_names_are_forwarded_too() {
    let up = Upstream::start(Mode::Normal).await;
    let proxy = Proxy::start(config(&[up.addr]), policy_in(LAN, NetworkMode::Audit)).await;
    let dotted = Name::from_labels(vec![&b"www.example"[..], b"com"]).unwrap();
    let mut q = query("x.test.", RecordType::A, None);
    q.queries[0].set_name(dotted);
    let (reply, _) = udp(proxy.udp, &q).await;
    // The upstream knows no such name: its NXDOMAIN is relayed.
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    assert_eq!(up.log().len(), 1);
    let o = proxy.observed.nth(1).await;
    assert_eq!(o.event.result, DnsResult::AuditDenied);
    assert_eq!(o.event.name, "www\\.example.com.");
    assert!(proxy.sink.grants().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audited_name_stays_audit_denied_when_upstreams_fail() {
    let up = Upstream::start(Mode::ServFail).await;
    let proxy = Proxy::start(config(&[up.addr]), policy_in(LAN, NetworkMode::Audit)).await;
    let (reply, _) = udp(proxy.udp, &query("evil.test.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    assert_eq!(up.log().len(), 1);
    let o = proxy.observed.nth(1).await;
    assert_eq!(o.event.result, DnsResult::AuditDenied);
    assert!(o.upstream.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcing_networks_still_deny() {
    let up = Upstream::start(Mode::Normal).await;
    let proxy = Proxy::start(config(&[up.addr]), policy_in(LAN, NetworkMode::Enforce)).await;
    let (reply, _) = udp(proxy.udp, &query("evil.test.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    assert!(up.log().is_empty());
    assert_eq!(proxy.observed.nth(1).await.event.result, DnsResult::Denied);
}
