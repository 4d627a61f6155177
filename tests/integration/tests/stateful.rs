//! Connection state: unsolicited traffic from the upstream side to
//! clients is dropped, and clients cannot bypass neuwerk's DNS by asking
//! another resolver unless the policy allows it. Replies to allowed
//! traffic passing is covered by every other suite.

use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::{ALLOWED, BLOCKED};
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::{DnsOpts, Neuwerk, NeuwerkConfig, Topology};

#[test]
fn unsolicited_inbound_to_client_is_dropped() {
    let topo = Topology::new();
    let up = topo.upstream();
    let listen = [sa(CLIENT_V4, 9000), sa(CLIENT_V6, 9000)];
    let probe = topo.client().start_probe_server(&listen).unwrap();

    // Baseline without neuwerk: the upstream reaches the client listener.
    for addr in listen {
        assert!(up.can_connect(addr, ALLOWED), "baseline TCP to {addr}");
        assert_eq!(
            up.udp_echo(addr, b"x", ALLOWED).unwrap(),
            b"x",
            "baseline UDP to {addr}"
        );
    }
    assert_eq!((probe.tcp_accepted(), probe.udp_received()), (2, 2));

    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    for addr in listen {
        assert!(
            !up.can_connect(addr, BLOCKED),
            "unsolicited TCP to {addr} passed"
        );
        assert!(
            up.udp_echo(addr, b"x", BLOCKED).is_err(),
            "unsolicited UDP to {addr} passed"
        );
    }
    assert_eq!(
        (probe.tcp_accepted(), probe.udp_received()),
        (2, 2),
        "the client listener saw unsolicited traffic"
    );
    // The listener itself is alive: reachable from inside the client ns.
    for addr in listen {
        assert!(
            topo.client().can_connect(addr, ALLOWED),
            "local TCP to {addr}"
        );
    }
    // And allowed client-initiated traffic still gets its replies.
    assert_http_ok(topo.client(), sa(DEST_V4, 443));
    assert_udp_ok(topo.client(), sa(DEST_V4, 5353));
    nw.stop();
}

/// `dns.intercept: false`: what neuwerk does with DNS for other resolvers.
fn not_intercepting() -> NeuwerkConfig {
    NeuwerkConfig {
        intercept: Some(false),
        ..NeuwerkConfig::default()
    }
}

/// Without interception, DNS to another resolver is dropped like any
/// traffic no rule allows (tests/dns_intercept.rs: with it).
#[test]
fn dns_to_other_resolver_is_blocked() {
    let topo = Topology::new();
    let c = topo.client();
    // Baseline: the other resolver answers without neuwerk.
    assert_resolves(c, OTHER_DNS_V4, "example.com", &[DEST_V4.into()]);
    topo.dns().clear_log();

    let nw = Neuwerk::start_with(&topo, &not_intercepting(), &fixture("policy-static.yaml"));
    for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
        let r = c.dns_query(
            OTHER_DNS_V4,
            "example.com",
            RecordType::A,
            opts.timeout(BLOCKED),
        );
        assert!(
            r.is_err(),
            "query to the other resolver over {:?} passed: {r:?}",
            opts.transport
        );
    }
    // Also to the upstream resolver itself, which only neuwerk may use.
    let r = c.dns_query(
        UPSTREAM_DNS_V4,
        "example.com",
        RecordType::A,
        DnsOpts::udp().timeout(BLOCKED),
    );
    assert!(r.is_err(), "direct query to the upstream passed");
    assert!(
        topo.dns()
            .queries()
            .iter()
            .all(|q| q.client.ip() != std::net::IpAddr::V4(CLIENT_V4)),
        "a client query reached a resolver: {:?}",
        topo.dns().queries()
    );
    // The same query through neuwerk works.
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    nw.stop();
}

/// Without interception, a static rule may open another resolver.
#[test]
fn dns_to_other_resolver_follows_static_rule() {
    let topo = Topology::new();
    let c = topo.client();
    let policy = "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24]\n    policies:\n      \
                  - ip: 192.0.2.53\n        ports: [53]\n";
    let nw = Neuwerk::start_with(&topo, &not_intercepting(), policy);
    assert_resolves(c, OTHER_DNS_V4, "example.com", &[DEST_V4.into()]);
    let tcp = c
        .resolve_with(OTHER_DNS_V4, "example.com", RecordType::A, DnsOpts::tcp())
        .unwrap();
    assert_eq!(tcp, vec![std::net::IpAddr::V4(DEST_V4)]);
    // Not the upstream resolver: no rule for it.
    let r = c.dns_query(
        UPSTREAM_DNS_V4,
        "example.com",
        RecordType::A,
        DnsOpts::udp().timeout(BLOCKED),
    );
    assert!(r.is_err(), "query to 10.100.2.100 passed without a rule");
    nw.stop();
}
