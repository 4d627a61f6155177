//! Scenario: which ICMP errors a path produces. Only these pass, each as an
//! error of the connection it quotes: IPv4 destination unreachable (3)
//! codes 0-15, time exceeded (11) codes 0-1, parameter problem (12) codes
//! 0-2; IPv6 destination unreachable (1) codes 0-7, packet too big (2) code
//! 0, time exceeded (3) codes 0-1, parameter problem (4) codes 0-3. Any
//! other code of those types is dropped (DropIcmpKind), even when it quotes
//! a tracked connection.

use neuwerk_abi::Reason;

use super::flows::{UdpFlow, CLIENT, SERVER};
use super::frame::Packet;
use super::{Harness, TC_ACT_OK, TC_ACT_SHOT};

const VALID_V4: &[(u8, u8)] = &[(3, 15), (11, 1), (12, 2)];
const VALID_V6: &[(u8, u8)] = &[(1, 7), (2, 0), (3, 1), (4, 3)];

/// Every (type, code) of `valid` (type, highest code), each from a router
/// about a flow of its own (errors per connection are rate-limited).
#[track_caller]
fn each_valid_passes(h: &Harness, valid: &[(u8, u8)], v6: bool) {
    let mut sport = 41000;
    for &(kind, max) in valid {
        for code in 0..=max {
            let flow = if v6 {
                UdpFlow::v6(h, sport)
            } else {
                UdpFlow::v4(h, sport)
            };
            sport += 1;
            let run = h.upstream(&flow.router_error(kind, code).frame());
            assert_eq!(
                (run.action, run.reason()),
                (TC_ACT_OK, Reason::PassRelated),
                "type {kind} code {code}"
            );
        }
    }
}

#[test]
fn every_ipv4_error_a_path_produces_passes() {
    each_valid_passes(&Harness::new(), VALID_V4, false);
}

#[test]
fn every_ipv6_error_a_path_produces_passes() {
    each_valid_passes(&Harness::new(), VALID_V6, true);
}

#[test]
fn other_ipv4_codes_are_dropped() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    for (kind, code) in [(3, 16), (3, 255), (11, 2), (11, 5), (12, 3)] {
        let run = h.upstream(&flow.router_error(kind, code).frame());
        assert_eq!(
            (run.action, run.reason()),
            (TC_ACT_SHOT, Reason::DropIcmpKind),
            "type {kind} code {code}"
        );
    }
    // From a client too.
    let quote = flow.reply().router_quote();
    h.client(&Packet::error(CLIENT, SERVER, 3, 16, &quote).frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpKind);
    assert_eq!(h.counter(Reason::PassRelated), 0);
}

#[test]
fn other_ipv6_codes_are_dropped() {
    let h = Harness::new();
    let flow = UdpFlow::v6(&h, 40000);
    for (kind, code) in [(1, 8), (2, 1), (3, 2), (4, 4)] {
        let run = h.upstream(&flow.router_error(kind, code).frame());
        assert_eq!(
            (run.action, run.reason()),
            (TC_ACT_SHOT, Reason::DropIcmpKind),
            "type {kind} code {code}"
        );
    }
    assert_eq!(h.counter(Reason::PassRelated), 0);
}

#[test]
fn other_icmp_types_are_not_errors_of_a_connection() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    // Redirect and source quench quote a packet too, but are no errors
    // a connection needs: unsolicited like any untracked packet.
    for kind in [5, 4] {
        h.upstream(&flow.router_error(kind, 0).frame())
            .check(TC_ACT_SHOT, Reason::DropUnsolicited);
    }
}
