//! Scenario: what no rule allows. A client's packet that no rule or grant
//! allows is dropped (DropPolicy) and leaves no conntrack entry; a source in
//! no network is dropped (DropNoNetwork); on the upstream side, a packet to
//! a client that answers no tracked connection is unsolicited, and one not
//! addressed to a client goes to the node's stack (PassNotClient). A
//! network that audits passes and reports both instead (PassAudit).

use neuwerk_abi::{self as abi, Reason};

use super::flows::{CLIENT, OUTSIDE, SERVER, STRANGER, UDP_PORT, WEB};
use super::frame::{Packet, ACK, SYN, TCP};
use super::{ct_key, Harness, TC_ACT_OK, TC_ACT_SHOT};

#[test]
fn no_rule_drops_and_tracks_nothing() {
    let h = Harness::new();
    h.client(&Packet::tcp(CLIENT, 40000, OUTSIDE, 443, SYN).frame())
        .check(TC_ACT_SHOT, Reason::DropPolicy);
    // The right address on the wrong port, and the right port on the
    // wrong protocol.
    h.client(&Packet::tcp(CLIENT, 40000, WEB, 444, SYN).frame())
        .check(TC_ACT_SHOT, Reason::DropPolicy);
    h.client(&Packet::udp(CLIENT, 40000, WEB, 443).frame())
        .check(TC_ACT_SHOT, Reason::DropPolicy);
    assert_eq!(h.tracked_count(), 0);
    assert_eq!(h.net_stats(Some("clients"), "tcp").dropped, 2);
    assert_eq!(h.net_stats(Some("clients"), "udp").dropped, 1);
}

#[test]
fn a_source_in_no_network_is_dropped() {
    let h = Harness::new();
    h.client(&Packet::tcp(STRANGER, 40000, WEB, 443, SYN).frame())
        .check(TC_ACT_SHOT, Reason::DropNoNetwork);
    assert_eq!(h.tracked_count(), 0);
    assert_eq!(h.net_stats(None, "tcp").dropped, 1);
}

#[test]
fn unsolicited_packets_to_a_client_are_dropped() {
    let h = Harness::new();
    h.upstream(&Packet::tcp(WEB, 443, CLIENT, 40000, SYN).frame())
        .check(TC_ACT_SHOT, Reason::DropUnsolicited);
    h.upstream(&Packet::udp(SERVER, UDP_PORT, CLIENT, 40000).frame())
        .check(TC_ACT_SHOT, Reason::DropUnsolicited);
    h.upstream(&Packet::echo(OUTSIDE, CLIENT, 7).frame())
        .check(TC_ACT_SHOT, Reason::DropUnsolicited);
    assert_eq!(h.tracked_count(), 0, "nothing from upstream is tracked");
    assert_eq!(h.net_stats(Some("clients"), "tcp").dropped, 1);
}

#[test]
fn a_reply_before_its_request_is_unsolicited() {
    let h = Harness::new();
    let reply = Packet::tcp(WEB, 443, CLIENT, 40000, SYN | ACK).frame();
    h.upstream(&reply)
        .check(TC_ACT_SHOT, Reason::DropUnsolicited);
    h.client(&Packet::tcp(CLIENT, 40000, WEB, 443, SYN).frame())
        .check(TC_ACT_OK, Reason::PassRule);
    h.upstream(&reply).check(TC_ACT_OK, Reason::PassReply);
}

#[test]
fn traffic_not_for_a_client_goes_to_the_node() {
    let h = Harness::new();
    h.upstream(&Packet::tcp(WEB, 443, OUTSIDE, 40000, SYN).frame())
        .check(TC_ACT_OK, Reason::PassNotClient);
}

#[test]
fn an_auditing_network_passes_what_it_would_drop() {
    let h = Harness::with_policy(
        "networks:\n  - name: clients\n    cidr: 10.100.1.0/24\n    mode: audit\n",
    );
    h.client(&Packet::tcp(CLIENT, 40000, OUTSIDE, 443, SYN).frame())
        .check(TC_ACT_OK, Reason::PassAudit);
    let entry = h
        .tracked(&ct_key(TCP, CLIENT, 40000, OUTSIDE, 443))
        .expect("tracked, so that its replies pass");
    assert_eq!(entry.flags & abi::CT_AUDIT, abi::CT_AUDIT);
    h.upstream(&Packet::tcp(OUTSIDE, 443, CLIENT, 40000, SYN | ACK).frame())
        .check(TC_ACT_OK, Reason::PassReply);
    h.upstream(&Packet::tcp(OUTSIDE, 443, CLIENT, 40001, SYN).frame())
        .check(TC_ACT_OK, Reason::PassAudit);
    assert_eq!(h.net_stats(Some("clients"), "tcp").audit_allowed, 2);
}
