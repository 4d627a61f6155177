//! Scenario: an ICMP error used as a tunnel. An error's payload is
//! free-form, so one that merely quotes a tracked connection could carry
//! anything to anyone. With one tracked UDP flow client 10.100.1.20:40000
//! -> 203.0.113.5:53000, an error quoting that flow is dropped when it is
//! addressed to anyone but the quoted packet's sender: (a) a client's
//! error quoting the reply but sent to an arbitrary host, (b) an outside
//! host's error quoting the request but sent to another client.

use neuwerk_abi::Reason;

use super::flows::{UdpFlow, CLIENT, OTHER_CLIENT, OUTSIDE, SERVER};
use super::frame::Packet;
use super::{Harness, Run, TC_ACT_OK, TC_ACT_SHOT};

const DEST_UNREACH: u8 = 3;
const PORT_UNREACH: u8 = 3;

/// Dropped, as an ICMP error (whichever of its checks refused it first).
#[track_caller]
fn dropped_as_icmp(run: &Run) {
    assert_eq!(run.action, TC_ACT_SHOT, "{run:?}");
    let r = run.reason();
    assert!(
        matches!(r, Reason::DropIcmpUnrelated | Reason::DropIcmpSize),
        "{r:?}"
    );
}

#[test]
fn a_client_cannot_send_an_error_to_an_arbitrary_host() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    let quote = flow.reply().payload_len(1400).ip();
    let tunnel = Packet::error(CLIENT, OUTSIDE, DEST_UNREACH, PORT_UNREACH, &quote);
    dropped_as_icmp(&h.client(&tunnel.frame()));
    // Small enough to pass the size check: refused for its address alone.
    let quote = flow.reply().payload_len(100).ip();
    let tunnel = Packet::error(CLIENT, OUTSIDE, DEST_UNREACH, PORT_UNREACH, &quote);
    h.client(&tunnel.frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
    // The same error to the server, the reply's sender, passes.
    let error = Packet::error(CLIENT, SERVER, DEST_UNREACH, PORT_UNREACH, &quote);
    h.client(&error.frame())
        .check(TC_ACT_OK, Reason::PassRelated);
}

#[test]
fn an_outside_host_cannot_send_an_error_to_another_client() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    let quote = flow.request().payload_len(1400).ip();
    let tunnel = Packet::error(OUTSIDE, OTHER_CLIENT, DEST_UNREACH, PORT_UNREACH, &quote);
    dropped_as_icmp(&h.upstream(&tunnel.frame()));
    let quote = flow.request().payload_len(100).ip();
    let tunnel = Packet::error(OUTSIDE, OTHER_CLIENT, DEST_UNREACH, PORT_UNREACH, &quote);
    h.upstream(&tunnel.frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
    let error = Packet::error(OUTSIDE, CLIENT, DEST_UNREACH, PORT_UNREACH, &quote);
    h.upstream(&error.frame())
        .check(TC_ACT_OK, Reason::PassRelated);
}

#[test]
fn an_error_quoting_a_made_up_flow_carries_nothing() {
    let h = Harness::new();
    UdpFlow::v4(&h, 40000);
    // The client's address and the server's, ports of no connection.
    let quote = Packet::udp(SERVER, 1, CLIENT, 2).payload_len(200).ip();
    h.client(&Packet::error(CLIENT, SERVER, DEST_UNREACH, PORT_UNREACH, &quote).frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
    assert_eq!(h.counter(Reason::PassRelated), 0);
}
