//! The single-node, dual-stack test topology (the seed's layout):
//!
//! ```text
//! client ns            neuwerk ns                         upstream ns
//! cli0 10.100.1.100 -- nwi0 10.100.1.10   nwe0 10.100.2.10 -- ups0 10.100.2.100
//!      fd00:100:1::100     fd00:100:1::10      fd00:100:2::10     fd00:100:2::100
//!                      (ip forwarding on)                     lo: 192.0.2.100, .101, .53,
//!                                                                 198.51.100.0/24,
//!                                                                 2001:db8::100, ::101
//! ```
//!
//! Interface names are the same in every test: the veths are created
//! directly inside the namespaces. Until a [`crate::neuwerk::Neuwerk`] is
//! started the neuwerk namespace is a plain router, which is the latency
//! baseline and what the self-test checks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::client::Host;
use crate::dns_mock::DnsMock;
use crate::http_mock::{HttpMock, ECHO_PORTS, HTTP_PORTS};
use crate::netns::{run_ok, Netns};
use crate::root::require_root;
use crate::zone::load_standard_zone;

/// Client address (cli0).
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 100);
/// Client IPv6 address (cli0).
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0x100);
/// Neuwerk's client-facing address (nwi0).
pub const INGRESS_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
/// Neuwerk's client-facing IPv6 address (nwi0).
pub const INGRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 1, 0, 0, 0, 0, 0x10);
/// Neuwerk's upstream-facing address (nwe0).
pub const EGRESS_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 10);
/// Neuwerk's upstream-facing IPv6 address (nwe0).
pub const EGRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 0x10);
/// Upstream router and resolver address (ups0).
pub const UPSTREAM_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 2, 100);
/// Upstream router and resolver IPv6 address (ups0).
pub const UPSTREAM_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 2, 0, 0, 0, 0, 0x100);
/// Main test destination.
pub const DEST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// Second test destination (never allowed statically by the fixtures).
pub const DEST2_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
/// Another resolver (same zone as the upstream), for DNS bypass tests.
pub const OTHER_RESOLVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// Main IPv6 test destination.
pub const DEST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// Second IPv6 test destination (never allowed statically by the fixtures).
pub const DEST2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);

/// Neuwerk's DNS listener on IPv4.
pub const NEUWERK_DNS_V4: SocketAddr = SocketAddr::new(IpAddr::V4(INGRESS_V4), 53);
/// Neuwerk's DNS listener on IPv6.
pub const NEUWERK_DNS_V6: SocketAddr = SocketAddr::new(IpAddr::V6(INGRESS_V6), 53);
/// The mock upstream resolver on IPv4.
pub const UPSTREAM_DNS_V4: SocketAddr = SocketAddr::new(IpAddr::V4(UPSTREAM_V4), 53);
/// The mock upstream resolver on IPv6.
pub const UPSTREAM_DNS_V6: SocketAddr = SocketAddr::new(IpAddr::V6(UPSTREAM_V6), 53);
/// The "other" resolver that clients must not bypass neuwerk with.
pub const OTHER_DNS_V4: SocketAddr = SocketAddr::new(IpAddr::V4(OTHER_RESOLVER_V4), 53);

/// Interface names (the same in every topology).
pub const IF_INGRESS: &str = "nwi0";
/// Neuwerk's upstream-facing interface.
pub const IF_EGRESS: &str = "nwe0";
/// The client's interface.
pub const IF_CLIENT: &str = "cli0";
/// The upstream's interface.
pub const IF_UPSTREAM: &str = "ups0";

/// Three namespaces wired as above, with the mock DNS (standard zone) and
/// HTTP/echo servers running in the upstream namespace. Dropping it stops
/// the mocks and deletes the namespaces.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: mocks stop before their namespace goes.
    dns: DnsMock,
    http: HttpMock,
    client: Netns,
    firewall: Netns,
    upstream: Netns,
}

impl Topology {
    /// Builds the topology and waits until the client reaches the
    /// upstream over IPv4 and IPv6. Panics on any failure.
    pub fn new() -> Topology {
        require_root();
        let client = Netns::new("cli");
        let firewall = Netns::new("nw");
        let upstream = Netns::new("ups");
        for ns in [&client, &firewall, &upstream] {
            ns.sysctl(&[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]);
        }
        firewall.sysctl(&["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        veth(&firewall, IF_INGRESS, &client, IF_CLIENT);
        veth(&firewall, IF_EGRESS, &upstream, IF_UPSTREAM);

        client.ip_batch(&lines(&[
            "addr add 10.100.1.100/24 dev cli0",
            "addr add fd00:100:1::100/64 dev cli0 nodad",
            "link set cli0 up",
            "route add default via 10.100.1.10",
            "route add default via fd00:100:1::10",
        ]));
        firewall.ip_batch(&lines(&[
            "addr add 10.100.1.10/24 dev nwi0",
            "addr add fd00:100:1::10/64 dev nwi0 nodad",
            "addr add 10.100.2.10/24 dev nwe0",
            "addr add fd00:100:2::10/64 dev nwe0 nodad",
            "link set nwi0 up",
            "link set nwe0 up",
            "route add default via 10.100.2.100",
            "route add default via fd00:100:2::100",
        ]));
        upstream.ip_batch(&lines(&[
            "addr add 10.100.2.100/24 dev ups0",
            "addr add fd00:100:2::100/64 dev ups0 nodad",
            "link set ups0 up",
            "addr add 192.0.2.100/32 dev lo",
            "addr add 192.0.2.101/32 dev lo",
            "addr add 192.0.2.53/32 dev lo",
            // On lo the whole /24 becomes local: big.example.com's 100 addresses.
            "addr add 198.51.100.1/24 dev lo",
            "addr add 2001:db8::100/128 dev lo nodad",
            "addr add 2001:db8::101/128 dev lo nodad",
            "route add 10.100.1.0/24 via 10.100.2.10",
            "route add fd00:100:1::/64 via fd00:100:2::10",
        ]));

        let dns = DnsMock::start(&upstream, &[UPSTREAM_DNS_V4, UPSTREAM_DNS_V6, OTHER_DNS_V4])
            .unwrap_or_else(|e| panic!("{e:#}"));
        load_standard_zone(&dns);
        let echo: Vec<SocketAddr> = [
            IpAddr::V4(DEST_V4),
            IpAddr::V4(DEST2_V4),
            IpAddr::V6(DEST_V6),
            IpAddr::V6(DEST2_V6),
        ]
        .into_iter()
        .flat_map(|ip| ECHO_PORTS.map(|port| SocketAddr::new(ip, port)))
        .collect();
        let http =
            HttpMock::start(&upstream, &HTTP_PORTS, &echo).unwrap_or_else(|e| panic!("{e:#}"));

        let topo = Topology {
            dns,
            http,
            client,
            firewall,
            upstream,
        };
        topo.wait_reachable(Duration::from_secs(10));
        topo
    }

    /// Helpers running in the client namespace.
    pub fn client(&self) -> Host<'_> {
        Host::new(&self.client)
    }

    /// Helpers running in the upstream namespace (unsolicited traffic).
    pub fn upstream(&self) -> Host<'_> {
        Host::new(&self.upstream)
    }

    /// Helpers running in the neuwerk namespace.
    pub fn firewall(&self) -> Host<'_> {
        Host::new(&self.firewall)
    }

    /// The client namespace.
    pub fn client_ns(&self) -> &Netns {
        &self.client
    }

    /// The neuwerk namespace (where `neuwerk run` goes).
    pub fn firewall_ns(&self) -> &Netns {
        &self.firewall
    }

    /// The upstream namespace.
    pub fn upstream_ns(&self) -> &Netns {
        &self.upstream
    }

    /// The mock DNS server (records, failure modes, query log).
    pub fn dns(&self) -> &DnsMock {
        &self.dns
    }

    /// Queries for `name` the resolvers got from neuwerk (its egress side).
    pub fn forwarded(&self, name: &str) -> usize {
        self.dns
            .queries_from(name, &[IpAddr::V4(EGRESS_V4), IpAddr::V6(EGRESS_V6)])
    }

    /// Queries for `name` the resolvers got straight from the client.
    pub fn from_client(&self, name: &str) -> usize {
        self.dns
            .queries_from(name, &[IpAddr::V4(CLIENT_V4), IpAddr::V6(CLIENT_V6)])
    }

    /// The mock HTTP and UDP echo server.
    pub fn http(&self) -> &HttpMock {
        &self.http
    }

    /// Waits until the client reaches the mock HTTP server on
    /// 192.0.2.100 and 2001:db8::100 (IPv6 neighbour discovery settles).
    fn wait_reachable(&self, limit: Duration) {
        let start = Instant::now();
        for dst in [IpAddr::V4(DEST_V4), IpAddr::V6(DEST_V6)] {
            let addr = SocketAddr::new(dst, 80);
            loop {
                match self.client().tcp_connect(addr, Duration::from_millis(500)) {
                    Ok(_) => break,
                    Err(e) if start.elapsed() > limit => {
                        panic!("topology not reachable: client -> {addr}: {e:#}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    let mut cmd = Command::new("ip");
    cmd.args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
    ])
    .args(["netns", b.name()]);
    run_ok(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
}

fn lines(cmds: &[&str]) -> Vec<String> {
    cmds.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for Topology {
    /// Same as [`Topology::new`].
    fn default() -> Self {
        Topology::new()
    }
}
