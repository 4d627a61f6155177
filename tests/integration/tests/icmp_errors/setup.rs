//! Set-up of the ICMP error tests: the extra addresses, the tracked flows
//! the crafted errors are about, and how a case is sent and judged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::thread::sleep;
use std::time::{Duration, Instant};

use neuwerk_integration::client::{ALLOWED, BLOCKED};
use neuwerk_integration::dns_client::unspecified;
use neuwerk_integration::http_mock::ECHO_PORT;
use neuwerk_integration::icmp::*;
use neuwerk_integration::mgmt::{sum_samples, Mgmt};
use neuwerk_integration::topology::*;
use neuwerk_integration::{Neuwerk, Topology};

/// neuwerk's management listener (the config default), in its namespace.
pub(crate) const MGMT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3000);
/// A UDP port on the upstream hosts nothing listens on (inside the rule).
pub(crate) const CLOSED_PORT: u16 = 5399;
/// An address elsewhere in the upstream namespace (added by
/// [`add_addresses`]): no connection of the client's goes there.
pub(crate) const ELSEWHERE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
pub(crate) const ELSEWHERE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 7);
/// A router on the upstream link (added by [`add_addresses`]).
pub(crate) const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 1);
pub(crate) const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 1);
/// A second client address (added by [`add_addresses`]), never the source
/// of a tracked connection.
pub(crate) const CLIENT2_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 101);
pub(crate) const CLIENT2_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0x101);
/// Errors a connection may cause per window (NW_ICMP_ERRORS_PER_WINDOW).
pub(crate) const BUDGET: u64 = 16;
/// The budget's window: 2^30 ns (NW_ICMP_WINDOW_SHIFT).
pub(crate) const WINDOW: Duration = Duration::from_nanos(1 << 30);
/// The path MTU the crafted "fragmentation needed" / "packet too big" announce.
pub(crate) const ANNOUNCED_MTU: u32 = 1400;

/// UDP to the main destinations, on ports around the echo server's: the
/// flows the crafted errors are about, and the closed port.
pub(crate) const POLICY: &str = "networks:
  - name: clients
    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]
    policies:
      - { ip: 192.0.2.100, ports: [\"5300-5400\"], protocol: udp }
      - { ip: \"2001:db8::100\", ports: [\"5300-5400\"], protocol: udp }
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub(crate) fn v6(self) -> bool {
        self == Family::V6
    }

    pub(crate) fn pick(self, v4: Ipv4Addr, v6: Ipv6Addr) -> IpAddr {
        match self {
            Family::V4 => v4.into(),
            Family::V6 => v6.into(),
        }
    }

    /// The upstream host the flows go to (its UDP echo server).
    pub(crate) fn dest(self) -> IpAddr {
        self.pick(DEST_V4, DEST_V6)
    }

    pub(crate) fn client(self) -> IpAddr {
        self.pick(CLIENT_V4, CLIENT_V6)
    }

    pub(crate) fn client2(self) -> IpAddr {
        self.pick(CLIENT2_V4, CLIENT2_V6)
    }

    pub(crate) fn elsewhere(self) -> IpAddr {
        self.pick(ELSEWHERE_V4, ELSEWHERE_V6)
    }

    pub(crate) fn router(self) -> IpAddr {
        self.pick(ROUTER_V4, ROUTER_V6)
    }

    /// (type, code) of "port unreachable".
    pub(crate) fn port_unreachable(self) -> (u8, u8) {
        match self {
            Family::V4 => (V4_DEST_UNREACH, V4_PORT_UNREACH),
            Family::V6 => (V6_DEST_UNREACH, V6_PORT_UNREACH),
        }
    }

    /// (type, code) of "fragmentation needed" / "packet too big".
    pub(crate) fn too_big(self) -> (u8, u8) {
        match self {
            Family::V4 => (V4_DEST_UNREACH, V4_FRAG_NEEDED),
            Family::V6 => (V6_PACKET_TOO_BIG, 0),
        }
    }

    /// The longest error that passes, as an IP packet (NW_ICMP_ERROR_MAX_*).
    pub(crate) fn max_error(self) -> usize {
        match self {
            Family::V4 => 576,
            Family::V6 => 1280,
        }
    }
}

/// The topology's extra addresses: one elsewhere upstream, a router on the
/// upstream link, a second client address. The IPv6 ones are deprecated
/// (preferred_lft 0) so that no ordinary traffic picks them as its source.
pub(crate) fn add_addresses(topo: &Topology) {
    let lines = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    topo.upstream_ns().ip_batch(&lines(&[
        "addr add 203.0.113.7/32 dev lo",
        "addr add 2001:db8:ffff::7/128 dev lo nodad preferred_lft 0",
        "addr add 10.100.2.1/24 dev ups0",
        "addr add fd00:100:2::1/64 dev ups0 nodad preferred_lft 0",
    ]));
    topo.client_ns().ip_batch(&lines(&[
        "addr add 10.100.1.101/24 dev cli0",
        "addr add fd00:100:1::101/64 dev cli0 nodad preferred_lft 0",
    ]));
}

/// Changes of the ICMP reason counters (or their values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reasons {
    pub(crate) related: u64,
    pub(crate) unrelated: u64,
    pub(crate) kind: u64,
    pub(crate) size: u64,
    pub(crate) rate: u64,
}

pub(crate) const NONE: Reasons = Reasons {
    related: 0,
    unrelated: 0,
    kind: 0,
    size: 0,
    rate: 0,
};
pub(crate) const RELATED: Reasons = Reasons { related: 1, ..NONE };
pub(crate) const UNRELATED: Reasons = Reasons {
    unrelated: 1,
    ..NONE
};
pub(crate) const KIND: Reasons = Reasons { kind: 1, ..NONE };
pub(crate) const SIZE: Reasons = Reasons { size: 1, ..NONE };

impl Reasons {
    /// The counters now, from one `/metrics` scrape.
    pub(crate) fn read(m: &Mgmt<'_>) -> Reasons {
        let r = m
            .get("/metrics")
            .unwrap_or_else(|e| panic!("/metrics: {e:#}"));
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        let n = |reason: &str| {
            sum_samples(&r.body, "neuwerk_packet_reasons", &[("reason", reason)]) as u64
        };
        Reasons {
            related: n("pass_related"),
            unrelated: n("drop_icmp_unrelated"),
            kind: n("drop_icmp_kind"),
            size: n("drop_icmp_size"),
            rate: n("drop_icmp_rate"),
        }
    }

    pub(crate) fn since(self, before: Reasons) -> Reasons {
        Reasons {
            related: self.related - before.related,
            unrelated: self.unrelated - before.unrelated,
            kind: self.kind - before.kind,
            size: self.size - before.size,
            rate: self.rate - before.rate,
        }
    }

    pub(crate) fn total(self) -> u64 {
        self.related + self.unrelated + self.kind + self.size + self.rate
    }
}

/// Waits until the ICMP reason counters moved `n` times since `before`
/// (each error is judged once); their change then.
pub(crate) fn wait_judged(m: &Mgmt<'_>, before: Reasons, n: u64) -> Reasons {
    let start = Instant::now();
    loop {
        let d = Reasons::read(m).since(before);
        if d.total() >= n {
            return d;
        }
        assert!(
            start.elapsed() < ALLOWED,
            "the firewall judged {} of {n} crafted errors within {ALLOWED:?} (ICMP reason \
             counters moved {d:?})",
            d.total()
        );
        sleep(Duration::from_millis(20));
    }
}

/// Sends `packet` and waits until the firewall judged it; the change of
/// the ICMP reason counters.
pub(crate) fn judged(m: &Mgmt<'_>, from: &RawSender, packet: &[u8]) -> Reasons {
    let before = Reasons::read(m);
    from.send(packet).expect("send the crafted error");
    wait_judged(m, before, 1)
}

/// A UDP flow from the client to an upstream echo server, tracked by
/// neuwerk (its first datagram passed the static rule); the socket stays
/// open, so the client's kernel never answers the flow with errors of its own.
pub(crate) struct Flow {
    pub(crate) _sock: Option<UdpSocket>,
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
}

impl Flow {
    /// Opens the flow with one echo round trip.
    pub(crate) fn open(topo: &Topology, server: SocketAddr) -> Flow {
        let sock = topo.client_ns().run(|| {
            let s = UdpSocket::bind(unspecified(server)).expect("bind UDP socket");
            s.connect(server).expect("connect UDP socket");
            s
        });
        sock.set_read_timeout(Some(ALLOWED)).expect("set timeout");
        sock.send(b"track me").expect("send");
        let mut buf = [0u8; 64];
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no echo from {server} on the flow to be tracked: {e}"));
        assert_eq!(&buf[..n], b"track me", "echo from {server}");
        let client = sock.local_addr().expect("local address");
        let fam = if server.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        };
        assert_eq!(
            client.ip(),
            fam.client(),
            "the flow's source must be the main client address"
        );
        Flow {
            _sock: Some(sock),
            client,
            server,
        }
    }

    /// A datagram of the flow from the client (what an error from upstream
    /// quotes), its payload `marker` padded to `len` bytes.
    pub(crate) fn outgoing(&self, marker: &[u8], len: usize) -> Vec<u8> {
        udp_datagram(self.client, self.server, &padded(marker, len))
    }

    /// A datagram of the flow from the server (what an error from the
    /// client quotes).
    pub(crate) fn reply(&self, marker: &[u8], len: usize) -> Vec<u8> {
        udp_datagram(self.server, self.client, &padded(marker, len))
    }
}

/// Stands in for a flow before neuwerk runs: the same addresses and
/// server port, a client port no socket has.
pub(crate) fn fake_flow(fam: Family) -> Flow {
    Flow {
        _sock: None,
        client: SocketAddr::new(fam.client(), 40_000),
        server: SocketAddr::new(fam.dest(), ECHO_PORT),
    }
}

/// A crafted error and the one counter it must move.
pub(crate) struct Case {
    pub(crate) what: String,
    pub(crate) marker: Vec<u8>,
    pub(crate) error: IcmpError,
    pub(crate) expect: Reasons,
}

impl Case {
    pub(crate) fn new(
        what: impl Into<String>,
        marker: &[u8],
        error: IcmpError,
        expect: Reasons,
    ) -> Case {
        Case {
            what: what.into(),
            marker: marker.to_vec(),
            error,
            expect,
        }
    }
}

/// A marker for case `id` of a run (`base` or `live`) and family.
pub(crate) fn marker(run: &str, id: &str, fam: Family) -> Vec<u8> {
    format!("<{run}:{id}:{fam:?}>").into_bytes()
}

/// Without neuwerk: every case arrives (sent up to three times, so that
/// neighbour discovery of a fresh address cannot fail it).
pub(crate) fn assert_deliverable(cases: &[Case], from: &RawSender, to: &IcmpListener) {
    for case in cases {
        let packet = case.error.packet();
        let arrived = (0..3).any(|_| {
            from.send(&packet).expect("send the crafted error");
            to.wait_for(&case.marker, BLOCKED).is_some()
        });
        assert!(
            arrived,
            "without neuwerk, {} ({} bytes to {}) did not arrive: the test cannot tell \
             a drop by the firewall from one by the topology",
            case.what,
            packet.len(),
            case.error.dst
        );
    }
}

/// With neuwerk: each case moves exactly its counter; those that pass
/// arrive where they were sent, the others never arrive.
pub(crate) fn assert_judged(cases: &[Case], m: &Mgmt<'_>, from: &RawSender, to: &IcmpListener) {
    for case in cases {
        let packet = case.error.packet();
        let d = judged(m, from, &packet);
        assert_eq!(
            d,
            case.expect,
            "{} ({} bytes to {}): ICMP reason counters moved {d:?}, expected {:?}",
            case.what,
            packet.len(),
            case.error.dst,
            case.expect
        );
        if case.expect == RELATED {
            let seen = to.wait_for(&case.marker, ALLOWED).unwrap_or_else(|| {
                panic!(
                    "{} passed the firewall (pass_related moved) but did not arrive",
                    case.what
                )
            });
            assert_eq!(seen.dst, case.error.dst, "{}: arrived at", case.what);
        }
    }
    // The passing cases came last over the same path; a little more time
    // for any straggler of the dropped ones.
    sleep(Duration::from_millis(200));
    for case in cases.iter().filter(|c| c.expect != RELATED) {
        let seen = to.carrying(&case.marker);
        assert!(
            seen.is_empty(),
            "{} was counted as dropped ({:?}) but arrived: {seen:?}",
            case.what,
            case.expect
        );
    }
}

pub(crate) fn start(topo: &Topology) -> (Neuwerk<'_>, Mgmt<'_>) {
    let nw = Neuwerk::start(topo, POLICY);
    (nw, Mgmt::new(topo.firewall_ns(), MGMT, None))
}

/// Every case of both families first crosses the topology without neuwerk
/// (about flows that stand in for real ones), then, with neuwerk, is
/// judged (about real tracked flows); neuwerk is stopped after.
pub(crate) fn assert_deliverable_then_judged(
    topo: &Topology,
    from: &RawSender,
    to: &IcmpListener,
    cases: impl Fn(&str, Family, &Flow) -> Vec<Case>,
) {
    for fam in Family::BOTH {
        assert_deliverable(&cases("base", fam, &fake_flow(fam)), from, to);
    }
    let (nw, m) = start(topo);
    for fam in Family::BOTH {
        let flow = Flow::open(topo, SocketAddr::new(fam.dest(), ECHO_PORT));
        assert_judged(&cases("live", fam, &flow), &m, from, to);
    }
    nw.stop();
}
