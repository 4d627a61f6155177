//! Hostname rules (`policy-dns-only.yaml`): resolving an allowed name
//! through neuwerk grants its addresses; denied names are refused and never
//! forwarded; wildcards, CNAME chains, AAAA, DNS over TCP, truncation and
//! upstream failures.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use neuwerk_integration::checks::*;
use neuwerk_integration::client::{ALLOWED, FIRST_PACKET};
use neuwerk_integration::dns_client::{addresses, rcode};
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::zone::{big_addr, big_addrs, BIG_RECORDS};
use neuwerk_integration::{DenyResponse, DnsOpts, Neuwerk, NeuwerkConfig, Topology, Transport};

fn dns_only(topo: &Topology) -> Neuwerk<'_> {
    Neuwerk::start(topo, &fixture("policy-dns-only.yaml"))
}

#[test]
fn resolve_then_connect_and_not_before() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);

    assert_tcp_blocked(c, sa(DEST_V4, 443));
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    // The grant is in the kernel before the answer: the first SYN passes.
    c.tcp_connect(sa(DEST_V4, 443), FIRST_PACKET)
        .expect("first connection right after the answer");
    assert_http_ok(c, sa(DEST_V4, 443));
    // Only the rule's port.
    assert_tcp_blocked(c, sa(DEST_V4, 80));
    assert!(
        topo.forwarded("example.com") >= 1,
        "{:?}",
        topo.dns().queries()
    );
    // Names match case-insensitively.
    assert_resolves(c, NEUWERK_DNS_V4, "EXAMPLE.Com", &[DEST_V4.into()]);
    nw.stop();
}

#[test]
fn first_udp_datagram_after_answer_passes() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    assert_udp_blocked(c, sa(DEST2_V4, 5353));
    assert_resolves(c, NEUWERK_DNS_V4, "echo.example.com", &[DEST2_V4.into()]);
    let reply = c
        .udp_echo(sa(DEST2_V4, 5353), b"first", FIRST_PACKET)
        .expect("first datagram right after the answer");
    assert_eq!(reply, b"first");
    // The rule is UDP only (the mock serves TCP 5353 as well).
    assert_tcp_blocked(c, sa(DEST2_V4, 5353));
    nw.stop();
}

#[test]
fn single_label_wildcard() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    assert_tcp_blocked(c, sa(DEST_V4, 80));
    assert_resolves(c, NEUWERK_DNS_V4, "a.example.org", &[DEST_V4.into()]);
    assert_http_ok(c, sa(DEST_V4, 80));
    assert_http_ok(c, sa(DEST_V4, 443));
    for name in ["b.a.example.org", "example.org"] {
        assert_rcode(
            c,
            NEUWERK_DNS_V4,
            name,
            RecordType::A,
            ResponseCode::Refused,
        );
        assert_eq!(topo.forwarded(name), 0, "{name} must not be forwarded");
    }
    nw.stop();
}

#[test]
fn any_depth_wildcard() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    assert_tcp_blocked(c, sa(DEST2_V4, 8050));
    for name in ["one.example.net", "deep.x.y.example.net"] {
        assert_resolves(c, NEUWERK_DNS_V4, name, &[DEST2_V4.into()]);
    }
    assert_http_ok(c, sa(DEST2_V4, 8050));
    assert_http_ok(c, sa(DEST2_V4, 8080));
    assert_tcp_blocked(c, sa(DEST2_V4, 443)); // outside 8000-8100
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "example.net",
        RecordType::A,
        ResponseCode::Refused,
    );
    assert_eq!(topo.forwarded("example.net"), 0);
    nw.stop();
}

#[test]
fn denied_name_refused_and_never_forwarded() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    for name in ["denied.example.com", "www.example.com"] {
        for server in [NEUWERK_DNS_V4, NEUWERK_DNS_V6] {
            let m = assert_rcode(c, server, name, RecordType::A, ResponseCode::Refused);
            assert!(addresses(&m).is_empty());
        }
        assert!(
            topo.dns().queries_for(name).is_empty(),
            "{name} reached the upstream"
        );
    }
    // The served address of the denied names stays blocked...
    assert_tcp_blocked(c, sa(DEST2_V4, 443));
    // ...while an allowed name in the same test is forwarded and answered.
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    assert!(topo.forwarded("example.com") >= 1);
    nw.stop();
}

#[test]
fn nxdomain_deny_mode() {
    let topo = Topology::new();
    let c = topo.client();
    let cfg = NeuwerkConfig {
        deny_response: DenyResponse::NxDomain,
        ..NeuwerkConfig::default()
    };
    let nw = Neuwerk::start_with(&topo, &cfg, &fixture("policy-dns-only.yaml"));
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "denied.example.com",
        RecordType::A,
        ResponseCode::NXDomain,
    );
    assert!(topo.dns().queries_for("denied.example.com").is_empty());
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    nw.stop();
}

#[test]
fn cname_chain_grants_final_address() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    assert_tcp_blocked(c, sa(DEST2_V4, 443));
    let m = c
        .dns_query(
            NEUWERK_DNS_V4,
            "alias.example.com",
            RecordType::A,
            DnsOpts::udp(),
        )
        .unwrap();
    assert_eq!(rcode(&m), ResponseCode::NoError);
    let cnames = m
        .answers
        .iter()
        .filter(|r| matches!(r.data, RData::CNAME(_)))
        .count();
    assert_eq!(cnames, 2, "{m:?}");
    assert_eq!(addresses(&m), vec![IpAddr::V4(DEST2_V4)]);
    assert_http_ok(c, sa(DEST2_V4, 443));
    // The chain's target is not allowed by itself.
    assert_rcode(
        c,
        NEUWERK_DNS_V4,
        "edge.cdn.test",
        RecordType::A,
        ResponseCode::Refused,
    );
    nw.stop();
}

#[test]
fn aaaa_answer_grants_ipv6() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    assert_tcp_blocked(c, sa(DEST_V6, 443));
    let got = c.resolve_aaaa(NEUWERK_DNS_V6, "v6.example.com").unwrap();
    assert_eq!(got, vec![IpAddr::V6(DEST_V6)]);
    c.tcp_connect(sa(DEST_V6, 443), FIRST_PACKET)
        .expect("first IPv6 connection right after the answer");
    assert_http_ok(c, sa(DEST_V6, 443));
    assert_tcp_blocked(c, sa(DEST_V6, 80));
    // Dual-stack name over the IPv4 listener: both families granted.
    assert_tcp_blocked(c, sa(DEST_V4, 443));
    assert_resolves(c, NEUWERK_DNS_V4, "dual.example.com", &[DEST_V4.into()]);
    let v6 = c.resolve_aaaa(NEUWERK_DNS_V4, "dual.example.com").unwrap();
    assert_eq!(v6, vec![IpAddr::V6(DEST_V6)]);
    assert_http_ok(c, sa(DEST_V4, 443));
    nw.stop();
}

#[test]
fn dns_over_tcp_answers_and_grants() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    assert_tcp_blocked(c, sa(DEST2_V4, 443));
    for server in [NEUWERK_DNS_V4, NEUWERK_DNS_V6] {
        let got = c
            .resolve_with(server, "tcp.example.com", RecordType::A, DnsOpts::tcp())
            .unwrap();
        assert_eq!(got, vec![IpAddr::V4(DEST2_V4)]);
    }
    assert_http_ok(c, sa(DEST2_V4, 443));
    let m = c
        .dns_query(
            NEUWERK_DNS_V4,
            "denied.example.com",
            RecordType::A,
            DnsOpts::tcp(),
        )
        .unwrap();
    assert_eq!(rcode(&m), ResponseCode::Refused);
    nw.stop();
}

#[test]
fn truncated_answer_retried_over_tcp_and_all_addresses_granted() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    let last = sa(big_addr(BIG_RECORDS), 443);
    assert_tcp_blocked(c, last);

    // Plain UDP query (512-byte limit): TC or the full answer.
    let m = c
        .dns_query(
            NEUWERK_DNS_V4,
            "big.example.com",
            RecordType::A,
            DnsOpts::udp(),
        )
        .unwrap();
    assert_eq!(rcode(&m), ResponseCode::NoError, "{m:?}");
    let addrs = if m.metadata.truncation {
        c.resolve_with(
            NEUWERK_DNS_V4,
            "big.example.com",
            RecordType::A,
            DnsOpts::tcp(),
        )
        .unwrap()
    } else {
        addresses(&m)
    };
    let mut sorted = addrs.clone();
    sorted.sort();
    let mut expected = big_addrs();
    expected.sort();
    assert_eq!(sorted, expected);
    // The upstream truncated over UDP: neuwerk must have retried over TCP.
    assert!(
        topo.dns()
            .queries_for("big.example.com")
            .iter()
            .any(|q| q.transport == Transport::Tcp && q.client.ip() == IpAddr::V4(EGRESS_V4)),
        "no TCP retry by neuwerk: {:?}",
        topo.dns().queries_for("big.example.com")
    );

    // Every one of the 100 addresses is reachable now.
    let failures: Vec<String> = c.block_on(|| async {
        let mut set = tokio::task::JoinSet::new();
        for ip in big_addrs() {
            set.spawn(async move {
                let r = tokio::time::timeout(ALLOWED, tokio::net::TcpStream::connect(sa(ip, 443)))
                    .await;
                match r {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(format!("{ip}: {e}")),
                    Err(_) => Some(format!("{ip}: timeout")),
                }
            });
        }
        set.join_all().await.into_iter().flatten().collect()
    });
    assert!(
        failures.is_empty(),
        "unreachable after resolution: {failures:?}"
    );
    assert_http_ok(c, last);
    nw.stop();
}

#[test]
fn upstream_failure_gives_servfail() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo); // upstream_timeout: 1s
    let opts = DnsOpts::udp().timeout(Duration::from_secs(5));
    for name in ["fail.example.com", "timeout.example.com"] {
        let start = Instant::now();
        let m = c
            .dns_query(NEUWERK_DNS_V4, name, RecordType::A, opts)
            .unwrap_or_else(|e| panic!("no answer for {name}: {e:#}"));
        let took = start.elapsed();
        println!("{name}: {} after {took:?}", rcode(&m));
        assert_eq!(rcode(&m), ResponseCode::ServFail, "{name}: {m:?}");
        assert!(
            took < Duration::from_secs(4),
            "{name}: SERVFAIL took {took:?}"
        );
        assert!(topo.forwarded(name) >= 1, "{name} was not forwarded");
    }
    // Failed answers grant nothing (their records would be 192.0.2.100).
    assert_tcp_blocked(c, sa(DEST_V4, 443));
    // The same upstream still answers other names.
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    nw.stop();
}
