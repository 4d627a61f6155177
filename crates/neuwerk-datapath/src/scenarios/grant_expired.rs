//! Scenario: DNS-learned grants. A live grant passes a new connection
//! (PassGrant) and tracks it as opened by a grant; a grant whose deadline
//! (CLOCK_MONOTONIC) has passed allows nothing; a connection a grant opened
//! outlives it.

use neuwerk_abi::{self as abi, Reason};

use super::flows::{CLIENT, OUTSIDE};
use super::frame::{Packet, ACK, SYN, TCP};
use super::{ct_key, now_ns, tcp_port, Harness, TC_ACT_OK, TC_ACT_SHOT};

const MINUTE_NS: u64 = 60_000_000_000;

#[test]
fn a_live_grant_passes_and_tracks() {
    let h = Harness::new();
    h.grant("clients", OUTSIDE, &tcp_port(443), now_ns() + MINUTE_NS);
    h.client(&Packet::tcp(CLIENT, 40000, OUTSIDE, 443, SYN).frame())
        .check(TC_ACT_OK, Reason::PassGrant);
    let entry = h
        .tracked(&ct_key(TCP, CLIENT, 40000, OUTSIDE, 443))
        .expect("the grant's connection is tracked");
    assert_eq!(entry.flags & abi::CT_GRANT, abi::CT_GRANT);
    assert_ne!(entry.name_id, 0, "the grant's name is recorded");
}

#[test]
fn a_grant_allows_only_its_ports() {
    let h = Harness::new();
    h.grant("clients", OUTSIDE, &tcp_port(443), now_ns() + MINUTE_NS);
    h.client(&Packet::tcp(CLIENT, 40000, OUTSIDE, 8443, SYN).frame())
        .check(TC_ACT_SHOT, Reason::DropPolicy);
    h.client(&Packet::udp(CLIENT, 40000, OUTSIDE, 443).frame())
        .check(TC_ACT_SHOT, Reason::DropPolicy);
    assert_eq!(h.tracked_count(), 0);
}

#[test]
fn an_expired_grant_drops() {
    let h = Harness::new();
    h.grant("clients", OUTSIDE, &tcp_port(443), now_ns() - 1_000_000_000);
    h.client(&Packet::tcp(CLIENT, 40000, OUTSIDE, 443, SYN).frame())
        .check(TC_ACT_SHOT, Reason::DropPolicy);
    assert_eq!(h.tracked_count(), 0);
}

#[test]
fn a_connection_outlives_its_grant() {
    let h = Harness::new();
    h.grant("clients", OUTSIDE, &tcp_port(443), now_ns() + MINUTE_NS);
    h.client(&Packet::tcp(CLIENT, 40000, OUTSIDE, 443, SYN).frame())
        .check(TC_ACT_OK, Reason::PassGrant);
    h.grant("clients", OUTSIDE, &tcp_port(443), now_ns() - 1);
    h.client(&Packet::tcp(CLIENT, 40000, OUTSIDE, 443, ACK).frame())
        .check(TC_ACT_OK, Reason::PassCt);
    h.client(&Packet::tcp(CLIENT, 40001, OUTSIDE, 443, SYN).frame())
        .check(TC_ACT_SHOT, Reason::DropPolicy);
}
