//! Transparent DNS interception (`dns.intercept`, on by default): DNS from
//! a client to any address on port 53 is answered by neuwerk under the
//! same policy, as if from the address asked; the query never reaches that
//! address. DNS over TLS and HTTPS are not intercepted.
//!
//! With `dns.intercept: false` DNS to another resolver is dropped like any
//! traffic no rule allows: `dns_to_other_resolver_is_blocked` and
//! `dns_to_other_resolver_follows_static_rule` in tests/stateful.rs.

mod setup;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::BLOCKED;
use neuwerk_integration::dns_client::{addresses, rcode, unspecified};
use neuwerk_integration::mgmt::CliStream;
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::{DnsOpts, Neuwerk, Topology};

use setup::*;

#[test]
fn dns_to_another_resolver_is_answered_by_the_policy() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = Neuwerk::start(&topo, &fixture("policy-dns-only.yaml"));
    for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
        for server in [OTHER_DNS_V4, UPSTREAM_DNS_V4] {
            let addrs = c
                .resolve_with(server, "example.com", RecordType::A, opts)
                .unwrap_or_else(|e| panic!("{server} over {:?}: {e:#}", opts.transport));
            assert_eq!(addrs, vec![IpAddr::V4(DEST_V4)]);
            let denied = c
                .dns_query(server, "denied.test", RecordType::A, opts.timeout(BLOCKED))
                .unwrap_or_else(|e| panic!("denied name to {server}: {e:#}"));
            assert_eq!(rcode(&denied), ResponseCode::Refused);
        }
    }
    assert_eq!(
        topo.from_client("example.com"),
        0,
        "{:?}",
        topo.dns().queries()
    );
    assert!(
        topo.dns().queries_for("denied.test").is_empty(),
        "a denied name was forwarded"
    );
    // The grant works as for the listener.
    assert_http_ok(c, sa(DEST_V4, 443));
    nw.stop();
}

/// IPv6: queries from the client's IPv6 address to IPv6 addresses other
/// than neuwerk's listener, one with a resolver and one without, are
/// answered under the policy over UDP and TCP; no resolver sees them.
#[test]
fn ipv6_dns_to_another_address_is_answered_by_the_policy() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    // Nothing is granted yet: the connection below proves the answer's grant.
    assert_tcp_blocked(c, sa(DEST_V6, 443));
    for server in [UPSTREAM_DNS_V6, NO_RESOLVER_V6] {
        assert_answered(
            c,
            server,
            "v6.example.com",
            RecordType::AAAA,
            IpAddr::V6(DEST_V6),
        );
        assert_refused(c, server, "denied.example.com");
    }
    assert_eq!(
        topo.from_client("v6.example.com"),
        0,
        "a client query reached a resolver: {:?}",
        topo.dns().queries()
    );
    assert!(
        topo.forwarded("v6.example.com") >= 1,
        "neuwerk never asked its upstream: {:?}",
        topo.dns().queries()
    );
    assert!(
        topo.dns().queries_for("denied.example.com").is_empty(),
        "a denied name was forwarded"
    );
    assert_http_ok(c, sa(DEST_V6, 443));
    nw.stop();
}

/// Addresses with no resolver at all are answered under the policy.
#[test]
fn dns_to_an_address_without_resolver_is_answered() {
    let topo = Topology::new();
    let c = topo.client();
    // Baseline: nothing answers DNS there, so an answer below is neuwerk's.
    for server in [NO_RESOLVER_V4, UNROUTED_V4] {
        let r = c.dns_query(
            server,
            "example.com",
            RecordType::A,
            DnsOpts::udp().timeout(BLOCKED),
        );
        assert!(r.is_err(), "something answers DNS at {server}: {r:?}");
    }
    let nw = dns_only(&topo);
    for server in [NO_RESOLVER_V4, UNROUTED_V4] {
        assert_answered(c, server, "example.com", RecordType::A, IpAddr::V4(DEST_V4));
        assert_refused(c, server, "denied.example.com");
    }
    assert!(topo.forwarded("example.com") >= 1);
    assert!(topo.dns().queries_for("denied.example.com").is_empty());
    nw.stop();
}

/// The answer's source is the address asked: a socket `connect()`ed to
/// it accepts the answer, and an unconnected one sees it as the sender.
#[test]
fn answer_comes_from_the_address_asked() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    for server in [OTHER_DNS_V4, NO_RESOLVER_V6] {
        for connected in [true, false] {
            let UdpAnswer { answer, from, .. } =
                udp_query(c, unspecified(server), server, connected, "example.com")
                    .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(rcode(&answer), ResponseCode::NoError, "{answer:?}");
            assert_eq!(addresses(&answer), vec![IpAddr::V4(DEST_V4)]);
            assert_eq!(from, server, "the answer's source (connected: {connected})");
        }
    }
    assert_eq!(topo.from_client("example.com"), 0);
    nw.stop();
}

/// A denied name sent to another resolver is refused, never forwarded,
/// and counted and shown like a denied query to the listener.
#[test]
fn denied_name_to_another_resolver_is_refused_counted_and_shown() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    let m = mgmt(&topo);
    let denied = || {
        m.metric(
            "neuwerk_dns_queries",
            &[("network", "clients"), ("result", "denied")],
        )
        .unwrap()
    };
    let mon = CliStream::start(
        topo.firewall_ns(),
        &["monitor", "--api", "http://127.0.0.1:3000"],
    )
    .unwrap();
    // The stream is up once a denial sent to the listener shows.
    let client = CLIENT_V4.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut synced = false;
    while !synced && Instant::now() < deadline {
        let before = denied();
        let m = c
            .dns_query(
                NEUWERK_DNS_V4,
                "denied.example.com",
                RecordType::A,
                DnsOpts::udp(),
            )
            .unwrap();
        assert_eq!(rcode(&m), ResponseCode::Refused);
        assert_eq!(
            denied(),
            before + 1.0,
            "a denial at the listener counts once"
        );
        synced = mon
            .wait_line(
                &["DNS", "DENIED", "clients", &client, "denied.example.com"],
                Duration::from_millis(500),
            )
            .is_some();
    }
    assert!(
        synced,
        "monitor never showed the denied query to the listener"
    );
    let at_listener = log_line(&nw, &["query denied", "name=\"denied.example.com\""])
        .unwrap_or_else(|| panic!("no log of the denial at the listener\n{}", nw.log_tail(20)));

    for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
        let before = denied();
        let r = c
            .dns_query(OTHER_DNS_V4, "www.example.com", RecordType::A, opts)
            .unwrap_or_else(|e| panic!("over {:?}: {e:#}", opts.transport));
        assert_eq!(rcode(&r), ResponseCode::Refused, "{r:?}");
        assert_eq!(
            denied(),
            before + 1.0,
            "an intercepted denial over {:?} counts once, as at the listener",
            opts.transport
        );
        assert!(
            mon.wait_line(
                &["DNS", "DENIED", "clients", &client, "www.example.com"],
                Duration::from_secs(2),
            )
            .is_some(),
            "monitor did not show the intercepted denial over {:?}",
            opts.transport
        );
        // Logged as the listener's denial is, but for the name and transport.
        let transport = format!("transport={:?}", opts.transport);
        let expected = at_listener
            .replace("denied.example.com", "www.example.com")
            .replace("transport=Udp", &transport);
        let logged = log_line(
            &nw,
            &["query denied", "name=\"www.example.com\"", &transport],
        );
        assert_eq!(logged.as_ref(), Some(&expected), "{}", nw.log_tail(20));
    }
    assert!(
        topo.dns().queries_for("www.example.com").is_empty(),
        "a denied name was forwarded: {:?}",
        topo.dns().queries()
    );
    // Nor did the refusal grant the address the name has.
    assert_tcp_blocked(c, sa(DEST2_V4, 443));
    nw.stop();
}

/// DNS over TLS (TCP 853) and over HTTPS (TCP 443) to a resolver's
/// address are not intercepted: blocked unless a rule allows them.
#[test]
fn dns_over_tls_and_https_stay_blocked_unless_a_rule_allows_them() {
    let topo = Topology::new();
    let c = topo.client();
    let dot = sa(OTHER_RESOLVER_V4, 853);
    let doh = sa(OTHER_RESOLVER_V4, 443);
    // The HTTP mock serves 443 on every upstream address; 853 needs its own.
    let probe = topo.upstream().start_probe_server(&[dot]).unwrap();
    // Baseline: both answer, so a failure below is the firewall's.
    probe_hello(c, dot).unwrap_or_else(|e| panic!("baseline: {e:#}"));
    assert_http_ok(c, doh);
    assert_udp_ok(c, dot);
    let (dot_seen, doh_seen, quic_seen) = (
        probe.tcp_accepted(),
        topo.http().accepted_on(doh),
        probe.udp_received(),
    );

    let mut nw = dns_only(&topo);
    assert_tcp_blocked(c, dot);
    assert_tcp_blocked(c, doh);
    // Nor is DNS over QUIC (UDP 853).
    assert_udp_blocked(c, dot);
    assert_eq!(
        probe.tcp_accepted(),
        dot_seen,
        "a DoT connection got through"
    );
    assert_eq!(
        topo.http().accepted_on(doh),
        doh_seen,
        "a DoH connection got through"
    );
    assert_eq!(probe.udp_received(), quic_seen, "UDP 853 got through");

    let with_dot = format!(
        "{}      - ip: 192.0.2.53\n        ports: [853]\n",
        fixture("policy-dns-only.yaml")
    );
    nw.replace_policy(&with_dot, true);
    assert!(
        nw.wait_for_log("policy reloaded", Duration::from_secs(5)),
        "{}",
        nw.log_tail(20)
    );
    probe_hello(c, dot).unwrap_or_else(|e| panic!("the rule for 853 did not open DoT: {e:#}"));
    assert!(probe.tcp_accepted() > dot_seen);
    assert_tcp_blocked(c, doh);
    // Plain DNS to the same address is still intercepted, rule or not.
    assert_answered(
        c,
        OTHER_DNS_V4,
        "example.com",
        RecordType::A,
        IpAddr::V4(DEST_V4),
    );
    assert_eq!(topo.from_client("example.com"), 0);
    nw.stop();
}

/// Every intercepted query packet counts under `pass_dns_intercept`;
/// queries to the listener itself do not.
#[test]
fn intercepted_packets_are_counted() {
    const UDP_QUERIES: usize = 5;
    const TCP_QUERIES: usize = 2;
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    let m = mgmt(&topo);
    let intercepted = || {
        m.metric(
            "neuwerk_packet_reasons",
            &[("reason", "pass_dns_intercept")],
        )
        .unwrap()
    };
    let before = intercepted();
    for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
        let got = c
            .resolve_with(NEUWERK_DNS_V4, "example.com", RecordType::A, opts)
            .unwrap();
        assert_eq!(got, vec![IpAddr::V4(DEST_V4)]);
    }
    assert_eq!(
        intercepted(),
        before,
        "queries to the listener counted as intercepted"
    );
    for _ in 0..UDP_QUERIES {
        assert_resolves(c, OTHER_DNS_V4, "example.com", &[DEST_V4.into()]);
    }
    for _ in 0..TCP_QUERIES {
        let got = c
            .resolve_with(OTHER_DNS_V4, "example.com", RecordType::A, DnsOpts::tcp())
            .unwrap();
        assert_eq!(got, vec![IpAddr::V4(DEST_V4)]);
    }
    // A UDP query is one datagram; a TCP one at least its SYN, the
    // handshake's ACK and the segment carrying the query.
    let sent = UDP_QUERIES + 3 * TCP_QUERIES;
    let moved = intercepted() - before;
    assert!(
        moved >= sent as f64,
        "pass_dns_intercept moved by {moved}, at least {sent} query packets were intercepted"
    );
    nw.stop();
}

/// A client port that once asked another resolver, used again by a new
/// socket (as ephemeral ports are) to ask the listener itself: the answer
/// must come from the listener, or a socket connected to it never gets it.
#[test]
fn reused_port_asking_the_listener_gets_the_listeners_answer() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = dns_only(&topo);
    let mut outcomes = Vec::new();

    let first = udp_query(
        c,
        unspecified(OTHER_DNS_V4),
        OTHER_DNS_V4,
        true,
        "example.com",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(first.from, OTHER_DNS_V4);
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), first.port);
    for connected in [false, true] {
        let got = udp_query(c, local, NEUWERK_DNS_V4, connected, "example.com")
            .map_err(|e| format!("{e:#}"))
            .and_then(|a| {
                if a.from == NEUWERK_DNS_V4 {
                    Ok(())
                } else {
                    Err(format!("answer from {}", a.from))
                }
            });
        let how = if connected {
            "connected"
        } else {
            "unconnected"
        };
        outcomes.push((format!("UDP {how}, port {}", first.port), got));
    }

    let (_, port) =
        tcp_query(c, 0, OTHER_DNS_V4, "example.com").unwrap_or_else(|e| panic!("{e:#}"));
    let got = tcp_query(c, port, NEUWERK_DNS_V4, "example.com")
        .map(drop)
        .map_err(|e| format!("{e:#}"));
    outcomes.push((format!("TCP, port {port}"), got));

    assert!(
        outcomes.iter().all(|(_, got)| got.is_ok()),
        "the listener's answers to a port that asked {OTHER_DNS_V4} before: {outcomes:#?}"
    );
    nw.stop();
}
