use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use neuwerk_core::grants::Grant;
use neuwerk_core::policy::{parse_policy, ParsedPolicy, PortRange, PortSet, Proto};
use neuwerk_core::special::{NodeAddrs, SpecialClass};

use super::*;

const POLICY: &str = "networks:
  - name: clients
    cidrs: [10.100.1.0/24]
    policies:
      - hostname: example.com
        ports: [443]
        protocol: tcp
      - hostname: \"*.github.com\"
        ports: [80, 443]
";

const NOW: u64 = 1_000_000_000_000;

fn policy() -> ParsedPolicy {
    parse_policy(POLICY, "p.yaml").unwrap()
}

fn node() -> NodeAddrs {
    NodeAddrs::new(
        ["10.100.2.10".parse().unwrap()],
        ["10.100.2.100".parse().unwrap()],
    )
}

fn check<'a>(policy: &'a ParsedPolicy, node: &'a NodeAddrs) -> Check<'a> {
    Check {
        policy,
        node,
        max_ttl: Duration::from_secs(3600),
    }
}

fn grant(hostname: &str, addr: &str, ports: &[(Proto, u16)], ttl_s: u64) -> Grant {
    Grant {
        network: Arc::from("clients"),
        addr: addr.parse().unwrap(),
        hostname: Arc::from(hostname),
        ports: PortSet::new(
            ports
                .iter()
                .map(|&(proto, p)| PortRange {
                    proto,
                    lo: p,
                    hi: p,
                })
                .collect(),
        ),
        expires_ns: NOW + ttl_s * 1_000_000_000,
    }
}

/// A message from node0 with `grants`, through the wire and back.
fn received(grants: &[Grant]) -> GrantMessage {
    GrantMessage::decode(&GrantMessage::new("node0", grants, NOW).encode()).unwrap()
}

#[test]
fn an_allowed_grant_crosses_with_its_remaining_lifetime() {
    let (p, n) = (policy(), node());
    let sent = grant("example.com", "192.0.2.100", &[(Proto::Tcp, 443)], 30);
    let msg = received(std::slice::from_ref(&sent));
    assert_eq!(msg.from, "node0");
    assert_eq!(msg.grants[0].ttl_ms, 30_000);
    // The receiver's clock reads something else entirely.
    let later = 7 * NOW;
    let got = check(&p, &n).grants(&msg, later).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].addr, got[0].ports.clone()), (sent.addr, sent.ports));
    assert_eq!(&*got[0].hostname, "example.com");
    assert_eq!(got[0].expires_ns, later + 30_000_000_000);
}

#[test]
fn a_lifetime_is_cut_to_the_receivers_max_ttl() {
    let (p, n) = (policy(), node());
    let msg = received(&[grant(
        "api.github.com",
        "192.0.2.101",
        &[(Proto::Any, 80)],
        86_400,
    )]);
    let got = check(&p, &n).grants(&msg, NOW).unwrap();
    assert_eq!(got[0].expires_ns, NOW + 3600 * 1_000_000_000);
}

#[test]
fn what_the_receivers_policy_does_not_allow_is_rejected() {
    let (p, n) = (policy(), node());
    let cases = [
        // No rule for the name.
        (
            grant("evil.example.net", "192.0.2.102", &[(Proto::Tcp, 443)], 30),
            "evil.example.net",
        ),
        // The rule's name, another port.
        (
            grant("example.com", "192.0.2.100", &[(Proto::Tcp, 22)], 30),
            "example.com",
        ),
        // The rule is TCP only.
        (
            grant("example.com", "192.0.2.100", &[(Proto::Udp, 443)], 30),
            "example.com",
        ),
    ];
    for (g, name) in cases {
        let err = check(&p, &n).grants(&received(&[g]), NOW).unwrap_err();
        assert_eq!(
            err,
            Rejected::NotAllowed {
                network: "clients".into(),
                hostname: name.into()
            }
        );
    }
    let mut other = grant("example.com", "192.0.2.100", &[(Proto::Tcp, 443)], 30);
    other.network = Arc::from("servers");
    assert_eq!(
        check(&p, &n).grants(&received(&[other]), NOW).unwrap_err(),
        Rejected::UnknownNetwork("servers".into())
    );
}

#[test]
fn special_use_addresses_are_rejected_as_the_receiver_sees_them() {
    let (p, n) = (policy(), node());
    for (addr, class) in [
        ("169.254.169.254", SpecialClass::LinkLocal),
        ("10.100.2.10", SpecialClass::Node),
        ("10.100.2.100", SpecialClass::Resolver),
        ("10.100.1.5", SpecialClass::PolicyNetwork),
    ] {
        let msg = received(&[grant("example.com", addr, &[(Proto::Tcp, 443)], 30)]);
        let err = check(&p, &n).grants(&msg, NOW).unwrap_err();
        let want: IpAddr = addr.parse().unwrap();
        assert!(
            matches!(err, Rejected::SpecialUse { addr, class: c, .. } if addr == want && c == class),
            "{addr}: {err}"
        );
    }
}

#[test]
fn one_bad_grant_rejects_the_whole_message() {
    let (p, n) = (policy(), node());
    let msg = received(&[
        grant("example.com", "192.0.2.100", &[(Proto::Tcp, 443)], 30),
        grant("example.com", "192.0.2.100", &[(Proto::Tcp, 22)], 30),
    ]);
    assert!(check(&p, &n).grants(&msg, NOW).is_err());
}

#[test]
fn malformed_and_oversized_messages_are_rejected_before_any_check() {
    let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
    assert_eq!(
        GrantMessage::decode(&big),
        Err(Rejected::TooLarge(MAX_MESSAGE_BYTES + 1))
    );
    for bytes in [
        &b"not json"[..],
        br#"{"from":"n","grants":[],"extra":1}"#,
        br#"{"from":"n","grants":[{"network":"clients","hostname":"example.com","addr":"192.0.2.1","ports":[{"proto":"tcp","lo":443,"hi":80}],"ttl_ms":1}]}"#,
        br#"{"from":"n","grants":[{"network":"clients","hostname":"","addr":"192.0.2.1","ports":[],"ttl_ms":1}]}"#,
        br#"{"from":"n","grants":[{"network":"clients","hostname":"example.com","addr":"300.0.2.1","ports":[],"ttl_ms":1}]}"#,
    ] {
        assert!(
            matches!(GrantMessage::decode(bytes), Err(Rejected::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    let many = GrantMessage {
        from: "n".into(),
        grants: vec![
            GrantMessage::new(
                "n",
                &[grant("example.com", "192.0.2.1", &[(Proto::Tcp, 443)], 1)],
                NOW
            )
            .grants[0]
                .clone();
            MAX_GRANTS + 1
        ],
    };
    assert!(matches!(
        GrantMessage::decode(&many.encode()),
        Err(Rejected::Malformed(_))
    ));
}

#[test]
fn a_grant_without_ports_is_rejected() {
    let (p, n) = (policy(), node());
    let msg = received(&[grant("example.com", "192.0.2.100", &[], 30)]);
    assert!(matches!(
        check(&p, &n).grants(&msg, NOW),
        Err(Rejected::NotAllowed { .. })
    ));
}
