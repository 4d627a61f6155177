//! Scenario: DNS interception (`dns.intercept`). A client's query to
//! another resolver is rewritten to the listener of its family (the very
//! frame a query to the listener would be, checksums included) and passes
//! as PassDnsIntercept, before any rule; the listener's reply to that
//! socket leaves `nw_to_client` as if from the resolver asked. Queries to
//! the listener itself, replies to other sockets, and everything with
//! interception off are left as they are.

use neuwerk_abi::Reason;

use super::flows::{CLIENT, CLIENT6, OUTSIDE};
use super::frame::{Packet, ACK, SYN};
use super::{Harness, TC_ACT_OK, TC_ACT_SHOT};

const LISTENER: &str = "10.100.1.10";
const LISTENER6: &str = "fd00:100:1::10";
/// Allowed to the clients by a static rule for every port, 53 included.
const RESOLVER: &str = "192.0.2.1";
const RESOLVER6: &str = "2001:db8::1";

/// A query and its reply, over UDP or TCP.
fn query(src: &str, sport: u16, dst: &str, tcp: bool) -> Packet {
    let p = if tcp {
        Packet::tcp(src, sport, dst, 53, SYN)
    } else {
        Packet::udp(src, sport, dst, 53)
    };
    p.payload_len(if tcp { 0 } else { 33 })
}

fn reply(src: &str, dst: &str, dport: u16, tcp: bool) -> Packet {
    let p = if tcp {
        Packet::tcp(src, 53, dst, dport, SYN | ACK)
    } else {
        Packet::udp(src, 53, dst, dport)
    };
    p.payload_len(if tcp { 0 } else { 120 })
}

/// The whole exchange through another resolver, in one family and
/// transport: the query becomes the listener's, its reply the resolver's.
fn exchange(client: &str, listener: &str, resolver: &str, tcp: bool) {
    let h = Harness::intercepting();
    let run = h.client(&query(client, 41000, resolver, tcp).frame());
    run.check(TC_ACT_OK, Reason::PassDnsIntercept);
    assert_eq!(
        run.frame,
        query(client, 41000, listener, tcp).frame(),
        "the query, rewritten to the listener with valid checksums"
    );
    let run = h.to_client(&reply(listener, client, 41000, tcp).frame());
    assert_eq!(run.action, TC_ACT_OK);
    assert_eq!(
        run.frame,
        reply(resolver, client, 41000, tcp).frame(),
        "the reply, from the resolver asked, with valid checksums"
    );
    assert_eq!(h.tracked_count(), 0, "intercepted DNS is never tracked");
}

#[test]
fn udp_over_ipv4_is_answered_as_if_by_the_resolver_asked() {
    exchange(CLIENT, LISTENER, RESOLVER, false);
}

#[test]
fn tcp_over_ipv4_is_answered_as_if_by_the_resolver_asked() {
    exchange(CLIENT, LISTENER, RESOLVER, true);
}

#[test]
fn udp_over_ipv6_is_answered_as_if_by_the_resolver_asked() {
    exchange(CLIENT6, LISTENER6, RESOLVER6, false);
}

#[test]
fn tcp_over_ipv6_is_answered_as_if_by_the_resolver_asked() {
    exchange(CLIENT6, LISTENER6, RESOLVER6, true);
}

#[test]
fn a_udp_query_without_checksum_keeps_none() {
    let h = Harness::intercepting();
    let mut frame = query(CLIENT, 41000, OUTSIDE, false).frame();
    frame[14 + 20 + 6..14 + 20 + 8].fill(0);
    let run = h.client(&frame);
    run.check(TC_ACT_OK, Reason::PassDnsIntercept);
    assert_eq!(&run.frame[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
    assert_eq!(&run.frame[14 + 16..14 + 20], &[10, 100, 1, 10]);
}

#[test]
fn the_listener_itself_is_not_rewritten() {
    let h = Harness::intercepting();
    let frame = query(CLIENT, 41000, LISTENER, false).frame();
    let run = h.client(&frame);
    run.check(TC_ACT_OK, Reason::PassLocalDns);
    assert_eq!(run.frame, frame);
    let answer = reply(LISTENER, CLIENT, 41000, false).frame();
    assert_eq!(
        h.to_client(&answer).frame,
        answer,
        "no socket was intercepted"
    );
}

#[test]
fn only_the_intercepted_socket_gets_its_resolver_back() {
    let h = Harness::intercepting();
    h.client(&query(CLIENT, 41000, RESOLVER, false).frame())
        .check(TC_ACT_OK, Reason::PassDnsIntercept);
    for other in [
        reply(LISTENER, CLIENT, 41001, false),      // another port
        reply(LISTENER, CLIENT, 41000, true),       // another protocol
        Packet::udp(LISTENER, 5353, CLIENT, 41000), // not the listener's port
    ] {
        let frame = other.frame();
        assert_eq!(h.to_client(&frame).frame, frame);
    }
}

#[test]
fn another_port_or_no_source_network_is_not_intercepted() {
    let h = Harness::intercepting();
    // DNS over TLS is traffic like any other: this resolver's rule allows it.
    h.client(&Packet::tcp(CLIENT, 41000, RESOLVER, 853, SYN).frame())
        .check(TC_ACT_OK, Reason::PassRule);
    h.client(&query("10.200.0.5", 41000, RESOLVER, false).frame())
        .check(TC_ACT_SHOT, Reason::DropNoNetwork);
}

#[test]
fn interception_comes_before_the_rules() {
    let h = Harness::intercepting();
    // A static rule allows every port of RESOLVER: still intercepted.
    h.client(&query(CLIENT, 41000, RESOLVER, false).frame())
        .check(TC_ACT_OK, Reason::PassDnsIntercept);
}

#[test]
fn without_interception_dns_is_judged_like_other_traffic() {
    let h = Harness::new();
    let frame = query(CLIENT, 41000, RESOLVER, false).frame();
    let run = h.client(&frame);
    run.check(TC_ACT_OK, Reason::PassRule);
    assert_eq!(run.frame, frame);
    h.client(&query(CLIENT, 41000, OUTSIDE, false).frame())
        .check(TC_ACT_SHOT, Reason::DropPolicy);
    let answer = reply(LISTENER, CLIENT, 41000, false).frame();
    assert_eq!(h.to_client(&answer).frame, answer);
}

#[test]
fn a_port_that_asks_the_listener_is_forgotten() {
    let h = Harness::intercepting();
    h.client(&query(CLIENT, 41000, RESOLVER, false).frame())
        .check(TC_ACT_OK, Reason::PassDnsIntercept);
    // The port, reused by a socket that asks the listener itself.
    h.client(&query(CLIENT, 41000, LISTENER, false).frame())
        .check(TC_ACT_OK, Reason::PassLocalDns);
    let answer = reply(LISTENER, CLIENT, 41000, false).frame();
    assert_eq!(h.to_client(&answer).frame, answer);
}
