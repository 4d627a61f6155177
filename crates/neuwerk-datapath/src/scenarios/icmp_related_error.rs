//! Scenario: ICMP errors about a tracked connection (lib/related.h). An
//! error passes (PassRelated) only when it quotes a live tracked connection
//! and is addressed to the quoted packet's sender: on the upstream side the
//! quoted packet went client -> server, so it goes to the client (from any
//! router); on the client side the quoted packet went server -> client, so
//! it goes to the server. Path MTU discovery depends on these.

use neuwerk_abi::{CtValue, Reason};

use super::flows::{UdpFlow, CLIENT, OTHER_CLIENT, ROUTER, SERVER, UDP_PORT};
use super::frame::{Packet, UDP};
use super::{ct_key, now_ns, Harness, TC_ACT_OK, TC_ACT_SHOT};

const DEST_UNREACH: u8 = 3;
const PORT_UNREACH: u8 = 3;
const FRAG_NEEDED: u8 = 4;
const TIME_EXCEEDED: u8 = 11;
const PACKET_TOO_BIG6: u8 = 2;

#[test]
fn a_routers_error_to_the_client_passes_upstream() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    h.upstream(&flow.router_error(TIME_EXCEEDED, 0).frame())
        .check(TC_ACT_OK, Reason::PassRelated);
    let icmp = h.net_stats(Some("clients"), "icmp");
    assert_eq!(
        (icmp.allowed, icmp.dropped),
        (1, 0),
        "counted in the flow's network"
    );
}

#[test]
fn fragmentation_needed_from_a_router_passes_untouched() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    let big = flow.request().payload_len(1472);
    let [a, b] = 1400u16.to_be_bytes();
    let error = Packet::error(
        ROUTER,
        CLIENT,
        DEST_UNREACH,
        FRAG_NEEDED,
        &big.router_quote(),
    )
    .rest([0, 0, a, b])
    .frame();
    let run = h.upstream(&error);
    run.check(TC_ACT_OK, Reason::PassRelated);
    assert_eq!(run.frame, error, "the error leaves as it came");
}

#[test]
fn ipv6_packet_too_big_from_a_router_passes() {
    let h = Harness::new();
    let flow = UdpFlow::v6(&h, 40000);
    let big = flow.request().payload_len(1452);
    let error = Packet::error(
        super::flows::ROUTER6,
        flow.client,
        PACKET_TOO_BIG6,
        0,
        &big.router_quote(),
    )
    .rest(1280u32.to_be_bytes());
    h.upstream(&error.frame())
        .check(TC_ACT_OK, Reason::PassRelated);
}

#[test]
fn a_clients_error_to_the_server_passes() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    let quote = flow.reply().router_quote();
    h.client(&Packet::error(CLIENT, SERVER, DEST_UNREACH, PORT_UNREACH, &quote).frame())
        .check(TC_ACT_OK, Reason::PassRelated);
}

#[test]
fn an_error_quoting_no_tracked_connection_is_unrelated() {
    let h = Harness::new();
    UdpFlow::v4(&h, 40000);
    let untracked = Packet::udp(CLIENT, 40001, SERVER, UDP_PORT);
    let error = Packet::error(ROUTER, CLIENT, TIME_EXCEEDED, 0, &untracked.router_quote());
    h.upstream(&error.frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
    let reply = Packet::udp(SERVER, UDP_PORT, CLIENT, 40001).router_quote();
    let error = Packet::error(CLIENT, SERVER, DEST_UNREACH, PORT_UNREACH, &reply);
    h.client(&error.frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
    assert_eq!(h.counter(Reason::PassRelated), 0);
}

#[test]
fn an_error_about_the_other_direction_is_unrelated() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    // Upstream, quoting a server -> client packet: the client never sent it.
    let error = Packet::error(
        ROUTER,
        CLIENT,
        TIME_EXCEEDED,
        0,
        &flow.reply().router_quote(),
    );
    h.upstream(&error.frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
    // Client side, quoting a client -> server packet: the server never got it.
    let error = Packet::error(
        CLIENT,
        SERVER,
        DEST_UNREACH,
        PORT_UNREACH,
        &flow.request().router_quote(),
    );
    h.client(&error.frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
}

#[test]
fn an_error_to_another_client_is_unrelated() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    let error = Packet::error(
        ROUTER,
        OTHER_CLIENT,
        TIME_EXCEEDED,
        0,
        &flow.request().router_quote(),
    );
    h.upstream(&error.frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
    assert_eq!(h.net_stats(Some("clients"), "icmp").dropped, 1);
}

#[test]
fn an_error_of_an_idle_connection_is_unrelated() {
    let mut h = Harness::new();
    let idle = 60_000_000_000; // ConntrackConfig::default().udp_idle
    assert!(now_ns() > 2 * idle, "the clock has run long enough");
    let key = ct_key(UDP, CLIENT, 40000, SERVER, UDP_PORT);
    let stale = CtValue {
        last_seen_ns: now_ns() - 2 * idle,
        net_id: h.net_id("clients"),
        ..Default::default()
    };
    h.track(key, stale);
    let quote = Packet::udp(CLIENT, 40000, SERVER, UDP_PORT).router_quote();
    h.upstream(&Packet::error(ROUTER, CLIENT, TIME_EXCEEDED, 0, &quote).frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpUnrelated);
}

#[test]
fn errors_do_not_keep_a_connection_alive() {
    let mut h = Harness::new();
    let key = ct_key(UDP, CLIENT, 40000, SERVER, UDP_PORT);
    let seen = now_ns() - 10_000_000_000;
    h.track(
        key,
        CtValue {
            last_seen_ns: seen,
            net_id: h.net_id("clients"),
            ..Default::default()
        },
    );
    let quote = Packet::udp(CLIENT, 40000, SERVER, UDP_PORT).router_quote();
    h.upstream(&Packet::error(ROUTER, CLIENT, TIME_EXCEEDED, 0, &quote).frame())
        .check(TC_ACT_OK, Reason::PassRelated);
    assert_eq!(h.tracked(&key).unwrap().last_seen_ns, seen);
}
