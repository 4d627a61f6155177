//! Static address rules (`policy-static.yaml`): the allowed address and
//! port pass, a wrong port or another address is dropped, IPv4 and IPv6.
//! Every blocked target is first shown reachable without neuwerk.

use neuwerk_integration::checks::*;
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::{Neuwerk, Topology};

#[test]
fn static_ipv4_allowed_port_passes_others_blocked() {
    let topo = Topology::new();
    let c = topo.client();
    let blocked = [sa(DEST_V4, 80), sa(DEST_V4, 8443), sa(DEST2_V4, 443)];
    for addr in blocked {
        assert_http_ok(c, addr); // baseline: reachable without neuwerk
    }
    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));

    assert_http_ok(c, sa(DEST_V4, 443));
    for addr in blocked {
        assert_tcp_blocked(c, addr);
    }
    // Still allowed after the blocked attempts.
    assert_http_ok(c, sa(DEST_V4, 443));
    nw.stop();
}

#[test]
fn static_ipv6_allowed_port_passes_others_blocked() {
    let topo = Topology::new();
    let c = topo.client();
    let blocked = [sa(DEST_V6, 80), sa(DEST_V6, 8080), sa(DEST2_V6, 443)];
    for addr in blocked {
        assert_http_ok(c, addr);
    }
    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));

    assert_http_ok(c, sa(DEST_V6, 443));
    for addr in blocked {
        assert_tcp_blocked(c, addr);
    }
    nw.stop();
}

#[test]
fn static_udp_rule_passes_udp_only_to_allowed_address() {
    let topo = Topology::new();
    let c = topo.client();
    for addr in [sa(DEST2_V4, 5353), sa(DEST2_V6, 5353)] {
        assert_udp_ok(c, addr);
    }
    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));

    assert_udp_ok(c, sa(DEST_V4, 5353));
    assert_udp_ok(c, sa(DEST_V6, 5353));
    assert_udp_blocked(c, sa(DEST2_V4, 5353));
    assert_udp_blocked(c, sa(DEST2_V6, 5353));
    nw.stop();
}

#[test]
fn tcp_only_rule_does_not_pass_udp() {
    // 192.0.2.100 443 is allowed for TCP only; the mock echoes UDP on 443 too.
    let topo = Topology::new();
    let c = topo.client();
    assert_udp_ok(c, sa(DEST_V4, 443));
    assert_udp_ok(c, sa(DEST_V6, 443));
    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    assert_http_ok(c, sa(DEST_V4, 443));
    assert_udp_blocked(c, sa(DEST_V4, 443));
    assert_udp_blocked(c, sa(DEST_V6, 443));
    nw.stop();
}
