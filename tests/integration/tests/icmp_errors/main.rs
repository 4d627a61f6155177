//! ICMP errors through the node (bpf/lib/related.h): an error passes only
//! as an error of the tracked connection it quotes, addressed to the end
//! whose packet failed, of a type and code a path produces, no longer than
//! an error needs (576 bytes of IPv4, 1,280 of IPv6), and within its
//! connection's budget (16 per window of about a second). Anything looser
//! would carry data past the policy in an error's free-form payload.
//!
//! Every crafted error goes out of a raw socket and is judged by the
//! firewall exactly once: exactly one ICMP reason counter moves (read from
//! `/metrics`), and a raw-socket listener in the namespace it is addressed
//! to shows whether it arrived. Before neuwerk starts, the topology is a
//! plain router: every crafted case is first sent through it and must
//! arrive there, so a later drop is the firewall's.

mod setup;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::thread::sleep;
use std::time::{Duration, Instant};

use neuwerk_integration::client::ALLOWED;
use neuwerk_integration::dns_client::unspecified;
use neuwerk_integration::http_mock::ECHO_PORT;
use neuwerk_integration::icmp::*;
use neuwerk_integration::topology::*;
use neuwerk_integration::Topology;

use setup::*;

/// The tunnel out: the client answers a tracked flow's reply with port
/// unreachable errors that carry 1,400 bytes, or go to an address that is
/// not the reply's sender. None reaches the upstream namespace; each
/// moves `drop_icmp_size` (too long, whatever its address) or
/// `drop_icmp_unrelated` (small, elsewhere). A small one to the reply's
/// sender passes (`pass_related`).
#[test]
fn client_errors_carry_nothing_out() {
    let topo = Topology::new();
    add_addresses(&topo);
    let from = RawSender::new(topo.client_ns());
    let to = IcmpListener::start(topo.upstream_ns());
    let cases = |run: &str, fam: Family, flow: &Flow| {
        let (icmp_type, code) = fam.port_unreachable();
        let error = |id: &str, dst: IpAddr, len: usize| IcmpError {
            src: flow.client.ip(),
            dst,
            icmp_type,
            code,
            info: 0,
            quote: flow.reply(&marker(run, id, fam), len),
        };
        let m = |id| marker(run, id, fam);
        vec![
            Case::new(
                format!(
                    "{fam:?} port unreachable with a 1,400-byte quote, to an address elsewhere"
                ),
                &m("big-elsewhere"),
                error("big-elsewhere", fam.elsewhere(), 1400),
                SIZE,
            ),
            Case::new(
                format!("{fam:?} small port unreachable, to an address elsewhere"),
                &m("small-elsewhere"),
                error("small-elsewhere", fam.elsewhere(), 32),
                UNRELATED,
            ),
            Case::new(
                format!("{fam:?} port unreachable with a 1,400-byte quote, to the reply's sender"),
                &m("big-sender"),
                error("big-sender", flow.server.ip(), 1400),
                SIZE,
            ),
            Case::new(
                format!("{fam:?} small port unreachable, to the reply's sender"),
                &m("small-sender"),
                error("small-sender", flow.server.ip(), 32),
                RELATED,
            ),
        ]
    };
    assert_deliverable_then_judged(&topo, &from, &to, cases);
}

/// The tunnel in: from the upstream host, port unreachable errors about
/// the client's tracked flow reach the client only when addressed to the
/// flow's client address and at most 576 (IPv4) / 1,280 (IPv6) bytes
/// long: one to a second client address is dropped as unrelated, one a
/// byte over the limit as too long; one of exactly the limit passes.
#[test]
fn upstream_errors_reach_only_the_quoted_sender() {
    let topo = Topology::new();
    add_addresses(&topo);
    let from = RawSender::new(topo.upstream_ns());
    let to = IcmpListener::start(topo.client_ns());
    let cases = |run: &str, fam: Family, flow: &Flow| {
        let (icmp_type, code) = fam.port_unreachable();
        let overhead = error_overhead(fam.v6());
        let error = |id: &str, dst: IpAddr, total: usize| IcmpError {
            src: flow.server.ip(),
            dst,
            icmp_type,
            code,
            info: 0,
            quote: flow.outgoing(&marker(run, id, fam), total - overhead),
        };
        let m = |id| marker(run, id, fam);
        let max = fam.max_error();
        vec![
            Case::new(
                format!("{fam:?} port unreachable to another client address"),
                &m("client2"),
                error("client2", fam.client2(), 100),
                UNRELATED,
            ),
            Case::new(
                format!(
                    "{fam:?} port unreachable of {} bytes to the client",
                    max + 1
                ),
                &m("over-max"),
                error("over-max", fam.client(), max + 1),
                SIZE,
            ),
            Case::new(
                format!("{fam:?} port unreachable of {max} bytes to the client"),
                &m("max"),
                error("max", fam.client(), max),
                RELATED,
            ),
            Case::new(
                format!("{fam:?} small port unreachable to the client"),
                &m("small"),
                error("small", fam.client(), 100),
                RELATED,
            ),
        ]
    };
    for fam in Family::BOTH {
        let cases = cases("base", fam, &fake_flow(fam));
        // The sizes are what the cases say they are.
        assert_eq!(cases[1].error.packet().len(), fam.max_error() + 1);
        assert_eq!(cases[2].error.packet().len(), fam.max_error());
    }
    assert_deliverable_then_judged(&topo, &from, &to, cases);
}

/// A datagram to a closed port of an upstream host the rules allow gets
/// the host's own port unreachable back to the client (`ConnectionRefused`
/// on a connected socket), counted as `pass_related` and nothing else.
#[test]
fn real_port_unreachable_reaches_its_flow() {
    let topo = Topology::new();
    let (nw, m) = start(&topo);
    for fam in Family::BOTH {
        let dst = SocketAddr::new(fam.dest(), CLOSED_PORT);
        let before = Reasons::read(&m);
        let sock = topo.client_ns().run(|| {
            let s = UdpSocket::bind(unspecified(dst)).expect("bind UDP socket");
            s.connect(dst).expect("connect UDP socket");
            s
        });
        sock.set_read_timeout(Some(ALLOWED)).expect("set timeout");
        sock.send(b"anyone?").expect("send");
        let mut buf = [0u8; 64];
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            other => panic!(
                "UDP to {dst} (allowed, nothing listening): expected the host's port \
                 unreachable to reach the client, got {other:?}"
            ),
        }
        let d = Reasons::read(&m).since(before);
        assert_eq!(d, RELATED, "{fam:?}: ICMP reason counters moved {d:?}");
    }
    nw.stop();
}

/// A router on the upstream link tells the client its path is narrower
/// ("fragmentation needed" with a next-hop MTU; IPv6 "packet too big"),
/// quoting a datagram of a tracked flow as routers do (the start of the
/// packet, within 576 / 1,280 bytes): the error reaches the client, which
/// then holds the announced path MTU for the destination.
#[test]
fn path_mtu_errors_from_a_router_reach_the_client() {
    let topo = Topology::new();
    add_addresses(&topo);
    let from = RawSender::new(topo.upstream_ns());
    let to = IcmpListener::start(topo.client_ns());
    let (nw, m) = start(&topo);
    for fam in Family::BOTH {
        let flow = Flow::open(&topo, SocketAddr::new(fam.dest(), ECHO_PORT));
        assert_eq!(
            path_mtu(topo.client_ns(), fam.dest()),
            None,
            "{fam:?}: a path MTU for {} before any error",
            fam.dest()
        );
        let tag = marker("live", "too-big", fam);
        // The datagram that did not fit, cut to what a router quotes.
        let mut quote = flow.outgoing(&tag, 1400);
        quote.truncate(fam.max_error() - 8 - if fam.v6() { 40 } else { 20 });
        let (icmp_type, code) = fam.too_big();
        let error = IcmpError {
            src: fam.router(),
            dst: flow.client.ip(),
            icmp_type,
            code,
            info: ANNOUNCED_MTU,
            quote,
        };
        let d = judged(&m, &from, &error.packet());
        assert_eq!(d, RELATED, "{fam:?} path MTU error: counters moved {d:?}");
        let seen = to
            .wait_for(&tag, ALLOWED)
            .unwrap_or_else(|| panic!("{fam:?} path MTU error passed but did not arrive"));
        assert_eq!(
            (seen.dst, seen.icmp_type, seen.code),
            (fam.client(), icmp_type, code),
            "{fam:?} path MTU error as it arrived"
        );
        let start = Instant::now();
        let mut mtu = path_mtu(topo.client_ns(), fam.dest());
        while mtu != Some(ANNOUNCED_MTU) && start.elapsed() < ALLOWED {
            sleep(Duration::from_millis(50));
            mtu = path_mtu(topo.client_ns(), fam.dest());
        }
        assert_eq!(
            mtu,
            Some(ANNOUNCED_MTU),
            "{fam:?}: the client's path MTU for {} after the error",
            fam.dest()
        );
    }
    nw.stop();
}

/// Errors about a tracked flow, from a router to the client, of a type and
/// code no path produces (ICMP time exceeded code 5, unreachable codes 16
/// and 20; ICMPv6 unreachable code 8, time exceeded code 2, packet too big
/// code 1) are dropped as `drop_icmp_kind`; the last valid codes of the
/// same types pass.
#[test]
fn errors_of_no_real_kind_are_dropped() {
    let topo = Topology::new();
    add_addresses(&topo);
    let from = RawSender::new(topo.upstream_ns());
    let to = IcmpListener::start(topo.client_ns());
    let cases = |run: &str, fam: Family, flow: &Flow| {
        let kinds: &[(u8, u8, Reasons)] = match fam {
            Family::V4 => &[
                (V4_TIME_EXCEEDED, 5, KIND),
                (V4_DEST_UNREACH, 20, KIND),
                (V4_DEST_UNREACH, 16, KIND),
                (V4_TIME_EXCEEDED, 1, RELATED),
                (V4_DEST_UNREACH, 15, RELATED),
            ],
            Family::V6 => &[
                (V6_DEST_UNREACH, 8, KIND),
                (V6_TIME_EXCEEDED, 2, KIND),
                (V6_PACKET_TOO_BIG, 1, KIND),
                (V6_DEST_UNREACH, 7, RELATED),
                (V6_TIME_EXCEEDED, 1, RELATED),
            ],
        };
        kinds
            .iter()
            .map(|&(icmp_type, code, expect)| {
                let m = marker(run, &format!("{icmp_type}-{code}"), fam);
                let error = IcmpError {
                    src: fam.router(),
                    dst: flow.client.ip(),
                    icmp_type,
                    code,
                    info: 0,
                    quote: flow.outgoing(&m, 32),
                };
                Case::new(
                    format!("{fam:?} type {icmp_type} code {code}"),
                    &m,
                    error,
                    expect,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_deliverable_then_judged(&topo, &from, &to, cases);
}

/// 40 valid errors about one tracked flow in a burst: at most the budget
/// per window passes (16, twice if the burst straddles a window's end),
/// the rest is dropped as `drop_icmp_rate`, and exactly those counted as
/// `pass_related` arrive. The budget is the connection's: an error about
/// another flow passes right after, and the first flow's errors pass again
/// in a later window.
#[test]
fn errors_over_a_connections_budget_are_dropped() {
    const BURST: u64 = 40;
    let topo = Topology::new();
    let from = RawSender::new(topo.upstream_ns());
    let to = IcmpListener::start(topo.client_ns());
    let (nw, m) = start(&topo);
    let server = SocketAddr::new(DEST_V4.into(), ECHO_PORT);
    let flow = Flow::open(&topo, server);
    let other = Flow::open(&topo, server);
    let error = |flow: &Flow, tag: &[u8]| {
        IcmpError {
            src: server.ip(),
            dst: flow.client.ip(),
            icmp_type: V4_DEST_UNREACH,
            code: V4_PORT_UNREACH,
            info: 0,
            quote: flow.outgoing(tag, 32),
        }
        .packet()
    };
    let burst: Vec<Vec<u8>> = (0..BURST)
        .map(|i| error(&flow, format!("<burst-{i:02}>").as_bytes()))
        .collect();

    let before = Reasons::read(&m);
    for p in &burst {
        from.send(p).expect("send the crafted error");
    }
    let d = wait_judged(&m, before, BURST);
    assert_eq!(
        d.related + d.rate,
        BURST,
        "every error of the burst passes or is over the rate: counters moved {d:?}"
    );
    let start = Instant::now();
    let arrived = || to.carrying(b"<burst-").len() as u64;
    while arrived() < d.related && start.elapsed() < ALLOWED {
        sleep(Duration::from_millis(20));
    }
    sleep(Duration::from_millis(200));
    println!(
        "burst of {BURST}: {} passed, {} over the rate, {} arrived",
        d.related,
        d.rate,
        arrived()
    );
    assert_eq!(
        arrived(),
        d.related,
        "the client must receive exactly the errors counted as passed"
    );
    assert!(
        (BUDGET..=2 * BUDGET).contains(&d.related),
        "{} of {BURST} errors about one flow passed: the budget is {BUDGET} per window, \
         and a burst straddles at most one window's end",
        d.related
    );

    // Another connection has a budget of its own.
    let tag = b"<other-flow>";
    let d = judged(&m, &from, &error(&other, tag));
    assert_eq!(
        d, RELATED,
        "an error about another flow: counters moved {d:?}"
    );
    assert!(
        to.wait_for(tag, ALLOWED).is_some(),
        "the error about another flow passed but did not arrive"
    );

    // A later window: the first flow's errors pass again.
    sleep(WINDOW + Duration::from_millis(100));
    let tag = b"<later-window>";
    let d = judged(&m, &from, &error(&flow, tag));
    assert_eq!(
        d, RELATED,
        "an error about the first flow a window later: counters moved {d:?}"
    );
    assert!(
        to.wait_for(tag, ALLOWED).is_some(),
        "the error a window later passed but did not arrive"
    );
    nw.stop();
}
