//! The neuwerk process itself: clean exit on SIGTERM/SIGINT, clear start-up
//! failures (busy DNS port, missing interface), and robustness against
//! malformed DNS over UDP and TCP.

use std::net::{TcpListener, UdpSocket};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::{DnsOpts, Neuwerk, NeuwerkConfig, Topology};

const EXIT_LIMIT: Duration = Duration::from_secs(15);

#[test]
fn sigterm_exits_zero() {
    let topo = Topology::new();
    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    assert_resolves(
        topo.client(),
        NEUWERK_DNS_V4,
        "example.com",
        &[DEST_V4.into()],
    );
    nw.stop(); // asserts exit status 0
}

#[test]
fn sigint_exits_zero() {
    let topo = Topology::new();
    let mut nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    nw.signal(libc::SIGINT);
    let status = nw.wait_exit(EXIT_LIMIT);
    assert!(
        matches!(status, Some(s) if s.success()),
        "after SIGINT: {status:?}\n{}",
        nw.log_tail(40)
    );
}

#[test]
fn busy_dns_port_fails_start_with_message() {
    let topo = Topology::new();
    let (udp, tcp) = topo.firewall_ns().run(|| {
        let udp = UdpSocket::bind(NEUWERK_DNS_V4).expect("bind UDP 10.100.1.10:53");
        let tcp = TcpListener::bind(NEUWERK_DNS_V4).expect("bind TCP 10.100.1.10:53");
        (udp, tcp)
    });
    {
        let mut nw = Neuwerk::spawn(
            &topo,
            &NeuwerkConfig::default(),
            &fixture("policy-static.yaml"),
        );
        let status = nw.wait_exit(EXIT_LIMIT);
        let logs = nw.logs();
        assert!(
            matches!(status, Some(s) if !s.success()),
            "with 10.100.1.10:53 taken: {status:?}\n{}",
            nw.log_tail(40)
        );
        assert!(
            logs.contains("10.100.1.10:53"),
            "message does not name the address:\n{logs}"
        );
    }
    // Once the port is free, the same config starts.
    drop((udp, tcp));
    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    nw.stop();
}

#[test]
fn missing_interface_fails_start_with_message() {
    let topo = Topology::new();
    let missing_ingress = NeuwerkConfig {
        ingress: "nwx9".into(),
        ..NeuwerkConfig::default()
    };
    let missing_egress = NeuwerkConfig {
        egress: "nwx8".into(),
        ..NeuwerkConfig::default()
    };
    for (cfg, name) in [(missing_ingress, "nwx9"), (missing_egress, "nwx8")] {
        let mut nw = Neuwerk::spawn(&topo, &cfg, &fixture("policy-static.yaml"));
        let status = nw.wait_exit(EXIT_LIMIT);
        let logs = nw.logs();
        assert!(
            matches!(status, Some(s) if !s.success()),
            "with interface {name} missing: {status:?}\n{}",
            nw.log_tail(40)
        );
        assert!(logs.contains(name), "message does not name {name}:\n{logs}");
    }
    // The default config (existing interfaces) starts in the same topology.
    Neuwerk::start(&topo, &fixture("policy-static.yaml")).stop();
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Malformed or hostile DNS messages.
fn bad_messages() -> Vec<Vec<u8>> {
    let header = |flags: [u8; 2], counts: [u16; 4]| {
        let mut h = vec![0x12, 0x34, flags[0], flags[1]];
        for c in counts {
            h.extend_from_slice(&c.to_be_bytes());
        }
        h
    };
    let mut v = vec![
        vec![],
        vec![0],
        vec![0xff; 11],                     // short header
        header([1, 0], [1, 0, 0, 0]),       // question count, no question
        header([1, 0], [0xffff; 4]),        // absurd counts
        header([0x81, 0x80], [0, 0, 0, 0]), // a response, not a query
        header([0x28, 0], [1, 0, 0, 0]),    // opcode UPDATE, truncated
        vec![0xff; 4096],
    ];
    // Compression pointer pointing at itself.
    let mut looped = header([1, 0], [1, 0, 0, 0]);
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    v.push(looped);
    // Label longer than the packet.
    let mut long_label = header([1, 0], [1, 0, 0, 0]);
    long_label.extend_from_slice(&[63, b'a', b'b']);
    v.push(long_label);
    // Name without terminating zero label.
    let mut unterminated = header([1, 0], [1, 0, 0, 0]);
    unterminated.extend_from_slice(&[3, b'c', b'o', b'm']);
    v.push(unterminated);
    for seed in 1..=20 {
        v.push(noise(seed, (seed as usize * 37) % 600));
    }
    v
}

#[test]
fn malformed_dns_does_not_crash() {
    let topo = Topology::new();
    let c = topo.client();
    let mut nw = Neuwerk::start(&topo, &fixture("policy-dns-only.yaml"));
    for server in [NEUWERK_DNS_V4, NEUWERK_DNS_V6] {
        for msg in bad_messages() {
            // Errors (e.g. a refused reply) don't matter: survival is checked below.
            let _ = c.send_raw_udp(server, &msg, Duration::from_millis(50));
        }
        let linger = Duration::from_millis(100);
        let mut tcp_garbage = vec![
            vec![],                    // connect and close
            vec![0],                   // half a length prefix
            vec![0, 0],                // zero-length message
            vec![0xff, 0xff, 1, 2, 3], // 65535 announced, 3 sent
            vec![0, 2, 0xab, 0xcd],    // 2-byte "message"
        ];
        tcp_garbage.extend(bad_messages().into_iter().map(|m| {
            let mut framed = (m.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&m);
            framed
        }));
        tcp_garbage.push(noise(99, 3000));
        for bytes in tcp_garbage {
            let _ = c.send_raw_tcp(server, &bytes, linger);
        }
    }
    assert!(
        nw.is_running(),
        "neuwerk died on malformed DNS\n{}",
        nw.log_tail(40)
    );
    // Still answering over both transports and both families.
    for server in [NEUWERK_DNS_V4, NEUWERK_DNS_V6] {
        for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
            let got = c
                .resolve_with(server, "example.com", RecordType::A, opts)
                .unwrap();
            assert_eq!(got, vec![std::net::IpAddr::V4(DEST_V4)]);
        }
    }
    assert_http_ok(c, sa(DEST_V4, 443));
    nw.stop();
}
