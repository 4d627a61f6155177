//! Forwarding: timeouts, fallback, failures, anti-spoofing, concurrency.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

use crate::harness::*;

const LAN: &[&str] = &["127.0.0.0/8", "::1/128"];

fn www(up: &Upstream, ip: [u8; 4]) {
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, ip)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_silent_gives_servfail_within_timeout_times_n() {
    let (u1, u2) = (
        Upstream::start(Mode::Silent).await,
        Upstream::start(Mode::Silent).await,
    );
    let proxy = Proxy::start(config(&[u1.addr, u2.addr]), policy(LAN)).await;
    let start = Instant::now();
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    let took = start.elapsed();
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    assert_eq!(reply.id, 0x4242);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert_eq!(u1.log().len(), 1);
    assert_eq!(u2.log().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_second_upstream() {
    for first in [Mode::Silent, Mode::ServFail, Mode::Refused] {
        let (u1, u2) = (
            Upstream::start(first).await,
            Upstream::start(Mode::Normal).await,
        );
        www(&u2, [192, 0, 2, 2]);
        let proxy = Proxy::start(config(&[u1.addr, u2.addr]), policy(LAN)).await;
        let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
        assert_eq!(reply.response_code, ResponseCode::NoError, "{first:?}");
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(proxy.sink.addrs(), vec![IpAddr::from([192, 0, 2, 2])]);
        assert_eq!((u1.log().len(), u2.log().len()), (1, 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refused_is_relayed_when_no_upstream_helps() {
    let (u1, u2) = (
        Upstream::start(Mode::ServFail).await,
        Upstream::start(Mode::Refused).await,
    );
    let proxy = Proxy::start(config(&[u1.addr, u2.addr]), policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::Refused);
    assert_eq!(reply.queries.len(), 1);
    let proxy = Proxy::start(config(&[u2.addr, u1.addr]), policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_fails_fast() {
    // A port with nothing behind it: ICMP port unreachable on loopback.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = config(&[dead, dead]);
    cfg.upstream_timeout = Duration::from_secs(2);
    let proxy = Proxy::start(cfg, policy(LAN)).await;
    let start = Instant::now();
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.response_code, ResponseCode::ServFail);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_and_mismatched_answers_are_ignored() {
    let up = Upstream::start(Mode::Spoof).await;
    www(&up, [192, 0, 2, 1]);
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(proxy.sink.addrs(), vec![IpAddr::from([192, 0, 2, 1])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_does_not_delay_a_fast_one() {
    let up = Upstream::start(Mode::Normal).await;
    up.set(
        "slow.example.net",
        RecordType::A,
        Entry {
            answers: vec![a("slow.example.net.", 60, [192, 0, 2, 9])],
            delay: Duration::from_millis(800),
            ..Entry::default()
        },
    );
    www(&up, [192, 0, 2, 1]);
    let mut cfg = config(&[up.addr]);
    cfg.upstream_timeout = Duration::from_secs(2);
    let proxy = Proxy::start(cfg, policy(LAN)).await;
    let server = proxy.udp;
    let start = Instant::now();
    let slow = tokio::spawn(async move {
        udp(server, &query("slow.example.net.", RecordType::A, None)).await;
        start.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    let fast = start.elapsed();
    assert_eq!(reply.answers.len(), 1);
    assert!(fast < Duration::from_millis(500), "fast took {fast:?}");
    let slow = slow.await.unwrap();
    assert!(slow >= Duration::from_millis(800), "slow took {slow:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_queries_are_all_answered() {
    const CLIENTS: usize = 50;
    const PER_CLIENT: u16 = 10;
    let up = Upstream::start(Mode::Normal).await;
    for i in 0..CLIENTS * PER_CLIENT as usize {
        let owner = format!("h{i}.example.net");
        let entry = Entry {
            answers: vec![a(
                &format!("{owner}."),
                60,
                [198, 18, (i / 256) as u8, (i % 256) as u8],
            )],
            // Long enough that all 500 are in flight at once.
            delay: Duration::from_millis(300),
            ..Entry::default()
        };
        up.set(&owner, RecordType::A, entry);
    }
    let mut cfg = config(&[up.addr]);
    cfg.upstream_timeout = Duration::from_secs(5);
    let proxy = Arc::new(Proxy::start(cfg, policy(LAN)).await);
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let server = proxy.udp;
        clients.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for k in 0..PER_CLIENT {
                let i = c * PER_CLIENT as usize + k as usize;
                let mut q = query(&format!("h{i}.example.net."), RecordType::A, None);
                q.metadata.id = k;
                sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
            }
            let mut seen = HashSet::new();
            let mut buf = vec![0u8; 4096];
            while seen.len() < PER_CLIENT as usize {
                let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
                    .await
                    .expect("a query went unanswered")
                    .unwrap();
                let reply = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(reply.response_code, ResponseCode::NoError);
                let i = c * PER_CLIENT as usize + reply.id as usize;
                assert_eq!(
                    reply.queries[0].name().to_ascii(),
                    format!("h{i}.example.net.")
                );
                seen.insert(reply.id);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let took = start.elapsed();
    assert_eq!(proxy.sink.grants().len(), 500);
    // Serially this would take 150 s.
    assert!(took < Duration::from_secs(4), "{took:?}");
}
