//! The addresses of the scenarios (as in [`super::POLICY`]) and the
//! tracked flows most of them start from.

use neuwerk_abi::{CtKey, Reason};

use super::frame::{Packet, SYN, TCP, UDP};
use super::{ct_key, Harness, TC_ACT_OK};

/// A client of network `clients`.
pub(crate) const CLIENT: &str = "10.100.1.20";
/// Another client of network `clients`.
pub(crate) const OTHER_CLIENT: &str = "10.100.1.99";
/// A client of network `clients`, IPv6.
pub(crate) const CLIENT6: &str = "fd00:100:1::20";
/// A source in no network.
pub(crate) const STRANGER: &str = "10.200.0.5";
/// Allowed on TCP 443.
pub(crate) const WEB: &str = "203.0.113.10";
/// Allowed on UDP 53000.
pub(crate) const SERVER: &str = "203.0.113.5";
/// Allowed on TCP 443 and UDP 53000, IPv6.
pub(crate) const SERVER6: &str = "2001:db8::100";
/// Allowed everything, ICMP included.
pub(crate) const PINGED: &str = "192.0.2.1";
/// Allowed everything, ICMP included, IPv6.
pub(crate) const PINGED6: &str = "2001:db8::1";
/// No rule allows it.
pub(crate) const OUTSIDE: &str = "198.51.100.7";
/// A router on the upstream side.
pub(crate) const ROUTER: &str = "10.100.2.1";
/// A router on the upstream side, IPv6.
pub(crate) const ROUTER6: &str = "2001:db8:ffff::1";

/// The UDP port [`SERVER`] and [`SERVER6`] are allowed on.
pub(crate) const UDP_PORT: u16 = 53000;

/// The tracked UDP flow the ICMP scenarios are about.
pub(crate) struct UdpFlow {
    pub client: &'static str,
    pub server: &'static str,
    pub sport: u16,
}

impl UdpFlow {
    /// Opens `client`:`sport` -> `server`:[`UDP_PORT`] with its first
    /// packet (a static rule allows it).
    pub fn open(h: &Harness, client: &'static str, server: &'static str, sport: u16) -> UdpFlow {
        let flow = UdpFlow {
            client,
            server,
            sport,
        };
        h.client(&flow.request().frame())
            .check(TC_ACT_OK, Reason::PassRule);
        flow
    }

    /// [`CLIENT`]:`sport` -> [`SERVER`]:[`UDP_PORT`], opened.
    pub fn v4(h: &Harness, sport: u16) -> UdpFlow {
        UdpFlow::open(h, CLIENT, SERVER, sport)
    }

    /// [`CLIENT6`]:`sport` -> [`SERVER6`]:[`UDP_PORT`], opened.
    pub fn v6(h: &Harness, sport: u16) -> UdpFlow {
        UdpFlow::open(h, CLIENT6, SERVER6, sport)
    }

    /// A packet client -> server.
    pub fn request(&self) -> Packet {
        Packet::udp(self.client, self.sport, self.server, UDP_PORT)
    }

    /// A packet server -> client.
    pub fn reply(&self) -> Packet {
        Packet::udp(self.server, UDP_PORT, self.client, self.sport)
    }

    /// Its conntrack key.
    pub fn key(&self) -> CtKey {
        ct_key(UDP, self.client, self.sport, self.server, UDP_PORT)
    }

    /// An ICMP error a router on the upstream side sends the client about
    /// its packet (ICMP, or ICMPv6 for an IPv6 flow).
    pub fn router_error(&self, kind: u8, code: u8) -> Packet {
        let router = if self.client.contains(':') {
            ROUTER6
        } else {
            ROUTER
        };
        Packet::error(
            router,
            self.client,
            kind,
            code,
            &self.request().router_quote(),
        )
    }
}

/// Opens `client`:`sport` -> [`WEB`]:443 (or [`SERVER6`] for an IPv6
/// client) with a SYN; its key.
pub(crate) fn open_tcp(h: &Harness, client: &str, sport: u16) -> CtKey {
    let server = if client.contains(':') { SERVER6 } else { WEB };
    h.client(&Packet::tcp(client, sport, server, 443, SYN).frame())
        .check(TC_ACT_OK, Reason::PassRule);
    ct_key(TCP, client, sport, server, 443)
}
