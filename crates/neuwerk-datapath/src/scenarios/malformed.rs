//! Scenario: frames the parser cannot judge. Truncated headers are dropped
//! on both sides (DropMalformed); on the client side an ethertype other
//! than IPv4, IPv6 and ARP is dropped (DropEthertype: no bypass through
//! other protocols), while ARP and, on the upstream side, other ethertypes
//! pass (PassNonIp).

use neuwerk_abi::Reason;

use super::flows::{CLIENT, CLIENT6, PINGED, SERVER, SERVER6, UDP_PORT, WEB};
use super::frame::{ethernet, Packet, ETH_HLEN, ETH_P_ARP, SYN};
use super::{Harness, TC_ACT_OK, TC_ACT_SHOT};

/// A local experimental ethertype.
const ETH_P_OTHER: u16 = 0x88b5;

/// An ARP request, as far as the programs look at it.
fn arp() -> Vec<u8> {
    ethernet(ETH_P_ARP, &[0, 1, 8, 0, 6, 4, 0, 1])
}

// The kernel runs no frame shorter than its ethertype's IP header
// (BPF_PROG_TEST_RUN refuses it), so the cuts here are past that header.
#[test]
fn truncated_headers_are_malformed() {
    let h = Harness::new();
    let cut = |frame: Vec<u8>, len: usize| frame[..len].to_vec();
    let tcp = Packet::tcp(CLIENT, 40000, WEB, 443, SYN).frame();
    let udp6 = Packet::udp(CLIENT6, 40000, SERVER6, UDP_PORT).frame();
    let icmp = Packet::echo(CLIENT, PINGED, 1).frame();
    let frames = [
        cut(tcp, ETH_HLEN + 20 + 10),
        cut(udp6, ETH_HLEN + 40 + 4),
        cut(icmp, ETH_HLEN + 20 + 4),
    ];
    for f in &frames {
        h.client(f).check(TC_ACT_SHOT, Reason::DropMalformed);
    }
    let reply = Packet::udp(SERVER, UDP_PORT, CLIENT, 40000).frame();
    h.upstream(&cut(reply, ETH_HLEN + 20 + 4))
        .check(TC_ACT_SHOT, Reason::DropMalformed);
    assert_eq!(h.tracked_count(), 0);
}

#[test]
fn inconsistent_ipv4_headers_are_malformed() {
    let h = Harness::new();
    let syn = Packet::tcp(CLIENT, 40000, WEB, 443, SYN).frame();
    let with_first = |b: u8| {
        let mut f = syn.clone();
        f[ETH_HLEN] = b;
        f
    };
    // IHL 4 (less than a header), IHL 15 (options past the end), version 6.
    for f in [with_first(0x44), with_first(0x4f), with_first(0x65)] {
        h.client(&f).check(TC_ACT_SHOT, Reason::DropMalformed);
    }
    h.upstream(&with_first(0x44))
        .check(TC_ACT_SHOT, Reason::DropMalformed);
}

#[test]
fn other_ethertypes_are_dropped_from_clients() {
    let h = Harness::new();
    h.client(&ethernet(ETH_P_OTHER, &[0; 46]))
        .check(TC_ACT_SHOT, Reason::DropEthertype);
    h.client(&arp()).check(TC_ACT_OK, Reason::PassNonIp);
}

#[test]
fn other_ethertypes_pass_upstream() {
    let h = Harness::new();
    h.upstream(&ethernet(ETH_P_OTHER, &[0; 46]))
        .check(TC_ACT_OK, Reason::PassNonIp);
    h.upstream(&arp()).check(TC_ACT_OK, Reason::PassNonIp);
}
