//! Self-test of the test environment, with NO neuwerk running: the
//! neuwerk namespace is a plain router, so everything must be reachable.
//! This proves that the "blocked" checks of the other suites can only pass
//! because of the firewall.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use neuwerk_integration::client::{ALLOWED, BLOCKED};
use neuwerk_integration::dns_client::{self, addresses, rcode};
use neuwerk_integration::http_mock::HTTP_PORTS;
use neuwerk_integration::netns::list_namespaces;
use neuwerk_integration::topology::*;
use neuwerk_integration::zone::{big_addr, BIG_RECORDS};
use neuwerk_integration::{DnsOpts, MockRecord, Netns, Topology, Transport};

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

#[test]
fn plain_forwarding_reaches_http_and_echo_v4_v6() {
    let topo = Topology::new();
    let c = topo.client();
    for dst in [
        IpAddr::V4(DEST_V4),
        IpAddr::V6(DEST_V6),
        IpAddr::V4(DEST2_V4),
        IpAddr::V6(DEST2_V6),
    ] {
        for port in HTTP_PORTS {
            let body = c.http_get(sa(dst, port), ALLOWED).unwrap();
            assert_eq!(body, format!("ok {port}"));
        }
        let echo = c.udp_echo(sa(dst, 5353), b"ping", ALLOWED).unwrap();
        assert_eq!(echo, b"ping");
    }
    // The big.example.com range and new.example.com are hosted too.
    assert_eq!(
        c.http_get(sa(big_addr(BIG_RECORDS), 443), ALLOWED).unwrap(),
        "ok 443"
    );
    assert_eq!(
        c.http_get(sa([198, 51, 100, 200], 443), ALLOWED).unwrap(),
        "ok 443"
    );
    // The mock saw the client's real address (routed, not NATed).
    assert!(topo
        .http()
        .accepted()
        .iter()
        .any(|(l, p)| *l == sa(DEST_V4, 443) && p.ip() == IpAddr::V4(CLIENT_V4)));

    // Keep-alive connection: two requests on one socket.
    let mut conn = c.http_connect(sa(DEST_V4, 8443), ALLOWED).unwrap();
    assert_eq!(conn.get(ALLOWED).unwrap(), "ok 8443");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(conn.get(ALLOWED).unwrap(), "ok 8443");

    // Latency helper works and collects every sample.
    let rtts = c.udp_echo_rtts(sa(DEST_V4, 5353), 50, ALLOWED).unwrap();
    assert_eq!(rtts.len(), 50);
}

#[test]
fn mock_dns_answers_directly() {
    let topo = Topology::new();
    let c = topo.client();
    let dns = topo.dns();

    for server in [UPSTREAM_DNS_V4, UPSTREAM_DNS_V6, OTHER_DNS_V4] {
        for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
            let a = c
                .resolve_with(server, "Example.COM", RecordType::A, opts)
                .unwrap();
            assert_eq!(a, vec![IpAddr::V4(DEST_V4)]);
        }
    }
    let log = dns.queries_for("example.com");
    assert_eq!(log.len(), 6, "{log:?}");
    assert!(log
        .iter()
        .any(|q| q.server == OTHER_DNS_V4 && q.transport == Transport::Tcp));
    assert!(log
        .iter()
        .any(|q| q.server == UPSTREAM_DNS_V6 && q.client.ip() == IpAddr::V6(CLIENT_V6)));

    assert_eq!(
        c.resolve_aaaa(UPSTREAM_DNS_V4, "v6.example.com").unwrap(),
        vec![IpAddr::V6(DEST_V6)]
    );
    // CNAME chain: two CNAMEs then the A record.
    let m = c
        .dns_query(
            UPSTREAM_DNS_V4,
            "alias.example.com",
            RecordType::A,
            DnsOpts::udp(),
        )
        .unwrap();
    assert_eq!(m.answers.len(), 3, "{m:?}");
    assert!(matches!(m.answers[0].data, RData::CNAME(_)));
    assert_eq!(addresses(&m), vec![IpAddr::V4(DEST2_V4)]);
    // Wildcard owner.
    assert_eq!(
        c.resolve(UPSTREAM_DNS_V4, "x.y.wild.example.com").unwrap(),
        vec![IpAddr::V4(DEST_V4)]
    );
    // Unknown name.
    let m = c
        .dns_query(
            UPSTREAM_DNS_V4,
            "nope.example.com",
            RecordType::A,
            DnsOpts::udp(),
        )
        .unwrap();
    assert_eq!(rcode(&m), ResponseCode::NXDomain);

    // Truncation: UDP gets TC and no records, TCP gets all 100.
    let m = c
        .dns_query(
            UPSTREAM_DNS_V4,
            "big.example.com",
            RecordType::A,
            DnsOpts::udp().edns(4096),
        )
        .unwrap();
    assert!(m.metadata.truncation && m.answers.is_empty(), "{m:?}");
    let all = c
        .resolve_with(
            UPSTREAM_DNS_V4,
            "big.example.com",
            RecordType::A,
            DnsOpts::tcp(),
        )
        .unwrap();
    assert_eq!(all.len(), BIG_RECORDS as usize);
    assert_eq!(all.last(), Some(&IpAddr::V4(big_addr(BIG_RECORDS))));

    // Failure modes.
    let m = c
        .dns_query(
            UPSTREAM_DNS_V4,
            "fail.example.com",
            RecordType::A,
            DnsOpts::udp(),
        )
        .unwrap();
    assert_eq!(rcode(&m), ResponseCode::ServFail);
    let err = c.dns_query(
        UPSTREAM_DNS_V4,
        "timeout.example.com",
        RecordType::A,
        DnsOpts::udp().timeout(BLOCKED),
    );
    assert!(err.is_err(), "timeout.example.com must not be answered");
    assert_eq!(dns.queries_for("timeout.example.com").len(), 1);

    // Runtime changes, size-based truncation, and delay.
    dns.set_records(
        "many.example.com",
        (1..=60).map(|i| MockRecord::A(big_addr(i), 30)).collect(),
    );
    let m = c
        .dns_query(
            UPSTREAM_DNS_V4,
            "many.example.com",
            RecordType::A,
            DnsOpts::udp(),
        )
        .unwrap();
    assert!(m.metadata.truncation, "60 records exceed 512 bytes: {m:?}");
    let m = c
        .dns_query(
            UPSTREAM_DNS_V4,
            "many.example.com",
            RecordType::A,
            DnsOpts::udp().edns(4096),
        )
        .unwrap();
    assert_eq!(addresses(&m).len(), 60);
    assert_eq!(m.answers[0].ttl, 30);
    dns.set_delay(Some("example.com"), Duration::from_millis(300));
    let start = Instant::now();
    c.resolve(UPSTREAM_DNS_V4, "example.com").unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    dns.clear_log();
    assert!(dns.queries().is_empty());
}

#[test]
fn mock_dns_survives_a_burst_of_500_queries() {
    let topo = Topology::new();
    for i in 0..500u32 {
        let ip = std::net::Ipv4Addr::from(0xac10_0000 + i);
        topo.dns()
            .set_records(&format!("n{i}.load.test"), vec![MockRecord::A(ip, 300)]);
    }
    let failures: Vec<String> = topo.client().block_on(|| async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..500u32 {
            set.spawn(async move {
                let name = format!("n{i}.load.test");
                let m =
                    dns_client::query(UPSTREAM_DNS_V4, &name, RecordType::A, DnsOpts::udp()).await;
                let want = vec![IpAddr::V4(std::net::Ipv4Addr::from(0xac10_0000 + i))];
                match m.and_then(|m| dns_client::expect_addresses(&m)) {
                    Ok(a) if a == want => None,
                    other => Some(format!("{name}: {other:?}")),
                }
            });
        }
        set.join_all().await.into_iter().flatten().collect()
    });
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(topo.dns().queries().len(), 500);
}

#[test]
fn upstream_reaches_client_listener_without_firewall() {
    let topo = Topology::new();
    let listen = [sa(CLIENT_V4, 9000), sa(CLIENT_V6, 9000)];
    let probe = topo.client().start_probe_server(&listen).unwrap();
    for addr in listen {
        assert!(topo.upstream().can_connect(addr, ALLOWED), "{addr}");
        assert_eq!(topo.upstream().udp_echo(addr, b"x", ALLOWED).unwrap(), b"x");
    }
    assert_eq!(probe.tcp_accepted(), 2);
    assert_eq!(probe.udp_received(), 2);
}

#[test]
fn cleanup_leaves_no_namespaces() {
    let names: Vec<String> = {
        let topo = Topology::new();
        let names = [topo.client_ns(), topo.firewall_ns(), topo.upstream_ns()]
            .iter()
            .map(|n| n.name().to_owned())
            .collect::<Vec<_>>();
        let listed = list_namespaces();
        assert!(
            names.iter().all(|n| listed.contains(n)),
            "{names:?} not in {listed:?}"
        );
        names
    };
    let listed = list_namespaces();
    assert!(
        names.iter().all(|n| !listed.contains(n)),
        "left behind: {listed:?}"
    );

    // Also on panic.
    let name = std::panic::catch_unwind(|| {
        let ns = Netns::new("panic");
        let name = ns.name().to_owned();
        assert!(list_namespaces().contains(&name));
        std::panic::panic_any(name);
    })
    .unwrap_err();
    let name = name.downcast_ref::<String>().unwrap();
    assert!(!list_namespaces().contains(name), "{name} left behind");
}

#[test]
fn parallel_topologies_do_not_collide() {
    let names: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                s.spawn(move || {
                    let topo = Topology::new();
                    let c = topo.client();
                    assert_eq!(c.http_get(sa(DEST_V4, 443), ALLOWED).unwrap(), "ok 443");
                    assert_eq!(c.http_get(sa(DEST_V6, 443), ALLOWED).unwrap(), "ok 443");
                    let name = format!("t{i}.wild.example.com");
                    c.resolve(UPSTREAM_DNS_V4, &name).unwrap();
                    // Each topology has its own mock: it saw only its own query.
                    let seen: Vec<_> = topo.dns().queries().into_iter().map(|q| q.name).collect();
                    assert_eq!(seen, vec![name]);
                    [topo.client_ns(), topo.firewall_ns(), topo.upstream_ns()]
                        .iter()
                        .map(|n| n.name().to_owned())
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<String> = names.concat();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "namespace names collided");
}
