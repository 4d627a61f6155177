//! Malformed input, TCP framing, binding and shutdown.

use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use neuwerk_dns::{DnsError, DnsServer, ProxyContext, Transport};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::harness::*;

const LAN: &[&str] = &["127.0.0.0/8", "::1/128"];
const SHORT: Duration = Duration::from_millis(300);

async fn proxy_with_www() -> (Upstream, Proxy) {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, [192, 0, 2, 1])],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    (up, proxy)
}

async fn still_serves(proxy: &Proxy) {
    let (reply, _) = udp(proxy.udp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.answers.len(), 1);
    let reply = tcp(proxy.tcp, &query("www.example.com.", RecordType::A, None)).await;
    assert_eq!(reply.answers.len(), 1);
}

/// Deterministic junk.
fn junk(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_udp_gets_formerr_notimp_or_silence() {
    let (up, proxy) = proxy_with_www().await;
    let good = query("www.example.com.", RecordType::A, None)
        .to_vec()
        .unwrap();

    // Shorter than a header: dropped.
    assert_eq!(udp_raw(proxy.udp, &good[..5], SHORT).await, None);
    // A response (QR=1): ignored.
    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(udp_raw(proxy.udp, &response, SHORT).await, None);
    // A header, then garbage: FORMERR with the id.
    let mut cut = good[..20].to_vec();
    cut[0] = 0x77;
    let reply = udp_raw(proxy.udp, &cut, SHORT).await.unwrap();
    assert_eq!(reply.len(), 12);
    assert_eq!(&reply[..2], &[0x77, 0x42]);
    assert_eq!(reply[3] & 0x0f, 1);
    // Two questions: FORMERR.
    let mut two = query("www.example.com.", RecordType::A, None);
    two.add_query(two.queries[0].clone());
    let reply = udp_raw(proxy.udp, &two.to_vec().unwrap(), SHORT)
        .await
        .unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().response_code,
        ResponseCode::FormErr
    );
    // No question: FORMERR.
    let mut none = good[..12].to_vec();
    none[5] = 0;
    let reply = udp_raw(proxy.udp, &none, SHORT).await.unwrap();
    assert_eq!(reply[3] & 0x0f, 1);
    // Opcode STATUS: NOTIMP.
    let mut status = good.clone();
    status[2] = (status[2] & 0x87) | (2 << 3);
    let reply = udp_raw(proxy.udp, &status, SHORT).await.unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.response_code, ResponseCode::NotImp);
    assert_eq!(reply.id, 0x4242);

    // Random junk of every size: whatever comes back is FORMERR or NOTIMP.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for seed in 0..300 {
        let bytes = junk(seed, (seed as usize * 7) % 700);
        sock.send_to(&bytes, proxy.udp).await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(SHORT, sock.recv(&mut buf)).await {
        let rcode = buf[3] & 0x0f;
        assert!(buf[2] & 0x80 != 0 && n >= 12);
        assert!(rcode == 1 || rcode == 4 || rcode == 5, "rcode {rcode}");
    }
    still_serves(&proxy).await;
    assert_eq!(up.log().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_garbage_closes_only_that_connection() {
    let (_up, proxy) = proxy_with_www().await;
    // A healthy connection open across the garbage.
    let mut healthy = TcpStream::connect(proxy.tcp).await.unwrap();

    let mut http = TcpStream::connect(proxy.tcp).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut http, Duration::from_secs(2)).await);

    let mut oversized = TcpStream::connect(proxy.tcp).await.unwrap();
    oversized.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    assert!(closed_by_server(&mut oversized, Duration::from_secs(2)).await);

    let mut tiny = TcpStream::connect(proxy.tcp).await.unwrap();
    tiny.write_all(&[0, 0]).await.unwrap();
    assert!(closed_by_server(&mut tiny, Duration::from_secs(2)).await);

    // A frame cut short by the client closing its side.
    let mut cut = TcpStream::connect(proxy.tcp).await.unwrap();
    cut.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
    cut.shutdown().await.unwrap();
    assert!(closed_by_server(&mut cut, Duration::from_secs(2)).await);

    // A frame of junk of the right size: FORMERR, connection kept.
    let mut junky = TcpStream::connect(proxy.tcp).await.unwrap();
    let mut frame = junk(7, 30);
    frame[2] &= 0x07; // QR=0, opcode QUERY
    write_tcp(&mut junky, &frame).await;
    let reply = read_tcp(&mut junky).await.unwrap();
    assert_eq!(reply.response_code, ResponseCode::FormErr);
    write_tcp(
        &mut junky,
        &query("www.example.com.", RecordType::A, None)
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(read_tcp(&mut junky).await.unwrap().answers.len(), 1);

    write_tcp(
        &mut healthy,
        &query("www.example.com.", RecordType::A, None)
            .to_vec()
            .unwrap(),
    )
    .await;
    assert_eq!(read_tcp(&mut healthy).await.unwrap().answers.len(), 1);
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pipelined_queries_are_answered_concurrently() {
    let up = Upstream::start(Mode::Normal).await;
    up.set(
        "slow.example.net",
        RecordType::A,
        Entry {
            answers: vec![a("slow.example.net.", 60, [192, 0, 2, 9])],
            delay: Duration::from_millis(500),
            ..Entry::default()
        },
    );
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a("www.example.com.", 60, [192, 0, 2, 1])],
    );
    up.answer(
        "x.example.net",
        RecordType::A,
        vec![a("x.example.net.", 60, [192, 0, 2, 3])],
    );
    let mut cfg = config(&[up.addr]);
    cfg.upstream_timeout = Duration::from_secs(2);
    let proxy = Proxy::start(cfg, policy(LAN)).await;

    let mut framed = Vec::new();
    for (id, name) in [
        (1u16, "slow.example.net."),
        (2, "www.example.com."),
        (3, "x.example.net."),
        (4, "evil.test."),
    ] {
        let mut q = query(name, RecordType::A, None);
        q.metadata.id = id;
        let bytes = q.to_vec().unwrap();
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
    }
    let mut stream = TcpStream::connect(proxy.tcp).await.unwrap();
    let start = Instant::now();
    stream.write_all(&framed).await.unwrap(); // all four in one segment
    let mut order = Vec::new();
    for _ in 0..4 {
        let reply = read_tcp(&mut stream).await.unwrap();
        order.push((reply.id, reply.response_code));
    }
    // The slow one comes last, the others did not wait for it.
    assert_eq!(order.last().unwrap().0, 1);
    let mut ids: Vec<u16> = order.iter().map(|o| o.0).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    assert!(order.contains(&(4, ResponseCode::Refused)));
    assert!(start.elapsed() < Duration::from_millis(1200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors_name_the_address() {
    let (_up, proxy) = proxy_with_www().await;
    let ctx = |listen| ProxyContext {
        config: neuwerk_core::config::DnsConfig {
            listen: vec![listen],
            ..config(&[])
        },
        policy: Default::default(),
        own_addrs: Vec::new(),
        grants: proxy.sink.clone(),
        observer: proxy.observed.clone(),
    };
    // The running proxy's workers share the port (SO_REUSEPORT); a second
    // server, even of the same user, must still be refused.
    let busy = proxy.udp;
    let err = DnsServer::bind(ctx(busy)).await.err().unwrap();
    assert!(matches!(err, DnsError::Bind { addr, transport: Transport::Udp, .. } if addr == busy));
    assert!(err.to_string().contains(&busy.to_string()), "{err}");
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(source.contains("in use"), "{source}");

    let foreign = "192.0.2.1:53".parse().unwrap();
    let err = DnsServer::bind(ctx(foreign)).await.err().unwrap();
    assert!(err.to_string().contains("192.0.2.1:53"), "{err}");

    let mut none = ctx(foreign);
    none.config.listen.clear();
    assert!(matches!(
        DnsServer::bind(none).await,
        Err(DnsError::NoListenAddress)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_serving_and_frees_the_ports() {
    let (up, proxy) = proxy_with_www().await;
    still_serves(&proxy).await;
    let (udp_addr, tcp_addr) = (proxy.udp, proxy.tcp);
    assert_eq!(
        udp_addr.port(),
        tcp_addr.port(),
        "one port for both transports"
    );
    proxy.stop().await.unwrap();
    let mut cfg = config(&[up.addr]);
    cfg.listen = vec![udp_addr];
    let again = Proxy::start(cfg, policy(LAN)).await;
    assert_eq!(again.udp, udp_addr);
    still_serves(&again).await;
}
