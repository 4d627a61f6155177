//! Latency report (printed; run with `--nocapture`): UDP echo round trips
//! and DNS resolutions, first over the plain-forwarding topology (no
//! neuwerk), then through neuwerk in the same namespaces. No timing
//! assertions: only that every sample was collected.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::sa;
use neuwerk_integration::client::{Host, ALLOWED};
use neuwerk_integration::dns_client::{self, expect_addresses};
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::stats::Percentiles;
use neuwerk_integration::topology::*;
use neuwerk_integration::{DnsOpts, Neuwerk, Topology};

const ECHO_SAMPLES: usize = 2000;
const DNS_SAMPLES: usize = 500;
const WARMUP: usize = 50;

fn echo_rtts(c: Host<'_>, dst: std::net::SocketAddr) -> Vec<Duration> {
    c.udp_echo_rtts(dst, WARMUP, ALLOWED).expect("warm-up");
    let rtts = c
        .udp_echo_rtts(dst, ECHO_SAMPLES, ALLOWED)
        .expect("echo samples");
    assert_eq!(rtts.len(), ECHO_SAMPLES);
    rtts
}

/// Sequential resolutions of `example.com`; panics if any fails.
fn dns_times(c: Host<'_>, server: std::net::SocketAddr) -> Vec<Duration> {
    let times: Vec<Duration> = c.block_on(|| async move {
        let mut times = Vec::with_capacity(DNS_SAMPLES);
        for i in 0..WARMUP + DNS_SAMPLES {
            let start = Instant::now();
            let m = dns_client::query(server, "example.com", RecordType::A, DnsOpts::udp())
                .await
                .unwrap_or_else(|e| panic!("query {i} via {server}: {e:#}"));
            let took = start.elapsed();
            let addrs = expect_addresses(&m).unwrap_or_else(|e| panic!("query {i}: {e:#}"));
            assert_eq!(addrs, vec![std::net::IpAddr::V4(DEST_V4)]);
            if i >= WARMUP {
                times.push(took);
            }
        }
        times
    });
    assert_eq!(times.len(), DNS_SAMPLES);
    times
}

#[test]
fn latency_report() {
    let topo = Topology::new();
    let c = topo.client();
    let echo_v4 = sa(DEST_V4, 5353);
    let echo_v6 = sa(DEST_V6, 5353);

    let base_v4 = Percentiles::of(&echo_rtts(c, echo_v4));
    let base_v6 = Percentiles::of(&echo_rtts(c, echo_v6));
    let base_dns = Percentiles::of(&dns_times(c, UPSTREAM_DNS_V4));

    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    let nw_v4 = Percentiles::of(&echo_rtts(c, echo_v4));
    let nw_v6 = Percentiles::of(&echo_rtts(c, echo_v6));
    let nw_dns = Percentiles::of(&dns_times(c, NEUWERK_DNS_V4));
    nw.stop();

    println!("\nlatency (client ns -> upstream ns; all namespaces share the host's CPUs)");
    println!("UDP echo RTT IPv4, plain forwarding : {base_v4}");
    println!("UDP echo RTT IPv4, through neuwerk  : {nw_v4}");
    println!("UDP echo RTT IPv6, plain forwarding : {base_v6}");
    println!("UDP echo RTT IPv6, through neuwerk  : {nw_v6}");
    println!("DNS example.com, upstream directly  : {base_dns}");
    println!("DNS example.com, via neuwerk        : {nw_dns}");
}
