//! What the observer is told: once per query, with its result, names,
//! learned addresses and timings.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use neuwerk_core::events::DnsResult;

use crate::harness::*;

const LAN: &[&str] = &["127.0.0.0/8", "::1/128"];
const SHORT: Duration = Duration::from_millis(300);

/// Timings are set and consistent: the total is never zero, and the
/// upstream part (present exactly when an upstream was asked) within it.
fn assert_timings(o: &Observed, asked_upstream: bool) {
    assert!(o.total > Duration::ZERO, "{o:?}");
    match o.upstream {
        Some(up) => {
            assert!(asked_upstream, "upstream time without upstream: {o:?}");
            assert!(up > Duration::ZERO && up <= o.total, "{o:?}");
        }
        None => assert!(!asked_upstream, "no upstream time: {o:?}"),
    }
    // The grant-commit time: exactly when something was learned, and
    // within the query's time.
    match o.grant_commit {
        Some(g) => {
            assert!(
                !o.event.addrs.is_empty(),
                "commit time, nothing learned: {o:?}"
            );
            assert!(g > Duration::ZERO && g <= o.total, "{o:?}");
        }
        None => assert!(o.event.addrs.is_empty(), "no commit time: {o:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_is_reported_once_with_its_result() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![
            a("www.example.com.", 60, [192, 0, 2, 1]),
            a("www.example.com.", 60, [192, 0, 2, 2]),
        ],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let rec = &proxy.observed;

    // Allowed: the policy's form of the name, and what was learned.
    let (reply, _) = udp(proxy.udp, &query("WWW.Example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert_eq!(rec.len(), 1, "reported before the reply is sent");
    let o = &rec.all()[0];
    assert_eq!(o.event.result, DnsResult::Allowed);
    assert_eq!(o.event.client, IpAddr::from([127, 0, 0, 1]));
    assert_eq!(o.event.network.as_deref(), Some("lan"));
    assert_eq!(o.event.name, "www.example.com");
    assert_eq!(o.event.qtype, "A");
    assert_eq!(
        o.event.addrs,
        vec![IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2])]
    );
    assert_timings(o, true);

    // Allowed whatever the rcode: NXDOMAIN relayed, nothing learned.
    let reply = tcp(proxy.tcp, &query("nx.example.net.", RecordType::AAAA, None)).await;
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    let o = rec.nth(2).await;
    assert_eq!(o.event.result, DnsResult::Allowed);
    assert_eq!(
        (o.event.name.as_str(), o.event.qtype.as_str()),
        ("nx.example.net", "AAAA")
    );
    assert!(o.event.addrs.is_empty());
    assert_timings(&o, true);

    // Denied: never forwarded, so no upstream time.
    let (reply, _) = udp(proxy.udp, &query("Evil.test.", RecordType::TXT, None)).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    let o = rec.nth(3).await;
    assert_eq!(o.event.result, DnsResult::Denied);
    assert_eq!(o.event.network.as_deref(), Some("lan"));
    assert_eq!(
        (o.event.name.as_str(), o.event.qtype.as_str()),
        ("evil.test", "TXT")
    );
    assert!(o.event.addrs.is_empty());
    assert_timings(&o, false);

    // A name policy cannot read: denied, reported as received.
    let dotted = Name::from_labels(vec![&b"www.example"[..], b"com"]).unwrap();
    let mut q = query("x.test.", RecordType::from(0xff00), None);
    q.queries[0].set_name(dotted);
    let (reply, _) = udp(proxy.udp, &q).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    let o = rec.nth(4).await;
    assert_eq!(o.event.result, DnsResult::Denied);
    assert_eq!(o.event.name, "www\\.example.com.");
    assert_eq!(o.event.qtype, "TYPE65280");

    // Malformed: answered FORMERR, or dropped without a reply.
    let good = query("www.example.com.", RecordType::A, None)
        .to_vec()
        .unwrap();
    assert!(udp_raw(proxy.udp, &good[..20], SHORT).await.is_some());
    let o = rec.nth(5).await;
    assert_eq!(o.event.result, DnsResult::Malformed);
    assert_eq!((o.event.name.as_str(), o.event.qtype.as_str()), ("", ""));
    assert_eq!(o.event.network, None);
    assert_timings(&o, false);
    assert_eq!(udp_raw(proxy.udp, &good[..5], SHORT).await, None);
    assert_eq!(rec.nth(6).await.event.result, DnsResult::Malformed);

    // Grants that cannot be learned: an error.
    proxy.sink.fail.store(true, Ordering::SeqCst);
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    let o = rec.nth(7).await;
    assert_eq!(o.event.result, DnsResult::Error);
    assert!(o.event.addrs.is_empty(), "nothing was learned");
    assert_timings(&o, true);

    // Exactly once each.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(rec.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upstreams_are_servfail_and_timed() {
    let (u1, u2) = (
        Upstream::start(Mode::Silent).await,
        Upstream::start(Mode::ServFail).await,
    );
    let proxy = Proxy::start(config(&[u1.addr, u2.addr]), policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    let seen = proxy.observed.all();
    assert_eq!(seen.len(), 1);
    let o = &seen[0];
    assert_eq!(o.event.result, DnsResult::ServFail);
    assert_eq!(o.event.name, "www.example.com");
    assert!(o.event.addrs.is_empty());
    assert_timings(o, true);
    // The silent upstream's whole timeout (200 ms) is upstream time.
    assert!(o.upstream.unwrap() >= Duration::from_millis(200), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_every_network_are_reported_without_one() {
    let up = Upstream::start(Mode::Normal).await;
    let proxy = Proxy::start(
        config(&[up.addr]),
        policy_in(&["10.0.0.0/8"], neuwerk_core::policy::NetworkMode::Audit),
    )
    .await;
    // Even when the only network audits: the client is in none.
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    assert!(up.log().is_empty());
    let seen = proxy.observed.all();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].event.result, DnsResult::Denied);
    assert_eq!(seen[0].event.network, None);
    assert_eq!(seen[0].event.name, "www.example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pipelined_tcp_query_is_reported() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, [192, 0, 2, 1])],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.tcp).await.unwrap();
    for (id, name) in [
        (1u16, "www.example.com."),
        (2, "evil.test."),
        (3, "x.example.net."),
    ] {
        let mut q = query(name, RecordType::A, None);
        q.metadata.id = id;
        write_tcp(&mut stream, &q.to_vec().unwrap()).await;
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(read_tcp(&mut stream).await.unwrap().id);
    }
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
    let mut results: Vec<_> = proxy
        .observed
        .all()
        .into_iter()
        .map(|o| (o.event.name, o.event.result))
        .collect();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        results,
        vec![
            ("evil.test".to_string(), DnsResult::Denied),
            ("www.example.com".to_string(), DnsResult::Allowed),
            ("x.example.net".to_string(), DnsResult::Allowed),
        ]
    );
}
