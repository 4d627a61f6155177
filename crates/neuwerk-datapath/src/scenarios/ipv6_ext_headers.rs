//! Scenario: IPv6 extension headers. Hop-by-hop and destination options
//! before the L4 header are walked through, so rules still match on ports;
//! a chain longer than the parser walks is judged without ports, never
//! passed as what it hides.

use neuwerk_abi::Reason;

use super::flows::{CLIENT6, SERVER6};
use super::frame::{Ext, Packet, ACK, ETH_HLEN, SYN};
use super::{Harness, TC_ACT_OK, TC_ACT_SHOT};

#[test]
fn options_before_tcp_are_parsed_through() {
    let h = Harness::new();
    let syn = |dport| {
        Packet::tcp(CLIENT6, 40000, SERVER6, dport, SYN)
            .ext(Ext::HopByHop)
            .ext(Ext::DestOpts)
            .frame()
    };
    h.client(&syn(443)).check(TC_ACT_OK, Reason::PassRule);
    h.client(&syn(444)).check(TC_ACT_SHOT, Reason::DropPolicy);
    let reply = Packet::tcp(SERVER6, 443, CLIENT6, 40000, SYN | ACK).ext(Ext::DestOpts);
    h.upstream(&reply.frame())
        .check(TC_ACT_OK, Reason::PassReply);
}

#[test]
fn a_chain_longer_than_walked_is_not_matched_by_ports() {
    let h = Harness::new();
    let mut p = Packet::tcp(CLIENT6, 40000, SERVER6, 443, SYN);
    for _ in 0..5 {
        p = p.ext(Ext::DestOpts);
    }
    h.client(&p.frame()).check(TC_ACT_SHOT, Reason::DropPolicy);
    assert_eq!(h.tracked_count(), 0);
}

#[test]
fn a_truncated_extension_header_is_malformed() {
    let h = Harness::new();
    let mut f = Packet::tcp(CLIENT6, 40000, SERVER6, 443, SYN)
        .ext(Ext::HopByHop)
        .frame();
    f.truncate(ETH_HLEN + 40 + 2);
    h.client(&f).check(TC_ACT_SHOT, Reason::DropMalformed);
    // Present, but the TCP header after it is cut.
    let mut f = Packet::tcp(CLIENT6, 40000, SERVER6, 443, SYN)
        .ext(Ext::HopByHop)
        .frame();
    f.truncate(ETH_HLEN + 40 + 8 + 10);
    h.client(&f).check(TC_ACT_SHOT, Reason::DropMalformed);
}
