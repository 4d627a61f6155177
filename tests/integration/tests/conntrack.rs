//! Connection tracking: a connection allowed at its first packet lives on
//! past the grant that allowed it until it is idle (`udp_idle`) or closed
//! (`tcp_closing`); ICMP echo is tracked by echo id but only an all-ports,
//! any-protocol rule starts it; ICMP errors about a tracked connection
//! ("related") reach the client.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::{Host, ALLOWED, BLOCKED, FIRST_PACKET};
use neuwerk_integration::dns_client::{expect_addresses, unspecified};
use neuwerk_integration::neuwerk::Conntrack;
use neuwerk_integration::topology::*;
use neuwerk_integration::zone::SHORT_TTL;
use neuwerk_integration::{DnsOpts, Neuwerk, NeuwerkConfig, Topology};

/// Timeout of a ping that must be answered (`ping -W`, seconds).
const PING_ALLOWED_S: &str = "3";
/// Timeout of a ping that must go unanswered (`ping -W`, seconds).
const PING_BLOCKED_S: &str = "1";

/// Conntrack timeouts: `tcp_closing` and `udp_idle` as given, long TCP
/// idle, default ICMP idle.
fn conntrack(tcp_closing: Duration, udp_idle: Duration) -> Conntrack {
    Conntrack {
        tcp_idle: Duration::from_secs(3600),
        tcp_closing,
        udp_idle,
        icmp_idle: Duration::from_secs(30),
    }
}

/// A policy for the client networks with the given rules: one YAML list
/// item (`- { ... }`) per line, leading whitespace ignored.
fn policy(rules: &str) -> String {
    let mut p = String::from(
        "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]\n    policies:\n",
    );
    for line in rules.lines().filter(|l| !l.trim().is_empty()) {
        p.push_str("      ");
        p.push_str(line.trim_start());
        p.push('\n');
    }
    p
}

/// Sleeps until `at` (no-op if it has passed).
fn sleep_until(at: Instant) {
    if let Some(d) = at.checked_duration_since(Instant::now()) {
        sleep(d);
    }
}

/// Resolves `name` (A) through neuwerk and asserts the answer is `expected`
/// with a TTL of at most [`SHORT_TTL`]; returns the time just before the
/// query was sent (the grant's deadline is at most `SHORT_TTL` later).
fn resolve_short(c: Host<'_>, name: &str, expected: Ipv4Addr) -> Instant {
    let at = Instant::now();
    let m = c
        .dns_query(NEUWERK_DNS_V4, name, RecordType::A, DnsOpts::udp())
        .unwrap_or_else(|e| panic!("resolving {name}: {e:#}"));
    let addrs = expect_addresses(&m).unwrap_or_else(|e| panic!("resolving {name}: {e:#}"));
    assert_eq!(addrs, vec![IpAddr::V4(expected)], "addresses of {name}");
    assert!(
        m.answers.iter().all(|r| r.ttl <= SHORT_TTL),
        "answer TTL must not exceed the upstream's {SHORT_TTL}s: {m:?}"
    );
    at
}

/// A UDP socket in the client namespace, connected to `dst`.
fn connected_udp(c: Host<'_>, dst: SocketAddr) -> UdpSocket {
    c.ns().run(|| {
        let s = UdpSocket::bind(unspecified(dst)).expect("bind UDP socket");
        s.connect(dst).expect("connect UDP socket");
        s
    })
}

/// One echo round trip on `sock`: sends `payload`, waits up to `timeout`
/// for the same bytes back (older, late replies are skipped).
fn echo(sock: &UdpSocket, payload: &[u8], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    sock.send(payload).context("send")?;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("no echo within {timeout:?}"))?;
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n] == *payload => return Ok(()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("no echo within {timeout:?}")
            }
            Err(e) => return Err(e).context("recv"),
        }
    }
}

/// Runs `ping -c 1 -W <wait> <dst>` in the client namespace; whether it
/// was answered. Fails the test (never skips) when ping is not installed.
fn ping(topo: &Topology, dst: IpAddr, wait_s: &str) -> bool {
    let which = std::process::Command::new("sh")
        .args(["-c", "command -v ping"])
        .output()
        .expect("run sh");
    assert!(
        which.status.success(),
        "ping (iputils-ping) is not installed: the ICMP echo test needs it \
         (apt-get install iputils-ping)"
    );
    let out = topo
        .client_ns()
        .exec("ping", &["-n", "-c", "1", "-W", wait_s, &dst.to_string()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("ping {dst}: {}", text.lines().nth(1).unwrap_or("").trim());
    out.status.success()
}

/// TCP connection from the client namespace to `dst`, from local port
/// `sport` when given (SO_REUSEADDR, so a tuple can be used again).
fn tcp_from(
    c: Host<'_>,
    sport: Option<u16>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream> {
    c.block_on(|| async move {
        let sock = if dst.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(port) = sport {
            sock.set_reuseaddr(true)?;
            let mut local = unspecified(dst);
            local.set_port(port);
            sock.bind(local).with_context(|| format!("bind {local}"))?;
        }
        let stream = tokio::time::timeout(timeout, sock.connect(dst))
            .await
            .map_err(|_| anyhow!("connect to {dst} timed out after {timeout:?}"))??;
        let std = stream.into_std()?;
        std.set_nonblocking(false)?;
        Ok::<_, anyhow::Error>(std)
    })
    .with_context(|| format!("TCP connect to {dst} from port {sport:?}"))
}

/// `GET /` on `s`; with `close` asks the server to close and waits for its
/// FIN (so the server closes first and the client port is not left in
/// TIME_WAIT). Returns the body.
fn http_get_on(s: &mut TcpStream, close: bool, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: test\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    );
    s.set_write_timeout(Some(timeout))?;
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut read_some = |buf: &mut Vec<u8>| -> Result<usize> {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("timed out"))?;
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    };
    let (head_end, len) = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
                .ok_or_else(|| anyhow!("no content-length in {head:?}"))?;
            if !head.starts_with("http/1.1 200 ") {
                bail!("unexpected answer {head:?}");
            }
            break (i + 4, len);
        }
        if read_some(&mut buf)? == 0 {
            bail!("connection closed by peer");
        }
    };
    while buf.len() < head_end + len {
        if read_some(&mut buf)? == 0 {
            bail!("connection closed by peer");
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    if close {
        // Wait for the server's FIN.
        while read_some(&mut buf)? != 0 {}
    }
    Ok(body)
}

/// A UDP flow allowed by a grant keeps working past the grant's expiry as
/// long as packets flow, and is forgotten once idle longer than
/// `udp_idle`: the same socket (same 5-tuple) is then blocked, as is a
/// fresh socket after expiry.
#[test]
fn udp_flow_outlives_grant_until_idle() {
    let topo = Topology::new();
    let c = topo.client();
    let cfg = NeuwerkConfig {
        conntrack: Some(conntrack(Duration::from_secs(10), Duration::from_secs(2))),
        ..NeuwerkConfig::default()
    };
    let nw = Neuwerk::start_with(
        &topo,
        &cfg,
        &policy("- { hostname: short.example.com, ports: [5353], protocol: udp }"),
    );
    let dst = sa(DEST2_V4, 5353);
    assert_udp_blocked(c, dst);

    let resolved_at = resolve_short(c, "short.example.com", DEST2_V4);
    let sock = connected_udp(c, dst);
    // Echo every 300 ms until 4 s after resolving: the grant (TTL 2 s) ends
    // half way, the tracked flow goes on.
    let mut sent = 0u32;
    let mut after_expiry = 0u32;
    let mut next = Instant::now();
    while next < resolved_at + Duration::from_secs(4) {
        sleep_until(next);
        let t = resolved_at.elapsed();
        echo(&sock, format!("flow-{sent}").as_bytes(), ALLOWED).unwrap_or_else(|e| {
            panic!("echo {sent} at {t:?} after resolving on the tracked flow: {e:#}")
        });
        sent += 1;
        if t > Duration::from_millis(2500) {
            after_expiry += 1;
        }
        next += Duration::from_millis(300);
    }
    assert!(after_expiry >= 3, "only {after_expiry} echoes after expiry");
    println!("{sent} echoes on the tracked flow, {after_expiry} after the grant expired");

    // The grant is gone: a new flow (fresh socket, new source port) is dropped...
    assert_udp_blocked(c, dst);
    // ...while the tracked one still passes (idle < 2 s so far).
    echo(&sock, b"still-tracked", ALLOWED).expect("tracked flow after the fresh socket check");

    // Silent for longer than udp_idle: the same 5-tuple is judged afresh.
    sleep(Duration::from_secs(3));
    let r = echo(&sock, b"after-idle", BLOCKED);
    assert!(
        r.is_err(),
        "the flow passed after 3s idle (udp_idle 2s) with its grant expired"
    );

    // Resolving again grants again: the same socket works (the block was
    // the firewall's, not the echo server's).
    resolve_short(c, "short.example.com", DEST2_V4);
    echo(&sock, b"granted-again", ALLOWED).expect("same socket after a new grant");
    nw.stop();
}

/// ICMP echo is allowed only by a rule allowing all ports of any protocol
/// (ports omitted, protocol any), on IPv4 and IPv6; a TCP-port rule for an
/// address does not let pings through.
#[test]
fn icmp_echo_needs_an_all_ports_rule() {
    let topo = Topology::new();
    let c = topo.client();
    let targets = [
        (IpAddr::V4(DEST_V4), IpAddr::V4(DEST2_V4)),
        (IpAddr::V6(DEST_V6), IpAddr::V6(DEST2_V6)),
    ];
    // Baseline without neuwerk: every target answers pings.
    for (all, tcp_only) in targets {
        for dst in [all, tcp_only] {
            assert!(ping(&topo, dst, PING_ALLOWED_S), "baseline ping {dst}");
        }
    }
    let nw = Neuwerk::start(
        &topo,
        &policy(
            "- { ip: 192.0.2.100 }
             - { ip: 192.0.2.101, ports: [443], protocol: tcp }
             - { ip: \"2001:db8::100\" }
             - { ip: \"2001:db8::101\", ports: [443], protocol: tcp }",
        ),
    );
    for (all, tcp_only) in targets {
        assert!(
            ping(&topo, all, PING_ALLOWED_S),
            "ping {all} (all-ports rule) not answered"
        );
        assert!(
            !ping(&topo, tcp_only, PING_BLOCKED_S),
            "ping {tcp_only} answered although only TCP 443 is allowed"
        );
        // The TCP rule itself is in force.
        assert_http_ok(c, SocketAddr::new(tcp_only, 443));
    }
    nw.stop();
}

/// Why `recv` on a connected UDP socket ended: an ICMP error
/// (`ConnectionRefused`), a reply, or nothing within the timeout.
#[derive(Debug, PartialEq, Eq)]
enum UdpOutcome {
    Refused(Duration),
    Reply,
    Timeout,
}

/// Sends one datagram to `dst` from a fresh connected socket and waits up
/// to `timeout` for what comes back.
fn udp_probe(c: Host<'_>, dst: SocketAddr, timeout: Duration) -> UdpOutcome {
    let sock = connected_udp(c, dst);
    sock.set_read_timeout(Some(timeout)).expect("set timeout");
    let start = Instant::now();
    sock.send(b"anyone?").expect("send");
    let mut buf = [0u8; 64];
    match sock.recv(&mut buf) {
        Ok(_) => UdpOutcome::Reply,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => UdpOutcome::Refused(start.elapsed()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            UdpOutcome::Timeout
        }
        Err(e) => panic!("recv from {dst}: unexpected error {e}"),
    }
}

/// An ICMP port unreachable about a tracked UDP flow (allowed by a static
/// port-range rule) passes back to the client, which sees
/// `ConnectionRefused` at once instead of a timeout; to a port outside
/// the range the datagram is dropped and no error ever comes. IPv4 and
/// IPv6.
#[test]
fn icmp_port_unreachable_for_tracked_udp_passes() {
    let topo = Topology::new();
    let c = topo.client();
    // Nothing listens on UDP 5399 or 5401 upstream (echo: 5353 and 443).
    let cases = [IpAddr::V4(DEST_V4), IpAddr::V6(DEST_V6)];
    // Baseline without neuwerk: both ports are refused by the upstream.
    for ip in cases {
        for port in [5399, 5401] {
            let dst = SocketAddr::new(ip, port);
            let r = udp_probe(c, dst, ALLOWED);
            assert!(
                matches!(r, UdpOutcome::Refused(_)),
                "baseline UDP to {dst}: {r:?}"
            );
        }
    }
    let nw = Neuwerk::start(
        &topo,
        &policy(
            "- { ip: 192.0.2.100, ports: [\"5300-5400\"], protocol: udp }
             - { ip: \"2001:db8::100\", ports: [\"5300-5400\"], protocol: udp }",
        ),
    );
    for ip in cases {
        let inside = SocketAddr::new(ip, 5399);
        match udp_probe(c, inside, ALLOWED) {
            UdpOutcome::Refused(took) => {
                println!("UDP to {inside}: refused after {took:?}");
                assert!(
                    took < BLOCKED,
                    "port unreachable for {inside} took {took:?}"
                );
            }
            other => panic!(
                "UDP to {inside} (allowed, nothing listening): expected ICMP port unreachable \
                 to reach the client, got {other:?}"
            ),
        }
        let outside = SocketAddr::new(ip, 5401);
        let r = udp_probe(c, outside, BLOCKED);
        assert_eq!(
            r,
            UdpOutcome::Timeout,
            "UDP to {outside} (outside the allowed range) must be dropped"
        );
        // The range rule passes real traffic too.
        assert_udp_ok(c, SocketAddr::new(ip, 5353));
    }
    nw.stop();
}

/// A TCP connection opened under a grant keeps working after the grant
/// expired; once closed (FIN both ways) it is forgotten: neither a new
/// connection nor a new SYN on the very same 5-tuple gets in (right after
/// the close, while the entry is closing, nor after `tcp_closing`), until
/// the name is resolved again.
#[test]
fn tcp_closed_connection_is_forgotten() {
    let topo = Topology::new();
    let c = topo.client();
    let cfg = NeuwerkConfig {
        conntrack: Some(conntrack(Duration::from_secs(1), Duration::from_secs(60))),
        ..NeuwerkConfig::default()
    };
    let nw = Neuwerk::start_with(
        &topo,
        &cfg,
        &policy("- { hostname: short.example.com, ports: [443], protocol: tcp }"),
    );
    let dst = sa(DEST2_V4, 443);
    // A fixed client port outside the ephemeral range, to reuse the tuple.
    let sport = Some(24443);
    assert_tcp_blocked(c, dst);

    let resolved_at = resolve_short(c, "short.example.com", DEST2_V4);
    // Under the grant: open, use, close (server first), and reopen on the
    // same tuple: tuple reuse works here, so a later failure is the firewall's.
    let mut first = tcp_from(c, sport, dst, FIRST_PACKET).expect("first connection");
    assert_eq!(http_get_on(&mut first, false, ALLOWED).unwrap(), "ok 443");
    assert_eq!(http_get_on(&mut first, true, ALLOWED).unwrap(), "ok 443");
    drop(first);
    let mut conn = tcp_from(c, sport, dst, FIRST_PACKET)
        .expect("reopening the same tuple while the grant is valid");
    assert_eq!(http_get_on(&mut conn, false, ALLOWED).unwrap(), "ok 443");
    assert!(
        resolved_at.elapsed() < Duration::from_secs(u64::from(SHORT_TTL)),
        "setup too slow: the grant may have expired before the connection was open"
    );

    // Grant expired: the open connection still works, new ones are dropped.
    sleep_until(resolved_at + Duration::from_millis(3500));
    assert_eq!(
        http_get_on(&mut conn, false, ALLOWED).expect("tracked connection after grant expiry"),
        "ok 443"
    );
    assert_tcp_blocked(c, dst);
    assert_eq!(
        http_get_on(&mut conn, false, ALLOWED).expect("tracked connection, second use"),
        "ok 443"
    );

    // Close it (server FIN, client FIN): the tuple is not reusable, neither
    // at once (entry closing) nor after tcp_closing (entry stale).
    assert_eq!(http_get_on(&mut conn, true, ALLOWED).unwrap(), "ok 443");
    drop(conn);
    let r = tcp_from(c, sport, dst, BLOCKED);
    assert!(
        r.is_err(),
        "a new SYN on the just-closed tuple passed although the grant expired"
    );
    sleep(Duration::from_secs(2));
    assert_tcp_blocked(c, dst);
    let r = tcp_from(c, sport, dst, BLOCKED);
    assert!(
        r.is_err(),
        "the closed tuple passed 2s after close (tcp_closing 1s)"
    );

    // Resolving again allows the same tuple again.
    resolve_short(c, "short.example.com", DEST2_V4);
    let mut again = tcp_from(c, sport, dst, ALLOWED).expect("same tuple after a new grant");
    assert_eq!(http_get_on(&mut again, false, ALLOWED).unwrap(), "ok 443");
    nw.stop();
}
