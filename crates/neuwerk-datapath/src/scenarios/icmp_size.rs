//! Scenario: the size of an ICMP error. A router quotes at most what fits
//! in 576 bytes of IPv4 (RFC 1812 4.3.2.3) or 1,280 of IPv6 (RFC 4443
//! 2.4(c)); a longer error carries more than an error needs and is
//! dropped (DropIcmpSize), even when it quotes a tracked connection.

use neuwerk_abi::Reason;

use super::flows::{UdpFlow, ROUTER, ROUTER6};
use super::frame::{Packet, ERROR_MAX_V4, ERROR_MAX_V6};
use super::{Harness, TC_ACT_OK, TC_ACT_SHOT};

/// IPv4 + ICMP headers and the quoted IPv4 + UDP headers.
const OVERHEAD_V4: usize = 20 + 8 + 20 + 8;
/// IPv6 + ICMPv6 headers and the quoted IPv6 + UDP headers.
const OVERHEAD_V6: usize = 40 + 8 + 40 + 8;

/// An error from a router about `flow` whose IP packet is `total` bytes.
fn error_of_size(flow: &UdpFlow, total: usize, v6: bool) -> Vec<u8> {
    let (router, kind, overhead) = if v6 {
        (ROUTER6, 3, OVERHEAD_V6)
    } else {
        (ROUTER, 11, OVERHEAD_V4)
    };
    let quote = flow.request().payload_len(total - overhead).ip();
    let error = Packet::error(router, flow.client, kind, 0, &quote);
    assert_eq!(error.ip().len(), total);
    error.frame()
}

#[test]
fn an_ipv4_error_of_576_bytes_passes_one_more_is_dropped() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    h.upstream(&error_of_size(&flow, ERROR_MAX_V4, false))
        .check(TC_ACT_OK, Reason::PassRelated);
    h.upstream(&error_of_size(&flow, ERROR_MAX_V4 + 1, false))
        .check(TC_ACT_SHOT, Reason::DropIcmpSize);
    h.upstream(&error_of_size(&flow, 1500, false))
        .check(TC_ACT_SHOT, Reason::DropIcmpSize);
}

#[test]
fn an_ipv6_error_of_1280_bytes_passes_one_more_is_dropped() {
    let h = Harness::new();
    let flow = UdpFlow::v6(&h, 40000);
    h.upstream(&error_of_size(&flow, ERROR_MAX_V6, true))
        .check(TC_ACT_OK, Reason::PassRelated);
    h.upstream(&error_of_size(&flow, ERROR_MAX_V6 + 1, true))
        .check(TC_ACT_SHOT, Reason::DropIcmpSize);
}

#[test]
fn a_clients_oversized_error_is_dropped() {
    let h = Harness::new();
    let flow = UdpFlow::v4(&h, 40000);
    let quote = flow.reply().payload_len(1000).ip();
    let error = Packet::error(flow.client, flow.server, 3, 3, &quote);
    h.client(&error.frame())
        .check(TC_ACT_SHOT, Reason::DropIcmpSize);
    assert_eq!(h.counter(Reason::PassRelated), 0);
}
