//! Scenario: a static rule allows a new connection. Its first packet
//! passes as PassRule and creates a conntrack entry; its next packets pass
//! as tracked (PassCt), its replies on the upstream side as PassReply.

use neuwerk_abi::Reason;

use super::flows::{open_tcp, UdpFlow, CLIENT, CLIENT6, SERVER6, UDP_PORT, WEB};
use super::frame::{Packet, ACK, SYN};
use super::{Harness, TC_ACT_OK};

#[test]
fn a_tcp_connection_is_tracked_both_ways() {
    let h = Harness::new();
    assert_eq!(h.tracked_count(), 0);
    let key = open_tcp(&h, CLIENT, 40000);
    let entry = h.tracked(&key).expect("the SYN creates a conntrack entry");
    assert_eq!(entry.net_id, h.net_id("clients"));
    assert_eq!(entry.flags, 0, "opened by a static rule");

    h.client(&Packet::tcp(CLIENT, 40000, WEB, 443, ACK).frame())
        .check(TC_ACT_OK, Reason::PassCt);
    h.upstream(&Packet::tcp(WEB, 443, CLIENT, 40000, SYN | ACK).frame())
        .check(TC_ACT_OK, Reason::PassReply);
    assert_eq!(h.tracked_count(), 1, "one entry serves both directions");
    let tcp = h.net_stats(Some("clients"), "tcp");
    assert_eq!((tcp.allowed, tcp.dropped), (3, 0));
}

#[test]
fn a_udp_flow_is_tracked_both_ways() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    assert!(h.tracked(&flow.key()).is_some());
    h.client(&flow.request().payload_len(100).frame())
        .check(TC_ACT_OK, Reason::PassCt);
    h.upstream(&flow.reply().payload_len(100).frame())
        .check(TC_ACT_OK, Reason::PassReply);
    assert_eq!(h.net_stats(Some("clients"), "udp").allowed, 3);
}

#[test]
fn an_ipv6_connection_is_tracked_both_ways() {
    let h = Harness::new();
    let key = open_tcp(&h, CLIENT6, 40000);
    assert!(h.tracked(&key).is_some());
    h.upstream(&Packet::tcp(SERVER6, 443, CLIENT6, 40000, SYN | ACK).frame())
        .check(TC_ACT_OK, Reason::PassReply);
    let flow = UdpFlow::v6(&h, 40001);
    h.upstream(&flow.reply().frame())
        .check(TC_ACT_OK, Reason::PassReply);
    assert_eq!(flow.key().dport, UDP_PORT);
}

#[test]
fn a_reply_to_another_port_of_the_client_is_not_the_connection() {
    let h = Harness::new();
    open_tcp(&h, CLIENT, 40000);
    h.upstream(&Packet::tcp(WEB, 443, CLIENT, 40001, SYN | ACK).frame())
        .check(super::TC_ACT_SHOT, Reason::DropUnsolicited);
}
