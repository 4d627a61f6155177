//! Forwarding of passed traffic. With `forwarding: direct` (the default)
//! the programs route it and the kernel's IP forwarding path never counts
//! it; as the node's interfaces here are veths with their other ends in
//! other namespaces, the programs hand packets straight to those ends and
//! the node's veths never transmit them. With `kernel` the stack forwards
//! every packet. Either way the TTL or
//! hop limit is decremented: a packet whose TTL runs out at the node is not
//! forwarded, one with a hop left is.

use std::net::{SocketAddr, UdpSocket};

use anyhow::{anyhow, Context, Result};
use neuwerk_integration::checks::*;
use neuwerk_integration::client::{Host, ALLOWED, BLOCKED};
use neuwerk_integration::dns_client::unspecified;
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::sockopt;
use neuwerk_integration::topology::*;
use neuwerk_integration::{Neuwerk, NeuwerkConfig, Topology};

/// Round trips per address family in the counting tests.
const ROUND_TRIPS: usize = 200;

/// Echo targets `policy-static.yaml` allows (UDP 5353), IPv4 and IPv6.
fn echo_targets() -> [SocketAddr; 2] {
    [sa(DEST_V4, 5353), sa(DEST_V6, 5353)]
}

/// Packets the firewall namespace's IP stack has forwarded so far (IPv4
/// `ForwDatagrams` plus IPv6 `Ip6OutForwDatagrams`).
fn stack_forwarded(topo: &Topology) -> u64 {
    let read = |file: &str| {
        let out = topo
            .firewall_ns()
            .exec("cat", &[file])
            .unwrap_or_else(|e| panic!("reading {file}: {e:#}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let snmp = read("/proc/net/snmp");
    // Two "Ip:" lines: the field names, then their values.
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let at = names.split_whitespace().position(|n| n == "ForwDatagrams");
    let v4: u64 = values
        .split_whitespace()
        .nth(at.unwrap())
        .unwrap()
        .parse()
        .unwrap();
    let v6: u64 = read("/proc/net/snmp6")
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    v4 + v6
}

/// Packets the node's two veths have transmitted so far.
fn node_transmitted(topo: &Topology) -> u64 {
    [IF_INGRESS, IF_EGRESS]
        .iter()
        .map(|iface| {
            let file = format!("/sys/class/net/{iface}/statistics/tx_packets");
            let out = topo
                .firewall_ns()
                .exec("cat", &[&file])
                .unwrap_or_else(|e| panic!("reading {file}: {e:#}"));
            let text = String::from_utf8_lossy(&out.stdout);
            text.trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{file}: {e}"))
        })
        .sum()
}

/// Starts neuwerk with `policy-static.yaml` and the given forwarding mode,
/// and warms both echo targets up (neighbour entries resolved).
fn start<'t>(topo: &'t Topology, forwarding: Option<&'static str>) -> Neuwerk<'t> {
    let config = NeuwerkConfig {
        forwarding,
        ..NeuwerkConfig::default()
    };
    let nw = Neuwerk::start_with(topo, &config, &fixture("policy-static.yaml"));
    for addr in echo_targets() {
        assert_udp_ok(topo.client(), addr);
    }
    nw
}

/// Of [`ROUND_TRIPS`] echo round trips per family (each two packets):
/// how many packets the stack forwarded, and how many the node's veths
/// transmitted.
fn stack_share(topo: &Topology) -> (u64, u64) {
    let (forwarded, transmitted) = (stack_forwarded(topo), node_transmitted(topo));
    for addr in echo_targets() {
        topo.client()
            .udp_echo_rtts(addr, ROUND_TRIPS, ALLOWED)
            .unwrap_or_else(|e| panic!("echo via {addr}: {e:#}"));
    }
    (
        stack_forwarded(topo) - forwarded,
        node_transmitted(topo) - transmitted,
    )
}

#[test]
fn direct_forwarding_keeps_passed_packets_off_the_kernel_forwarding_path() {
    let topo = Topology::new();
    let nw = start(&topo, None);
    let (by_stack, sent) = stack_share(&topo);
    // 800 packets crossed the node; a neighbour entry going stale may send
    // a few through the stack, which resolves it again (and the node's
    // own ARP and ND packets count as transmitted).
    assert!(
        by_stack < 20,
        "{by_stack} of {} packets went through the kernel's forwarding path",
        4 * ROUND_TRIPS
    );
    assert!(
        sent < 20,
        "the node's veths transmitted {sent} of {} packets: not handed to their peers",
        4 * ROUND_TRIPS
    );
    nw.stop();
}

#[test]
fn kernel_forwarding_sends_every_passed_packet_through_the_stack() {
    let topo = Topology::new();
    let nw = start(&topo, Some("kernel"));
    let (by_stack, sent) = stack_share(&topo);
    assert!(
        by_stack >= 4 * ROUND_TRIPS as u64,
        "only {by_stack} of {} packets went through the kernel's forwarding path",
        4 * ROUND_TRIPS
    );
    assert!(
        sent >= 4 * ROUND_TRIPS as u64,
        "the node's veths transmitted only {sent} of {} packets",
        4 * ROUND_TRIPS
    );
    nw.stop();
}

/// Sends one datagram to `addr` with the given TTL (IPv4) or hop limit
/// (IPv6); whether its echo came back within `wait`.
fn echo_with_hops(
    c: Host<'_>,
    addr: SocketAddr,
    hops: u32,
    wait: std::time::Duration,
) -> Result<bool> {
    c.ns().run(|| {
        let sock = UdpSocket::bind(unspecified(addr))?;
        sock.connect(addr)?;
        if addr.is_ipv4() {
            sock.set_ttl(hops)?;
        } else {
            let hops = hops as libc::c_int;
            sockopt::set_int(&sock, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, hops)
                .context("IPV6_UNICAST_HOPS")?;
        }
        sock.set_read_timeout(Some(wait))?;
        sock.send(b"hops")?;
        let mut buf = [0u8; 16];
        match sock.recv(&mut buf) {
            Ok(n) => Ok(&buf[..n] == b"hops"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(anyhow!("echo via {addr}: {e}")),
        }
    })
}

#[test]
fn the_node_decrements_ttl_and_hop_limit_in_both_modes() {
    for mode in [None, Some("kernel")] {
        let topo = Topology::new();
        let nw = start(&topo, mode);
        for addr in echo_targets() {
            // The destination is one hop past the node: a datagram sent
            // with 1 hop left must die there, one with 2 must arrive.
            let one = echo_with_hops(topo.client(), addr, 1, BLOCKED).unwrap();
            assert!(
                !one,
                "{mode:?}: a datagram with 1 hop left crossed the node to {addr}"
            );
            let two = echo_with_hops(topo.client(), addr, 2, ALLOWED).unwrap();
            assert!(
                two,
                "{mode:?}: a datagram with 2 hops left did not reach {addr}"
            );
        }
        nw.stop();
    }
}
