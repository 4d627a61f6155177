//! Scenario: the rate of ICMP errors. Errors that pass are limited per
//! tracked connection, at most 16 per second: PMTU discovery and
//! traceroute need a few, a tunnel needs many. The 17th within the same
//! second is dropped (DropIcmpRate); another connection has its own budget.

use neuwerk_abi::{self as abi, Reason};

use super::flows::UdpFlow;
use super::{Harness, TC_ACT_OK, TC_ACT_SHOT};

const PER_SECOND: usize = 16;

/// The reasons of `n` router errors about `flow`, sent at once.
fn burst(h: &Harness, flow: &UdpFlow, n: usize) -> Vec<Reason> {
    let error = flow.router_error(11, 0).frame();
    (0..n).map(|_| h.upstream(&error).reason()).collect()
}

/// Opens a flow (client ports from `sport`) and sends it one error more
/// than its budget; the flow and the reasons of its last attempt.
///
/// A burst takes a few ms; one that straddles the start of a new second
/// sees a fresh budget, so a failed attempt is retried on a new connection
/// (an unlimited rate fails every attempt).
fn spend(h: &Harness, sport: u16) -> (UdpFlow, Vec<Reason>) {
    let mut want = vec![Reason::PassRelated; PER_SECOND];
    want.push(Reason::DropIcmpRate);
    let mut last = None;
    for attempt in 0..3 {
        let flow = UdpFlow::v4(h, sport + attempt);
        let got = burst(h, &flow, PER_SECOND + 1);
        let done = got == want;
        last = Some((flow, got));
        if done {
            break;
        }
    }
    last.unwrap()
}

#[test]
fn the_17th_error_within_a_second_is_dropped() {
    let h = Harness::new();
    let (flow, got) = spend(&h, 40000);
    let mut want = vec![Reason::PassRelated; PER_SECOND];
    want.push(Reason::DropIcmpRate);
    assert_eq!(got, want);
    let after = h.upstream(&flow.router_error(11, 0).frame());
    assert_eq!(after.action, TC_ACT_SHOT, "{after:?}");
}

#[test]
fn each_connection_has_its_own_budget() {
    let h = Harness::new();
    let (_, got) = spend(&h, 40000);
    assert_eq!(got.last(), Some(&Reason::DropIcmpRate), "{got:?}");
    let other = UdpFlow::v4(&h, 41000);
    h.upstream(&other.router_error(11, 0).frame())
        .check(TC_ACT_OK, Reason::PassRelated);
}

#[test]
fn a_budget_spent_in_an_earlier_second_is_renewed() {
    let mut h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    let key = flow.key();
    // Spent long ago: the count of the connection's first window
    // (window << 8 | count, abi::CtValue::icmp_errors).
    let entry = abi::CtValue {
        icmp_errors: PER_SECOND as u32,
        ..h.tracked(&key).unwrap()
    };
    h.track(key, entry);
    h.upstream(&flow.router_error(11, 0).frame())
        .check(TC_ACT_OK, Reason::PassRelated);
}
