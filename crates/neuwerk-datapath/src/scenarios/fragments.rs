//! Scenario: fragments. A first fragment carries the L4 header and is
//! judged like any packet; a non-first fragment carries no ports to judge,
//! so from a client it is dropped (DropFragment, counted in the source's
//! network), and on the upstream side it passes only when not addressed
//! to a client (tc_upstream.c).

use neuwerk_abi::Reason;

use super::flows::{CLIENT, CLIENT6, OUTSIDE, SERVER, SERVER6, UDP_PORT};
use super::frame::Packet;
use super::{Harness, TC_ACT_OK, TC_ACT_SHOT};

#[test]
fn a_first_ipv4_fragment_is_judged_by_its_ports() {
    let h = Harness::new();
    let first = Packet::udp(CLIENT, 40000, SERVER, UDP_PORT)
        .payload_len(1472)
        .fragment(0, true);
    h.client(&first.frame()).check(TC_ACT_OK, Reason::PassRule);
}

#[test]
fn a_non_first_ipv4_fragment_from_a_client_is_dropped() {
    let h = Harness::new();
    let later = Packet::udp(CLIENT, 40000, SERVER, UDP_PORT)
        .payload_len(100)
        .fragment(185, false);
    h.client(&later.frame())
        .check(TC_ACT_SHOT, Reason::DropFragment);
    assert_eq!(h.tracked_count(), 0);
}

/// lib/verdict.h: client-side fragments count in their source's network.
#[test]
fn a_non_first_ipv4_fragment_counts_in_its_network() {
    let h = Harness::new();
    let later = Packet::udp(CLIENT, 40000, SERVER, UDP_PORT).fragment(185, false);
    h.client(&later.frame())
        .check(TC_ACT_SHOT, Reason::DropFragment);
    let dropped: u64 = ["tcp", "udp", "icmp", "other"]
        .iter()
        .map(|p| h.net_stats(Some("clients"), p).dropped)
        .sum();
    assert_eq!(dropped, 1, "counted in network clients");
}

#[test]
fn a_non_first_ipv4_fragment_to_a_client_is_dropped_upstream() {
    let h = Harness::new();
    let to_client = Packet::udp(SERVER, UDP_PORT, CLIENT, 40000).fragment(185, false);
    h.upstream(&to_client.frame())
        .check(TC_ACT_SHOT, Reason::DropFragment);
    let to_node = Packet::udp(SERVER, UDP_PORT, OUTSIDE, 40000).fragment(185, false);
    h.upstream(&to_node.frame())
        .check(TC_ACT_OK, Reason::PassNotClient);
}

#[test]
fn ipv6_fragments_first_judged_later_dropped() {
    let h = Harness::new();
    let flow = Packet::udp(CLIENT6, 40000, SERVER6, UDP_PORT).payload_len(100);
    h.client(&flow.clone().fragment(0, true).frame())
        .check(TC_ACT_OK, Reason::PassRule);
    h.client(&flow.clone().fragment(181, false).frame())
        .check(TC_ACT_SHOT, Reason::DropFragment);
    let reply = Packet::udp(SERVER6, UDP_PORT, CLIENT6, 40000).fragment(181, false);
    h.upstream(&reply.frame())
        .check(TC_ACT_SHOT, Reason::DropFragment);
    let dropped =
        h.net_stats(Some("clients"), "other").dropped + h.net_stats(Some("clients"), "udp").dropped;
    assert_eq!(dropped, 2, "both fragments count in network clients");
}
