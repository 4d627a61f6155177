//! Grant lifetime: a grant lives for the answer's TTL (here 2 s), new
//! connections after expiry are dropped, connections opened before expiry
//! keep working, `min_ttl` stretches short TTLs, and a deadline the kernel
//! map lags behind is written before the one it holds runs out.

use std::thread::sleep;
use std::time::{Duration, Instant};

use neuwerk_integration::checks::*;
use neuwerk_integration::client::ALLOWED;
use neuwerk_integration::kernel_maps::grant_deadline_v4;
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::zone::{LONG_TTL, MEDIUM_TTL, SHORT_TTL};
use neuwerk_integration::{DnsOpts, Neuwerk, NeuwerkConfig, Topology};

use hickory_proto::rr::RecordType;

/// Sleeps until `at` (no-op if it has passed).
fn sleep_until(at: Instant) {
    if let Some(d) = at.checked_duration_since(Instant::now()) {
        sleep(d);
    }
}

#[test]
fn grant_expires_but_open_connection_survives() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = Neuwerk::start(&topo, &fixture("policy-dns-only.yaml"));
    let dst = sa(DEST2_V4, 443);
    assert_tcp_blocked(c, dst);

    let resolved_at = Instant::now();
    let m = c
        .dns_query(
            NEUWERK_DNS_V4,
            "short.example.com",
            RecordType::A,
            DnsOpts::udp(),
        )
        .unwrap();
    assert!(
        m.answers.iter().all(|r| r.ttl <= SHORT_TTL),
        "answer TTL must not exceed the upstream's {SHORT_TTL}s: {m:?}"
    );
    // Before expiry: new connections work; keep one open.
    assert_http_ok(c, dst);
    let mut open = c
        .http_connect(dst, ALLOWED)
        .expect("connection before expiry");
    assert_eq!(open.get(ALLOWED).unwrap(), "ok 443");

    // After expiry (TTL 2 s, checked at 3.5 s): new connections are dropped.
    sleep_until(resolved_at + Duration::from_millis(3500));
    assert_tcp_blocked(c, dst);
    // The connection opened before expiry still carries data both ways.
    assert_eq!(open.get(ALLOWED).unwrap(), "ok 443");
    assert_eq!(open.get(ALLOWED).unwrap(), "ok 443");

    // Resolving again grants again.
    assert_resolves(c, NEUWERK_DNS_V4, "short.example.com", &[DEST2_V4.into()]);
    assert_http_ok(c, dst);
    nw.stop();
}

#[test]
fn min_ttl_stretches_short_grants() {
    let topo = Topology::new();
    let c = topo.client();
    let cfg = NeuwerkConfig {
        min_ttl: Duration::from_secs(30),
        ..NeuwerkConfig::default()
    };
    let nw = Neuwerk::start_with(&topo, &cfg, &fixture("policy-dns-only.yaml"));
    let dst = sa(DEST2_V4, 443);
    assert_tcp_blocked(c, dst);
    let resolved_at = Instant::now();
    assert_resolves(c, NEUWERK_DNS_V4, "short.example.com", &[DEST2_V4.into()]);
    sleep_until(resolved_at + Duration::from_millis(3500));
    // TTL 2 s clamped up to 30 s: still allowed.
    assert_http_ok(c, dst);
    nw.stop();
}

/// A name answered while the kernel map already allows its address and
/// ports (another name's grant, over 5 s from its deadline) is not written
/// at once: the map keeps the first deadline, and traffic passes on it.
/// The expiry sweep writes the later deadline 5 s before the first runs
/// out, so the map holds it while the first name is still live.
#[test]
fn a_name_the_map_already_allows_is_written_before_that_runs_out() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = Neuwerk::start(&topo, &fixture("policy-dns-only.yaml"));
    let dst = sa(DEST2_V4, 443);
    assert_tcp_blocked(c, dst);

    let resolved_at = Instant::now();
    assert_resolves(c, NEUWERK_DNS_V4, "medium.example.com", &[DEST2_V4.into()]);
    let first = grant_deadline_v4(nw.pid(), DEST2_V4).expect("medium's grant in the map");
    // Same address, same ports, TTL 300 s: allowed by the entry in place.
    assert_resolves(c, NEUWERK_DNS_V4, "tcp.example.com", &[DEST2_V4.into()]);
    assert_eq!(
        grant_deadline_v4(nw.pid(), DEST2_V4),
        Some(first),
        "the map keeps medium's deadline for now"
    );
    assert_http_ok(c, dst);

    // Written from 5 s before medium's deadline (TTL 8 s), by a sweep
    // twice a second: by 3.5 s; checked at 5 s, before medium expires.
    sleep_until(resolved_at + Duration::from_secs(5));
    let later = grant_deadline_v4(nw.pid(), DEST2_V4).expect("a grant in the map");
    let long = Duration::from_secs(LONG_TTL.into()).as_nanos() as u64;
    assert!(
        later >= first + long / 2,
        "tcp.example.com's deadline is in the map: {later} vs medium's {first}"
    );
    assert!(
        resolved_at.elapsed() < Duration::from_secs(MEDIUM_TTL.into()),
        "checked while medium's own grant was live"
    );
    assert_http_ok(c, dst);
    nw.stop();
}
