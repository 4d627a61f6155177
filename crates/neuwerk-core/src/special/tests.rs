use std::net::IpAddr;

use super::*;
use crate::policy::{parse_policy, ParsedPolicy};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Two networks: `clients` (no allow_private) and `lab`, which opens
/// 10.20.0.0/16, the whole of IPv4 and fd00:20::/32.
const POLICY: &str = r#"networks:
  - name: clients
    cidrs: [10.100.1.0/24, "fd00:100:1::/64", 203.0.113.0/24]
  - name: lab
    cidr: 10.50.0.0/16
    allow_private: [10.20.0.0/16, 0.0.0.0/0, "fd00:20::/32"]
"#;

fn policy() -> ParsedPolicy {
    parse_policy(POLICY, "p.yaml").unwrap()
}

fn node() -> NodeAddrs {
    NodeAddrs::new(
        [
            ip("10.100.2.10"),
            ip("fd00:100:2::10"),
            ip("::ffff:10.20.0.10"),
        ],
        [ip("10.20.0.53"), ip("2606:4700::1111")],
    )
}

/// The class of `addr` in an answer to the network at `index`.
fn class(p: &ParsedPolicy, index: usize, addr: &str) -> Option<SpecialClass> {
    let learning = p.learning().network(index).unwrap();
    classify(ip(addr), &node(), learning)
}

#[test]
fn fixed_classes_of_both_families() {
    let p = policy();
    let cases = [
        ("127.0.0.1", SpecialClass::Loopback),
        ("127.255.0.9", SpecialClass::Loopback),
        ("::1", SpecialClass::Loopback),
        ("0.0.0.0", SpecialClass::Unspecified),
        ("0.1.2.3", SpecialClass::Unspecified),
        ("::", SpecialClass::Unspecified),
        ("169.254.169.254", SpecialClass::LinkLocal),
        ("fe80::1", SpecialClass::LinkLocal),
        ("febf:ffff::1", SpecialClass::LinkLocal),
        ("224.0.0.1", SpecialClass::Multicast),
        ("239.255.255.250", SpecialClass::Multicast),
        ("ff02::1", SpecialClass::Multicast),
        ("255.255.255.255", SpecialClass::Broadcast),
        ("240.0.0.1", SpecialClass::Reserved),
        ("255.255.255.254", SpecialClass::Reserved),
        ("::ffff:10.0.0.1", SpecialClass::Ipv4Mapped),
        ("::ffff:8.8.8.8", SpecialClass::Ipv4Mapped),
        ("::10.0.0.1", SpecialClass::Ipv4Mapped),
    ];
    for (addr, want) in cases {
        assert_eq!(class(&p, 0, addr), Some(want), "{addr}");
        // allow_private 0.0.0.0/0 opens none of them.
        assert_eq!(class(&p, 1, addr), Some(want), "{addr} for lab");
    }
}

#[test]
fn private_shared_and_unique_local() {
    let p = policy();
    let cases = [
        ("10.0.0.1", SpecialClass::Private),
        ("172.16.0.1", SpecialClass::Private),
        ("172.31.255.255", SpecialClass::Private),
        ("192.168.1.1", SpecialClass::Private),
        ("100.64.0.1", SpecialClass::Shared),
        ("100.127.255.255", SpecialClass::Shared),
        ("fd12:3456::1", SpecialClass::UniqueLocal),
        ("fc00::1", SpecialClass::UniqueLocal),
    ];
    for (addr, want) in cases {
        assert_eq!(class(&p, 0, addr), Some(want), "{addr}");
    }
    for public in [
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "192.0.2.100",
        "223.255.255.255",
        "2606:4700::6810:84e5",
        "fe00::1",
    ] {
        assert_eq!(class(&p, 0, public), None, "{public}");
    }
}

#[test]
fn the_node_and_its_resolvers() {
    let p = policy();
    assert_eq!(class(&p, 0, "10.100.2.10"), Some(SpecialClass::Node));
    assert_eq!(class(&p, 0, "fd00:100:2::10"), Some(SpecialClass::Node));
    // Given mapped, kept as the IPv4 address it carries.
    assert_eq!(class(&p, 0, "10.20.0.10"), Some(SpecialClass::Node));
    assert_eq!(class(&p, 0, "10.20.0.53"), Some(SpecialClass::Resolver));
    // A public resolver is still a resolver.
    assert_eq!(
        class(&p, 0, "2606:4700::1111"),
        Some(SpecialClass::Resolver)
    );
    // lab opens 10.20.0.0/16, but neither the node nor the resolver in it.
    assert_eq!(class(&p, 1, "10.20.0.10"), Some(SpecialClass::Node));
    assert_eq!(class(&p, 1, "10.20.0.53"), Some(SpecialClass::Resolver));
    assert_eq!(class(&p, 1, "10.20.0.54"), None);
}

#[test]
fn policy_networks_are_never_learned_unless_opened() {
    let p = policy();
    // Another network's CIDR, the network's own, and a public CIDR of it.
    assert_eq!(class(&p, 0, "10.50.3.4"), Some(SpecialClass::PolicyNetwork));
    assert_eq!(
        class(&p, 0, "10.100.1.7"),
        Some(SpecialClass::PolicyNetwork)
    );
    assert_eq!(
        class(&p, 0, "203.0.113.9"),
        Some(SpecialClass::PolicyNetwork)
    );
    assert_eq!(
        class(&p, 0, "fd00:100:1::99"),
        Some(SpecialClass::PolicyNetwork)
    );
    // lab opens all of IPv4: the IPv4 networks too, not the IPv6 one.
    assert_eq!(class(&p, 1, "10.100.1.7"), None);
    assert_eq!(class(&p, 1, "203.0.113.9"), None);
    assert_eq!(
        class(&p, 1, "fd00:100:1::99"),
        Some(SpecialClass::PolicyNetwork)
    );
}

#[test]
fn allow_private_opens_its_prefixes_for_its_network_only() {
    let p = parse_policy(
        "networks:\n  - name: a\n    cidr: 10.1.0.0/24\n    allow_private: [10.20.0.0/16, \"fd00:20::/32\"]\n  - name: b\n    cidr: 10.2.0.0/24\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(class(&p, 0, "10.20.5.5"), None);
    assert_eq!(class(&p, 0, "fd00:20::5"), None);
    assert_eq!(class(&p, 0, "10.21.5.5"), Some(SpecialClass::Private));
    assert_eq!(class(&p, 0, "fd00:21::5"), Some(SpecialClass::UniqueLocal));
    assert_eq!(class(&p, 0, "10.2.0.5"), Some(SpecialClass::PolicyNetwork));
    assert_eq!(class(&p, 1, "10.20.5.5"), Some(SpecialClass::Private));
    assert_eq!(
        p.learning().network(0).unwrap().allow_private(),
        [
            "10.20.0.0/16".parse::<IpNet>().unwrap(),
            "fd00:20::/32".parse().unwrap()
        ]
    );
}

#[test]
fn thousands_of_networks() {
    let mut text = String::from("networks:\n");
    for i in 0..5000u32 {
        let (a, b) = (i / 250, i % 250);
        text.push_str(&format!("  - name: n{i}\n    cidr: 11.{a}.{b}.0/24\n"));
    }
    let p = parse_policy(&text, "p.yaml").unwrap();
    assert_eq!(
        class(&p, 0, "11.19.249.200"),
        Some(SpecialClass::PolicyNetwork)
    );
    assert_eq!(
        class(&p, 4999, "11.0.0.1"),
        Some(SpecialClass::PolicyNetwork)
    );
    assert_eq!(class(&p, 0, "11.20.0.1"), None);
}

#[test]
fn closed_ranges_and_what_allow_private_opens_of_them() {
    let p = policy();
    let text = |nets: &[IpNet]| -> Vec<String> { nets.iter().map(ToString::to_string).collect() };
    let clients = p.learning().network(0).unwrap().closed();
    assert_eq!(
        text(&clients.ranges),
        [
            "10.0.0.0/8",
            "100.64.0.0/10",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "203.0.113.0/24",
            "fc00::/7"
        ]
    );
    assert!(clients.except.is_empty());
    // lab opens all of IPv4 and fd00:20::/32: what it opens is shown as
    // the part of the closed ranges, not as written.
    let lab = p.learning().network(1).unwrap().closed();
    assert_eq!(lab.ranges, clients.ranges);
    assert_eq!(
        text(&lab.except),
        [
            "10.0.0.0/8",
            "100.64.0.0/10",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "203.0.113.0/24",
            "fd00:20::/32"
        ]
    );
}

#[test]
fn every_class_has_a_distinct_name_and_its_index() {
    for (i, c) in SpecialClass::ALL.iter().enumerate() {
        assert_eq!(c.index(), i);
    }
    let mut names: Vec<&str> = SpecialClass::ALL.iter().map(|c| c.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), SpecialClass::ALL.len());
    assert!(SpecialClass::Private.can_open() && !SpecialClass::Node.can_open());
}
