//! Policy decisions, what is learned, and what the client gets.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_core::config::DenyResponse;
use neuwerk_core::policy::PortSet;
use neuwerk_core::time::monotonic_ns;

use crate::harness::*;

const LAN: &[&str] = &["127.0.0.0/8", "::1/128"];
const SEC: u64 = 1_000_000_000;

/// `expires_ns` is `now + secs` within a second of slack.
fn assert_expiry(expires_ns: u64, before_ns: u64, secs: u64) {
    let after_ns = monotonic_ns();
    assert!(
        expires_ns >= before_ns + secs * SEC && expires_ns <= after_ns + secs * SEC,
        "expiry {expires_ns} not {secs}s after [{before_ns}, {after_ns}]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_a_is_relayed_and_learned_before_the_reply() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![
            a("www.example.com.", 300, [192, 0, 2, 1]),
            a("www.example.com.", 30, [192, 0, 2, 2]),
        ],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let before = monotonic_ns();
    let (reply, _) = udp(proxy.udp, &query("WWW.Example.com.", RecordType::A, None)).await;
    let replied = Instant::now();

    assert_eq!(reply.id, 0x4242);
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert!(reply.recursion_desired && reply.recursion_available);
    assert_eq!(reply.queries[0].name().to_ascii(), "WWW.Example.com.");
    let addrs: Vec<_> = reply.answers.iter().map(|r| r.data.clone()).collect();
    assert_eq!(addrs.len(), 2);
    // The client sent no OPT record, so it gets none back.
    assert!(reply.edns.is_none());

    let batches = proxy.sink.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 1, "learned once, before the reply");
    assert!(batches[0].0 <= replied);
    let grants = &batches[0].1;
    assert_eq!(grants.len(), 2);
    for g in grants {
        assert_eq!(&*g.network, "lan");
        assert_eq!(&*g.hostname, "www.example.com");
        assert_eq!(g.ports, https());
    }
    assert_eq!(grants[0].addr, IpAddr::from([192, 0, 2, 1]));
    assert_expiry(grants[0].expires_ns, before, 300);
    // TTL 30 is raised to min_ttl (60 s) for the grant...
    assert_eq!(grants[1].addr, IpAddr::from([192, 0, 2, 2]));
    assert_expiry(grants[1].expires_ns, before, 60);
    // ...but not in the answer.
    assert_eq!(reply.answers[1].ttl, 30);
    let log = up.log();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].name.as_str(), log[0].qtype),
        ("www.example.com", RecordType::A)
    );
    assert_eq!(
        log[0].edns_payload,
        Some(1232),
        "EDNS 1232 advertised upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_aaaa_is_learned_and_ipv6_clients_work() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "v6.example.com",
        RecordType::AAAA,
        vec![aaaa("v6.example.com.", 120, "2001:db8::1")],
    );
    let mut cfg = config(&[up.addr]);
    let v6 = "[::1]:0".parse().unwrap();
    let has_v6 = std::net::UdpSocket::bind(v6).is_ok();
    if has_v6 {
        cfg.listen.push(v6);
    }
    let proxy = Proxy::start(cfg, policy(LAN)).await;
    let (reply, _) = udp(
        proxy.udp,
        &query("v6.example.com.", RecordType::AAAA, Some(1232)),
    )
    .await;
    assert_eq!(reply.answers.len(), 1);
    assert!(reply.edns.is_some(), "EDNS client gets an OPT record");
    let grants = proxy.sink.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].addr, "2001:db8::1".parse::<IpAddr>().unwrap());
    assert_eq!(&*grants[0].hostname, "v6.example.com");
    drop(proxy);

    if has_v6 {
        // A client on ::1 is in the lan network too.
        let mut cfg = config(&[up.addr]);
        cfg.listen = vec![v6];
        let proxy = Proxy::start(cfg, policy(LAN)).await;
        let sock = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
        let q = query("v6.example.com.", RecordType::AAAA, None)
            .to_vec()
            .unwrap();
        sock.send_to(&q, proxy.udp).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(CLIENT_WAIT, sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let reply = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(reply.response_code, ResponseCode::NoError);
        assert_eq!(proxy.sink.grants().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_name_is_refused_and_never_forwarded() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "evil.test",
        RecordType::A,
        vec![a("evil.test.", 60, [6, 6, 6, 6])],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    for (name, edns) in [
        ("evil.test.", None),
        ("example.com.", Some(1232)),
        ("a.b.example.net.", None),
    ] {
        let (reply, _) = udp(proxy.udp, &query(name, RecordType::A, edns)).await;
        assert_eq!(reply.response_code, ResponseCode::Refused, "{name}");
        assert_eq!(reply.id, 0x4242);
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(reply.queries[0].name().to_ascii(), name);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.edns.is_some(), edns.is_some());
    }
    let reply = tcp(proxy.tcp, &query("evil.test.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    assert!(up.log().is_empty(), "denied queries reached the upstream");
    assert!(proxy.sink.grants().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_response_nxdomain() {
    let up = Upstream::start(Mode::Normal).await;
    let mut cfg = config(&[up.addr]);
    cfg.deny_response = DenyResponse::NxDomain;
    let proxy = Proxy::start(cfg, policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query("evil.test.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    assert_eq!(reply.queries[0].name().to_ascii(), "evil.test.");
    assert!(up.log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_outside_every_network_is_denied() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, [192, 0, 2, 1])],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(&["10.0.0.0/8"])).await;
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    assert!(up.log().is_empty());
    assert!(proxy.sink.grants().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_chain_is_learned_for_the_query_name_and_nothing_else() {
    let up = Upstream::start(Mode::Normal).await;
    let answers = vec![
        cname("www.example.org.", 300, "edge.cdn.test."),
        cname("EDGE.cdn.test.", 300, "e1.cdn.test."),
        a("e1.cdn.test.", 60, [198, 51, 100, 7]),
        aaaa("e1.cdn.test.", 60, "2001:db8::7"),
        // Not reached from the query name: must not be learned.
        a("other.test.", 60, [203, 0, 113, 66]),
        a("edge2.cdn.test.", 60, [203, 0, 113, 67]),
    ];
    up.answer("www.example.org", RecordType::A, answers.clone());
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let (reply, _) = udp(
        proxy.udp,
        &query("www.example.org.", RecordType::A, Some(1232)),
    )
    .await;
    // Relayed unchanged: same records, same order.
    assert_eq!(reply.answers, answers);
    let grants = proxy.sink.grants();
    assert_eq!(
        proxy.sink.addrs(),
        vec![
            IpAddr::from([198, 51, 100, 7]),
            "2001:db8::7".parse().unwrap()
        ]
    );
    for g in &grants {
        assert_eq!(&*g.hostname, "www.example.org");
        assert_eq!(g.ports, web());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_and_nodata_are_relayed_without_learning() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer("www.example.com", RecordType::AAAA, vec![]);
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query("x.example.net.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::NXDomain);
    let (reply, _) = udp(
        proxy.udp,
        &query("www.example.com.", RecordType::AAAA, None),
    )
    .await;
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert!(proxy.sink.batches.lock().unwrap().is_empty());
    assert_eq!(up.log().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_are_capped_in_every_section_but_grants_use_min_ttl() {
    let up = Upstream::start(Mode::Normal).await;
    up.set(
        "a.example.net",
        RecordType::A,
        Entry {
            answers: vec![
                a("a.example.net.", 86_400, [192, 0, 2, 10]),
                a("a.example.net.", 5, [192, 0, 2, 11]),
            ],
            additionals: vec![a("ns.example.net.", 90_000, [192, 0, 2, 53])],
            delay: Duration::ZERO,
        },
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let before = monotonic_ns();
    for edns in [None, Some(1232)] {
        let (reply, _) = udp(proxy.udp, &query("a.example.net.", RecordType::A, edns)).await;
        let ttls: Vec<u32> = reply.all_sections().map(|r| r.ttl).collect();
        assert_eq!(ttls, vec![600, 5, 600]);
    }
    let grants = proxy.sink.grants();
    assert_eq!(grants.len(), 4);
    assert_expiry(grants[0].expires_ns, before, 600);
    assert_expiry(grants[1].expires_ns, before, 60);
    assert_eq!(grants[0].ports, PortSet::all());
    // The additional-section address answers nothing: not learned.
    assert!(!proxy.sink.addrs().contains(&IpAddr::from([192, 0, 2, 53])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_answer_is_fetched_over_tcp_and_fully_learned() {
    let up = Upstream::start(Mode::Normal).await;
    let many: Vec<_> = (0..100)
        .map(|i| a("big.example.net.", 60, [198, 18, 9, i]))
        .collect();
    up.answer("big.example.net", RecordType::A, many);
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;

    // Over TCP the client gets all 100 records; upstream was asked over UDP
    // (TC=1, the answer exceeds 1232 bytes), then over TCP.
    let reply = tcp(proxy.tcp, &query("big.example.net.", RecordType::A, None)).await;
    assert_eq!(reply.answers.len(), 100);
    assert!(!reply.truncation);
    assert_eq!(proxy.sink.grants().len(), 100);
    let transports: Vec<_> = up.log().iter().map(|l| l.transport).collect();
    assert_eq!(
        transports,
        vec![neuwerk_dns::Transport::Udp, neuwerk_dns::Transport::Tcp]
    );

    // A 512-byte UDP client gets TC=1 and a reply that fits...
    let (reply, len) = udp(proxy.udp, &query("big.example.net.", RecordType::A, None)).await;
    assert!(reply.truncation);
    assert!(len <= 512, "{len} bytes");
    assert!(reply.answers.len() < 100);
    assert_eq!(reply.queries.len(), 1);
    // ...while all 100 addresses were learned for it anyway.
    assert_eq!(proxy.sink.batches.lock().unwrap()[1].1.len(), 100);

    // An EDNS client with a 1000-byte buffer: cut at 1000, OPT kept.
    let (reply, len) = udp(
        proxy.udp,
        &query("big.example.net.", RecordType::A, Some(1000)),
    )
    .await;
    assert!(reply.truncation && len <= 1000 && reply.edns.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_truncation_is_retried_over_tcp() {
    let up = Upstream::start(Mode::Truncate).await;
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, [192, 0, 2, 1])],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert!(!reply.truncation);
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(proxy.sink.grants().len(), 1);
    assert_eq!(up.log().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_failure_answers_servfail() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, [192, 0, 2, 1])],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    proxy
        .sink
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.id, 0x4242);
}

/// Answers that arrive together are learned together (one `learn_many`),
/// and a batch whose grants cannot be learned fails only its own query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_learn_in_a_batch_fails_only_its_query() {
    const N: u8 = 20;
    let up = Upstream::start(Mode::Normal).await;
    for i in 0..N {
        let owner = format!("b{i}.example.net");
        let entry = Entry {
            answers: vec![a(&format!("{owner}."), 60, [192, 0, 2, i])],
            // All in flight at once, so the answers come back together.
            delay: Duration::from_millis(300),
            ..Entry::default()
        };
        up.set(&owner, RecordType::A, entry);
    }
    let mut cfg = config(&[up.addr]);
    cfg.upstream_timeout = Duration::from_secs(5);
    let proxy = Proxy::start(cfg, policy(LAN)).await;
    *proxy.sink.fail_addr.lock().unwrap() = Some(IpAddr::from([192, 0, 2, 7]));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..N {
        let mut q = query(&format!("b{i}.example.net."), RecordType::A, None);
        q.metadata.id = u16::from(i);
        sock.send_to(&q.to_vec().unwrap(), proxy.udp).await.unwrap();
    }
    let mut rcodes = vec![None; N as usize];
    let mut buf = vec![0u8; 4096];
    while rcodes.iter().any(Option::is_none) {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
            .await
            .expect("a query went unanswered")
            .unwrap();
        let reply = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
        rcodes[reply.id as usize] = Some(reply.response_code);
    }
    for (i, rcode) in rcodes.iter().enumerate() {
        let want = if i == 7 {
            ResponseCode::ServFail
        } else {
            ResponseCode::NoError
        };
        assert_eq!(*rcode, Some(want), "query {i}");
    }
    assert_eq!(proxy.sink.grants().len(), N as usize - 1);
    let many = proxy.sink.many.lock().unwrap().clone();
    assert!(
        many.iter().any(|&n| n > 1),
        "never learned a batch: {many:?}"
    );
}
