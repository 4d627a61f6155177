//! Policy reloads under traffic: a reload that keeps a destination allowed
//! drops no packet of its open connections and never refuses a new one
//! while the generation swaps; a reload that removes a static rule cuts the
//! connections it allowed at once, leaving the others alone.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use neuwerk_integration::checks::*;
use neuwerk_integration::client::{Host, ALLOWED, BLOCKED, FIRST_PACKET};
use neuwerk_integration::dns_client::unspecified;
use neuwerk_integration::topology::*;
use neuwerk_integration::{Neuwerk, Topology};

/// Reloads in the continuity test (alternating B, A, B, ...).
const RELOADS: usize = 20;
/// Pace of the echoes on the long-lived UDP flow.
const ECHO_EVERY: Duration = Duration::from_millis(5);
/// An echo not answered within this is counted as lost.
const ECHO_TIMEOUT: Duration = Duration::from_secs(1);
/// Pace of the new connections opened during the reloads.
const NEW_EVERY: Duration = Duration::from_millis(50);
/// Minimum time between two reloads.
const RELOAD_GAP: Duration = Duration::from_millis(100);
/// How long a SIGHUP may take to be logged as applied.
const RELOAD_LOGGED: Duration = Duration::from_secs(5);

const HEAD: &str =
    "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24, \"fd00:100:1::/64\"]\n    policies:\n";

/// A: static UDP echo to 192.0.2.100 and example.com (192.0.2.100) TCP 443.
fn policy_a() -> String {
    format!(
        "{HEAD}      - {{ ip: 192.0.2.100, ports: [5353], protocol: udp }}\n      \
         - {{ hostname: example.com, ports: [443], protocol: tcp }}\n"
    )
}

/// B: A plus unrelated rules; the /24 also changes the ports the kernel's
/// row for 192.0.2.100/32 carries (covering prefixes are merged in).
fn policy_b() -> String {
    format!(
        "{}      - {{ ip: 192.0.2.0/24, ports: [8443], protocol: tcp }}\n      \
         - {{ hostname: new.example.com, ports: [443] }}\n",
        policy_a()
    )
}

/// Removes ANSI colour sequences (the log is written by a tracing
/// formatter that may colour field names).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The log lines of applied reloads triggered by SIGHUP.
fn sighup_reloads(nw: &Neuwerk<'_>) -> Vec<String> {
    strip_ansi(&nw.logs())
        .lines()
        .filter(|l| l.contains("policy reloaded (SIGHUP)"))
        .map(str::to_owned)
        .collect()
}

/// The number after `key=` in a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Replaces the policy, sends SIGHUP and waits until the reload is logged
/// (the SIGHUP reload count exceeds `before`); returns its log line.
fn reload_and_wait(nw: &mut Neuwerk<'_>, text: &str, before: usize) -> String {
    nw.replace_policy(text, true);
    let start = Instant::now();
    loop {
        let lines = sighup_reloads(nw);
        if lines.len() > before {
            return lines[before].clone();
        }
        assert!(
            start.elapsed() < RELOAD_LOGGED,
            "reload {} not logged after {RELOAD_LOGGED:?}\n{}",
            before + 1,
            nw.log_tail(30)
        );
        sleep(Duration::from_millis(10));
    }
}

/// A UDP socket in the client namespace, connected to `dst`.
fn connected_udp(c: Host<'_>, dst: SocketAddr) -> UdpSocket {
    c.ns().run(|| {
        let s = UdpSocket::bind(unspecified(dst)).expect("bind UDP socket");
        s.connect(dst).expect("connect UDP socket");
        s
    })
}

/// One echo round trip; late replies to earlier payloads are skipped.
fn echo(sock: &UdpSocket, payload: &[u8], timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    sock.send(payload).context("send")?;
    let mut buf = [0u8; 64];
    loop {
        let left = timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("no echo within {timeout:?}"))?;
        sock.set_read_timeout(Some(left))?;
        match sock.recv(&mut buf) {
            Ok(n) if buf[..n] == *payload => return Ok(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("no echo within {timeout:?}")
            }
            Err(e) => return Err(e).context("recv"),
        }
    }
}

/// A new TCP connection whose first SYN must not be lost (connect within
/// [`FIRST_PACKET`]) and whose request is answered, then closed.
fn new_tcp(c: Host<'_>, dst: SocketAddr) -> Result<()> {
    let mut conn = c.http_connect(dst, FIRST_PACKET)?;
    let body = conn.get(ALLOWED)?;
    if body != format!("ok {}", dst.port()) {
        bail!("unexpected body {body:?}");
    }
    Ok(())
}

/// Twenty reloads alternating between two policies that both allow a
/// static UDP echo destination and a granted name: the long-lived UDP flow
/// (an echo every 5 ms) loses no packet, every new UDP flow and new TCP
/// connection opened meanwhile (every 50 ms) succeeds at its first packet,
/// a keep-alive TCP connection survives, no connection is closed by any
/// reload, and the reloads do take effect.
#[test]
fn reloads_drop_no_packet_of_allowed_connections() {
    let topo = Topology::new();
    let c = topo.client();
    let (a, b) = (policy_a(), policy_b());
    let mut nw = Neuwerk::start(&topo, &a);
    let udp_dst = sa(DEST_V4, 5353);
    let tcp_dst = sa(DEST_V4, 443);
    let b_only = sa(DEST_V4, 8443);

    // Before resolving, the granted port is closed; policy A has no 8443.
    assert_tcp_blocked(c, tcp_dst);
    assert_tcp_blocked(c, b_only);
    assert_resolves(c, NEUWERK_DNS_V4, "example.com", &[DEST_V4.into()]);
    let mut keep_alive = c
        .http_connect(tcp_dst, ALLOWED)
        .expect("keep-alive connection");
    assert_eq!(keep_alive.get(ALLOWED).unwrap(), "ok 443");
    let flow = connected_udp(c, udp_dst);
    echo(&flow, b"warm-up", ALLOWED).expect("UDP flow before the reloads");

    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::<String>::new());
    let fail = |what: String| failures.lock().unwrap().push(what);
    let mut reload_lines = Vec::new();
    let (echo_stats, new_stats) = std::thread::scope(|s| {
        let echoes = s.spawn(|| {
            let (mut sent, mut lost) = (0u64, 0u64);
            let mut worst = Duration::ZERO;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    sleep(d);
                }
                next += ECHO_EVERY;
                let payload = sent.to_be_bytes();
                sent += 1;
                match echo(&flow, &payload, ECHO_TIMEOUT) {
                    Ok(rtt) => worst = worst.max(rtt),
                    Err(e) => {
                        lost += 1;
                        fail(format!("echo {} on the open flow: {e:#}", sent - 1));
                        next = Instant::now();
                    }
                }
            }
            (sent, lost, worst)
        });
        let news = s.spawn(|| {
            let (mut udp, mut tcp) = (0u64, 0u64);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    sleep(d);
                }
                next = Instant::now() + NEW_EVERY;
                udp += 1;
                if let Err(e) = c.udp_echo(udp_dst, b"new-flow", ALLOWED) {
                    fail(format!("new UDP flow {udp} to {udp_dst}: {e:#}"));
                }
                tcp += 1;
                if let Err(e) = new_tcp(c, tcp_dst) {
                    fail(format!("new TCP connection {tcp} to {tcp_dst}: {e:#}"));
                }
            }
            (udp, tcp)
        });

        sleep(Duration::from_millis(200));
        for i in 0..RELOADS {
            let started = Instant::now();
            let text = if i % 2 == 0 { &b } else { &a };
            reload_lines.push(reload_and_wait(&mut nw, text, i));
            if let Some(d) = RELOAD_GAP.checked_sub(started.elapsed()) {
                sleep(d);
            }
        }
        sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        (
            echoes.join().expect("echo thread"),
            news.join().expect("new-connection thread"),
        )
    });
    let (sent, lost, worst) = echo_stats;
    let (new_udp, new_tcp_count) = new_stats;
    println!(
        "{RELOADS} reloads: open UDP flow {sent} echoes sent, {lost} lost (slowest {worst:?}); \
         {new_udp} new UDP flows, {new_tcp_count} new TCP connections"
    );
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures during {RELOADS} reloads (of {sent} echoes, {new_udp} new UDP flows, \
         {new_tcp_count} new TCP connections):\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        nw.log_tail(30)
    );
    assert_eq!(lost, 0);
    assert!(
        sent >= 100 && new_udp >= RELOADS as u64 && new_tcp_count >= RELOADS as u64,
        "too little traffic to judge: {sent} echoes, {new_udp} UDP, {new_tcp_count} TCP"
    );
    for (i, line) in reload_lines.iter().enumerate() {
        assert_eq!(
            field(line, "connections_closed"),
            Some(0),
            "reload {i} closed connections of still-allowed traffic: {line}"
        );
        assert_eq!(
            field(line, "grants_revoked"),
            Some(0),
            "reload {i} revoked grants of a name allowed in both policies: {line}"
        );
    }

    // The open connections are still fine.
    assert_eq!(
        keep_alive
            .get(ALLOWED)
            .expect("keep-alive connection after the reloads"),
        "ok 443"
    );
    echo(&flow, b"after", ALLOWED).expect("UDP flow after the reloads");
    // The reloads took effect: last was A (no 8443); one more gives B.
    assert_tcp_blocked(c, b_only);
    reload_and_wait(&mut nw, &b, RELOADS);
    assert_http_ok(c, b_only);
    nw.stop();
}

/// A reload that removes a static rule cuts the connections it allowed at
/// once (a keep-alive TCP connection and a UDP flow to 192.0.2.100 get no
/// answer), while a connection granted through a name that both policies
/// allow keeps working.
#[test]
fn reload_revokes_tracked_connection_of_removed_static_rule() {
    let topo = Topology::new();
    let c = topo.client();
    let granted_rule = "      - { hostname: one.example.net, ports: [443], protocol: tcp }\n";
    let before = format!(
        "{HEAD}      - {{ ip: 192.0.2.100, ports: [443], protocol: tcp }}\n      \
         - {{ ip: 192.0.2.100, ports: [5353], protocol: udp }}\n{granted_rule}"
    );
    let after = format!("{HEAD}{granted_rule}");
    let mut nw = Neuwerk::start(&topo, &before);
    let static_dst = sa(DEST_V4, 443);
    let granted_dst = sa(DEST2_V4, 443);

    assert_resolves(c, NEUWERK_DNS_V4, "one.example.net", &[DEST2_V4.into()]);
    let mut granted = c
        .http_connect(granted_dst, ALLOWED)
        .expect("granted connection");
    assert_eq!(granted.get(ALLOWED).unwrap(), "ok 443");
    let mut static_conn = c
        .http_connect(static_dst, ALLOWED)
        .expect("static connection");
    assert_eq!(static_conn.get(ALLOWED).unwrap(), "ok 443");
    let flow = connected_udp(c, sa(DEST_V4, 5353));
    echo(&flow, b"before", ALLOWED).expect("UDP flow before the reload");

    let line = reload_and_wait(&mut nw, &after, 0);
    println!("{line}");
    // At once: the very next request and datagram get no answer.
    let r = static_conn.get(BLOCKED);
    assert!(
        r.is_err(),
        "the connection of the removed rule still answers: {r:?}"
    );
    let r = echo(&flow, b"after", BLOCKED);
    assert!(r.is_err(), "the UDP flow of the removed rule still passes");
    assert_eq!(
        field(&line, "connections_closed"),
        Some(2),
        "expected exactly the TCP connection and the UDP flow to be closed: {line}"
    );
    assert_tcp_blocked(c, static_dst);
    // The granted connection is untouched, and the grant itself too.
    assert_eq!(
        granted
            .get(ALLOWED)
            .expect("granted connection after the reload"),
        "ok 443"
    );
    assert_http_ok(c, granted_dst);
    nw.stop();
}
