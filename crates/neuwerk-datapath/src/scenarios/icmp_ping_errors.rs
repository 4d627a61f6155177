//! Scenario: ICMP errors about a ping. A tracked echo request (key: its id
//! as the source port) is a connection like any other: an error quoting
//! the echo request with that id passes as related; one quoting another id
//! or an echo reply is unrelated. The ping itself is tracked and answered
//! (PassRule, PassReply).

use neuwerk_abi::Reason;

use super::flows::{CLIENT, CLIENT6, PINGED, PINGED6, ROUTER, ROUTER6};
use super::frame::{Packet, ICMP};
use super::{ct_key, Harness, TC_ACT_OK, TC_ACT_SHOT};

const TIME_EXCEEDED: u8 = 11;
const TIME_EXCEEDED6: u8 = 3;
const ID: u16 = 0x1234;

#[test]
fn a_ping_is_tracked_and_answered() {
    let h = Harness::new();
    h.client(&Packet::echo(CLIENT, PINGED, ID).frame())
        .check(TC_ACT_OK, Reason::PassRule);
    assert!(h.tracked(&ct_key(ICMP, CLIENT, ID, PINGED, 0)).is_some());
    h.upstream(&Packet::echo_reply(PINGED, CLIENT, ID).frame())
        .check(TC_ACT_OK, Reason::PassReply);
    h.upstream(&Packet::echo_reply(PINGED, CLIENT, ID + 1).frame())
        .check(TC_ACT_SHOT, Reason::DropUnsolicited);
}

#[test]
fn an_error_quoting_the_tracked_echo_passes() {
    let h = Harness::new();
    let echo = Packet::echo(CLIENT, PINGED, ID);
    h.client(&echo.frame()).check(TC_ACT_OK, Reason::PassRule);
    let error = Packet::error(ROUTER, CLIENT, TIME_EXCEEDED, 0, &echo.router_quote());
    h.upstream(&error.frame())
        .check(TC_ACT_OK, Reason::PassRelated);
}

#[test]
fn an_error_quoting_another_echo_is_unrelated() {
    let h = Harness::new();
    h.client(&Packet::echo(CLIENT, PINGED, ID).frame())
        .check(TC_ACT_OK, Reason::PassRule);
    let other = Packet::echo(CLIENT, PINGED, ID + 1).router_quote();
    h.upstream(&Packet::error(ROUTER, CLIENT, TIME_EXCEEDED, 0, &other).frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
    let reply = Packet::echo_reply(CLIENT, PINGED, ID).router_quote();
    h.upstream(&Packet::error(ROUTER, CLIENT, TIME_EXCEEDED, 0, &reply).frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
}

#[test]
fn an_ipv6_error_quoting_the_tracked_echo_passes() {
    let h = Harness::new();
    let echo = Packet::echo(CLIENT6, PINGED6, ID);
    h.client(&echo.frame()).check(TC_ACT_OK, Reason::PassRule);
    let error = Packet::error(ROUTER6, CLIENT6, TIME_EXCEEDED6, 0, &echo.router_quote());
    h.upstream(&error.frame())
        .check(TC_ACT_OK, Reason::PassRelated);
}
