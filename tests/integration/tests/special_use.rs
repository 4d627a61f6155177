//! Special-use addresses in allowed answers (loopback, link-local, the
//! node's own, the resolver's, the policy's networks, private ranges, ...)
//! are never granted: the client gets the answer without them and cannot
//! reach them, while a public address of the same answer is granted as
//! usual; `allow_private` opens its prefixes for its network, and static
//! rules stay explicit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::ALLOWED;
use neuwerk_integration::dns_client::{addresses, rcode};
use neuwerk_integration::mgmt::{CliStream, Mgmt};
use neuwerk_integration::neuwerk::policy_check;
use neuwerk_integration::topology::*;
use neuwerk_integration::zone::LONG_TTL;
use neuwerk_integration::{DnsOpts, Host, MockRecord, Neuwerk, Topology};

const MGMT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3000);

/// A port with a listener on the node (a probe server) and upstream (the
/// HTTP mock listens on every address there).
const PORT: u16 = 8443;
/// Another port with listeners on both: no static rule opens it.
const OTHER_PORT: u16 = 8080;

/// Private, shared and unique-local addresses the upstream namespace
/// hosts, so that a grant for them would make them reachable.
const PRIVATE_V4: Ipv4Addr = Ipv4Addr::new(172, 16, 5, 1);
const SHARED_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const ULA_V6: Ipv6Addr = Ipv6Addr::new(0xfd12, 0, 0, 0, 0, 0, 0, 1);
/// Opened by `allow_private` in [`ALLOW_PRIVATE_POLICY`].
const LAB_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);

/// Every name below special.test allowed on every port: a rule without
/// ports, the case where a special-use grant would open the most.
const POLICY: &str = r#"networks:
  - name: clients
    cidrs: [10.100.1.0/24, "fd00:100:1::/64"]
    policies:
      - hostname: "**.special.test"
"#;

/// The same, opening 10.200.0.0/16 and the upstream-facing subnet (which
/// holds the node's and the resolver's addresses: never opened), with
/// static rules to the node and the resolver on one port.
const ALLOW_PRIVATE_POLICY: &str = r#"networks:
  - name: clients
    cidrs: [10.100.1.0/24, "fd00:100:1::/64"]
    allow_private: [10.200.0.0/16, 10.100.2.0/24]
    policies:
      - hostname: "**.special.test"
      - ip: 10.100.2.10
        ports: [8443]
      - ip: 10.100.2.100
        ports: [8443]
"#;

fn a(ip: Ipv4Addr) -> MockRecord {
    MockRecord::A(ip, LONG_TTL)
}

fn aaaa(ip: Ipv6Addr) -> MockRecord {
    MockRecord::Aaaa(ip, LONG_TTL)
}

/// (name, records, class as metrics and the monitor show it): one name
/// per class, both families where the class has both.
fn special_names() -> Vec<(&'static str, Vec<MockRecord>, &'static str)> {
    vec![
        (
            "loopback.special.test",
            vec![a(Ipv4Addr::LOCALHOST), aaaa(Ipv6Addr::LOCALHOST)],
            "loopback",
        ),
        (
            "unspecified.special.test",
            vec![a(Ipv4Addr::UNSPECIFIED), aaaa(Ipv6Addr::UNSPECIFIED)],
            "unspecified",
        ),
        (
            "metadata.special.test",
            vec![
                a(Ipv4Addr::new(169, 254, 169, 254)),
                aaaa("fe80::1".parse().unwrap()),
            ],
            "link_local",
        ),
        (
            "multicast.special.test",
            vec![
                a(Ipv4Addr::new(224, 0, 0, 1)),
                aaaa("ff02::1".parse().unwrap()),
            ],
            "multicast",
        ),
        (
            "broadcast.special.test",
            vec![a(Ipv4Addr::BROADCAST)],
            "broadcast",
        ),
        (
            "reserved.special.test",
            vec![a(Ipv4Addr::new(240, 0, 0, 1))],
            "reserved",
        ),
        (
            "mapped.special.test",
            vec![aaaa(EGRESS_V4.to_ipv6_mapped())],
            "ipv4_mapped",
        ),
        (
            "node.special.test",
            vec![a(EGRESS_V4), a(INGRESS_V4), aaaa(EGRESS_V6)],
            "node",
        ),
        ("resolver.special.test", vec![a(UPSTREAM_V4)], "resolver"),
        (
            "network.special.test",
            vec![a(Ipv4Addr::new(10, 100, 1, 55))],
            "policy_network",
        ),
        ("private.special.test", vec![a(PRIVATE_V4)], "private"),
        ("shared.special.test", vec![a(SHARED_V4)], "shared"),
        ("ula.special.test", vec![aaaa(ULA_V6)], "unique_local"),
    ]
}

/// Hosts the private, shared, unique-local and lab addresses upstream,
/// and starts listeners on the node's own addresses.
fn extra_hosts(topo: &Topology) -> neuwerk_integration::ProbeServer {
    for cidr in ["172.16.5.1/32", "100.64.0.1/32", "10.200.0.1/32"] {
        topo.upstream_ns().ip(&["addr", "add", cidr, "dev", "lo"]);
    }
    topo.upstream_ns()
        .ip(&["addr", "add", "fd12::1/128", "dev", "lo", "nodad"]);
    let node: Vec<SocketAddr> = [
        IpAddr::V4(EGRESS_V4),
        IpAddr::V4(INGRESS_V4),
        IpAddr::V6(EGRESS_V6),
    ]
    .into_iter()
    .flat_map(|ip| [sa(ip, PORT), sa(ip, OTHER_PORT)])
    .collect();
    topo.firewall()
        .start_probe_server(&node)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Asks `name` for `rtype` through neuwerk: NOERROR, and the addresses.
#[track_caller]
fn answer(c: Host<'_>, name: &str, rtype: RecordType) -> Vec<IpAddr> {
    let m = c
        .dns_query(NEUWERK_DNS_V4, name, rtype, DnsOpts::udp())
        .unwrap_or_else(|e| panic!("{name} {rtype}: {e:#}"));
    assert_eq!(rcode(&m), ResponseCode::NoError, "{name} {rtype}: {m:?}");
    addresses(&m)
}

/// Asserts, in parallel, that TCP from the client to each of `addrs` is
/// blocked.
fn assert_all_blocked(c: Host<'_>, addrs: &[SocketAddr]) {
    std::thread::scope(|s| {
        for &addr in addrs {
            s.spawn(move || assert_tcp_blocked(c, addr));
        }
    });
}

/// The granted addresses the admin API lists.
fn granted(topo: &Topology) -> Vec<String> {
    let r = Mgmt::new(topo.firewall_ns(), MGMT, None)
        .get("/api/v1/grants")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let list = v["grants"].as_array().unwrap();
    list.iter()
        .map(|g| g["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn special_use_answers_are_neither_relayed_nor_granted() {
    let topo = Topology::new();
    let c = topo.client();
    let _probes = extra_hosts(&topo);
    let names = special_names();
    for (name, records, _) in &names {
        topo.dns().set_records(name, records.clone());
    }
    topo.dns().set_records(
        "mixed.special.test",
        vec![a(EGRESS_V4), a(DEST_V4), a(PRIVATE_V4)],
    );
    let nw = Neuwerk::start(&topo, POLICY);
    let mon = CliStream::start(
        topo.firewall_ns(),
        &[
            "monitor",
            "--api",
            "http://127.0.0.1:3000",
            "--kind",
            "filtered",
        ],
    )
    .unwrap();

    // Every class, asked for both types: answered, without the addresses.
    for (name, records, _) in &names {
        for rtype in [RecordType::A, RecordType::AAAA] {
            let got = answer(c, name, rtype);
            assert!(got.is_empty(), "{name} {rtype} relayed {got:?}");
        }
        // The upstream did answer them (the records were filtered).
        assert!(!records.is_empty());
        assert!(!topo.dns().queries_for(name).is_empty(), "{name} forwarded");
    }
    // A mixed answer: the public address is relayed and granted.
    let got = answer(c, "mixed.special.test", RecordType::A);
    assert_eq!(got, [IpAddr::V4(DEST_V4)]);
    assert_eq!(granted(&topo), [DEST_V4.to_string()]);
    assert_http_ok(c, sa(DEST_V4, 443));

    // None of them is reachable: the node, the resolver, private, shared
    // and unique-local addresses all have listeners.
    let mut unreachable: Vec<SocketAddr> = [
        IpAddr::V4(EGRESS_V4),
        IpAddr::V4(INGRESS_V4),
        IpAddr::V6(EGRESS_V6),
        IpAddr::V4(UPSTREAM_V4),
        IpAddr::V4(PRIVATE_V4),
        IpAddr::V4(SHARED_V4),
        IpAddr::V6(ULA_V6),
    ]
    .into_iter()
    .map(|ip| sa(ip, PORT))
    .collect();
    unreachable.push(sa(UPSTREAM_V4, OTHER_PORT));
    assert_all_blocked(c, &unreachable);

    // Counted per class, shown in the monitor, logged.
    let m = Mgmt::new(topo.firewall_ns(), MGMT, None);
    for (_, _, class) in &names {
        let labels = [("network", "clients"), ("class", *class)];
        let n = m.metric("neuwerk_dns_records_filtered", &labels).unwrap();
        assert!(n >= 1.0, "{class}: {n}");
    }
    assert_eq!(
        m.metric("neuwerk_dns_records_filtered", &[("class", "node")])
            .unwrap(),
        4.0,
        "node.special.test's three and mixed's one"
    );
    let line = mon.wait_line(
        &[
            "DNS FILTERED clients",
            "metadata.special.test",
            "169.254.169.254 (link_local)",
        ],
        Duration::from_secs(1),
    );
    // The monitor may connect after the first queries: ask again.
    let line = line.or_else(|| {
        answer(c, "metadata.special.test", RecordType::A);
        mon.wait_line(
            &[
                "DNS FILTERED clients",
                "metadata.special.test",
                "169.254.169.254",
            ],
            Duration::from_secs(2),
        )
    });
    assert!(line.is_some(), "no FILTERED line in the monitor");
    assert!(
        nw.logs().contains("special-use address not learned"),
        "{}",
        nw.log_tail(20)
    );
    assert_eq!(granted(&topo), [DEST_V4.to_string()]);
    nw.stop();
}

#[test]
fn allow_private_opens_its_prefix_and_static_rules_stay_explicit() {
    let topo = Topology::new();
    let c = topo.client();
    let _probes = extra_hosts(&topo);
    topo.dns()
        .set_records("lab.special.test", vec![a(LAB_V4), a(PRIVATE_V4)]);
    topo.dns()
        .set_records("node.special.test", vec![a(EGRESS_V4)]);
    topo.dns()
        .set_records("resolver.special.test", vec![a(UPSTREAM_V4)]);
    let nw = Neuwerk::start(&topo, ALLOW_PRIVATE_POLICY);

    // Before any answer: the lab address is blocked like any other.
    assert_tcp_blocked(c, sa(LAB_V4, PORT));
    assert_eq!(
        answer(c, "lab.special.test", RecordType::A),
        [IpAddr::V4(LAB_V4)]
    );
    c.tcp_connect(sa(LAB_V4, PORT), ALLOWED)
        .expect("the opened private address is granted");
    assert_tcp_blocked(c, sa(PRIVATE_V4, PORT));

    // The node and the resolver, inside the opened 10.100.2.0/24: still
    // left out, and not granted (a grant would open every port).
    assert!(answer(c, "node.special.test", RecordType::A).is_empty());
    assert!(answer(c, "resolver.special.test", RecordType::A).is_empty());
    assert_all_blocked(c, &[sa(EGRESS_V4, OTHER_PORT), sa(UPSTREAM_V4, OTHER_PORT)]);
    // Static rules open them explicitly, on their port only: the
    // listeners blocked above are reachable when the policy says so.
    c.tcp_connect(sa(EGRESS_V4, PORT), ALLOWED)
        .expect("the static rule to the node's address");
    c.tcp_connect(sa(UPSTREAM_V4, PORT), ALLOWED)
        .expect("the static rule to the resolver's address");
    assert_eq!(granted(&topo), [LAB_V4.to_string()]);

    // `policy check` says what stays closed, and what allow_private opens.
    let out = policy_check(nw.policy_path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for part in [
        "127.0.0.0/8, ::1/128 (loopback)",
        "169.254.0.0/16, fe80::/10 (link_local)",
        "dns.upstreams",
        "network clients: 10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16, fc00::/7, \
         except 10.100.2.0/24, 10.200.0.0/16 (allow_private)",
    ] {
        assert!(text.contains(part), "{part:?} not in\n{text}");
    }
    nw.stop();
}
