use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::policy::hostname::PatternKind;

fn ok(text: &str) -> ParsedPolicy {
    match parse_policy(text, "p.yaml") {
        Ok(p) => p,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(text: &str) -> String {
    match parse_policy(text, "p.yaml") {
        Ok(_) => panic!("parsed, expected an error:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A one-network policy whose rule list starts at line 5, column 7.
fn with_rules(rules: &str) -> String {
    format!("networks:\n  - name: n\n    cidr: 10.0.0.0/24\n    policies:\n{rules}")
}

fn range(proto: Proto, lo: u16, hi: u16) -> PortRange {
    PortRange { proto, lo, hi }
}

const EXAMPLE: &str = r#"networks:
  - name: clients
    cidrs: [10.100.1.0/24, "fd00:100:1::/64"]
    mode: enforce
    policies:
      - hostname: example.com
        ports: [443]
      - hostname: "*.example.org"
        ports: [80, 443]
      - hostname: "**.example.net"
        ports: ["8000-8100"]
      - ip: 192.0.2.100
        ports: [443]
        protocol: tcp
  - name: servers
    cidr: 10.100.2.0/24
    mode: audit
"#;

#[test]
fn the_documented_example() {
    let p = ok(EXAMPLE);
    assert_eq!(p.networks.len(), 2);
    let n = &p.networks[0];
    assert_eq!(&*n.name, "clients");
    let want: Vec<IpNet> = vec![
        "10.100.1.0/24".parse().unwrap(),
        "fd00:100:1::/64".parse().unwrap(),
    ];
    assert_eq!(n.cidrs, want);
    assert_eq!(n.mode, NetworkMode::Enforce);
    assert_eq!(n.rules.len(), 4);
    let locs: Vec<(usize, usize)> = n
        .rules
        .iter()
        .map(|r| (r.location.line, r.location.column))
        .collect();
    assert_eq!(locs, [(6, 9), (8, 9), (10, 9), (12, 9)]);
    let Target::Host(h) = &n.rules[1].target else {
        panic!()
    };
    assert_eq!(
        (h.kind, h.suffix.as_str()),
        (PatternKind::OneLabel, "example.org")
    );
    assert_eq!(n.rules[2].ports.ranges(), [range(Proto::Any, 8000, 8100)]);
    assert_eq!(
        n.rules[3].target,
        Target::Cidr("192.0.2.100/32".parse().unwrap())
    );
    assert_eq!(n.rules[3].ports.ranges(), [range(Proto::Tcp, 443, 443)]);
    assert_eq!(
        n.ports_for_name("EXAMPLE.com."),
        Some(n.rules[0].ports.clone())
    );
    assert_eq!(
        n.ports_for_name("a.b.example.net"),
        Some(n.rules[2].ports.clone())
    );
    assert_eq!(n.ports_for_name("a.b.example.org"), None);
    assert!(n.static_allows("192.0.2.100".parse().unwrap(), 6, 443));
    assert!(!n.static_allows("192.0.2.100".parse().unwrap(), 17, 443));
    let s = &p.networks[1];
    assert_eq!((s.mode, s.rules.len()), (NetworkMode::Audit, 0));
    let src: IpAddr = "fd00:100:1::5".parse().unwrap();
    assert_eq!(&*p.network_of(src).unwrap().name, "clients");
}

#[test]
fn empty_policies_are_valid() {
    for text in [
        "",
        "# nothing\n",
        "networks:\n",
        "networks: []\n",
        "networks: ~\n",
        "{}\n",
    ] {
        assert_eq!(ok(text).networks.len(), 0, "{text:?}");
    }
    let p = ok("networks:\n  - name: quarantine\n    cidr: 10.9.0.0/16\n");
    assert!(p.networks[0].rules.is_empty());
}

#[test]
fn ports_protocols_and_defaults() {
    let p = ok(&with_rules(
        "      - hostname: a.example\n\
         \x20       protocol: udp\n\
         \x20     - hostname: b.example\n\
         \x20     - hostname: c.example\n\
         \x20       ports: [53, \"100 - 200\", 0443]\n\
         \x20       protocol: TCP\n\
         \x20     - ip: 10.1.0.0/16\n\
         \x20       ports: [22]\n",
    ));
    let r = &p.networks[0].rules;
    assert_eq!(r[0].ports.ranges(), [range(Proto::Udp, 0, 65535)]);
    assert_eq!(r[1].ports, PortSet::all());
    assert_eq!(
        r[2].ports.ranges(),
        [
            range(Proto::Tcp, 53, 53),
            range(Proto::Tcp, 100, 200),
            range(Proto::Tcp, 443, 443)
        ]
    );
    assert_eq!(r[3].ports.ranges(), [range(Proto::Any, 22, 22)]);
    assert_eq!(parse_port_range("65535"), Ok((65535, 65535)));
    assert_eq!(parse_port_range("1-65535"), Ok((1, 65535)));
}

#[test]
fn hostnames_are_normalized_and_rules_union() {
    let p = ok(&with_rules(
        "      - hostname: API.Example.COM.\n\
         \x20       ports: [443]\n\
         \x20     - hostname: api.example.com\n\
         \x20       ports: [80]\n\
         \x20     - hostname: \"**.example.com\"\n\
         \x20       ports: [22]\n",
    ));
    let n = &p.networks[0];
    let Target::Host(h) = &n.rules[0].target else {
        panic!()
    };
    assert_eq!(h.suffix, "api.example.com");
    let want = PortSet::new(vec![
        range(Proto::Any, 22, 22),
        range(Proto::Any, 80, 80),
        range(Proto::Any, 443, 443),
    ]);
    assert_eq!(n.ports_for_name("api.example.com"), Some(want));
}

#[test]
fn cidrs_are_canonical() {
    let p = ok("networks:\n  - name: a\n    cidrs: [\"::ffff:10.1.0.0/112\", 192.0.2.7]\n");
    let want: Vec<IpNet> = vec![
        "10.1.0.0/16".parse().unwrap(),
        "192.0.2.7/32".parse().unwrap(),
    ];
    assert_eq!(p.networks[0].cidrs, want);
    let e = err("networks:\n  - name: a\n    cidrs: [10.1.0.0/16, \"::ffff:10.1.0.0/112\"]\n");
    assert_eq!(
        e,
        "p.yaml:3:26: 10.1.0.0/16 is listed twice (first at line 3)"
    );
}

/// (policy text, expected error) for every kind of mistake.
fn error_cases() -> Vec<(String, &'static str)> {
    let net = |body: &str| format!("networks:\n  - name: a\n{body}");
    vec![
        ("networks: 5\n".into(), "p.yaml:1:11: expected `networks` to be a list of networks, found `5`"),
        ("- a\n".into(), "p.yaml:1:1: expected the policy, found a list"),
        ("network: []\n".into(), "p.yaml:1:1: unknown key `network` in the policy; did you mean `networks`?"),
        ("networks:\n  - name: a\n   cidr: x\n".into(), "p.yaml:3:4: YAML syntax error: while parsing a block collection, did not find expected '-' indicator"),
        (with_rules("      - hostname: a.com\n        ports: [443\n"), "p.yaml:7:1: YAML syntax error: while parsing a flow sequence, expected ',' or ']'"),
        (with_rules("      - hostname: \"a.com\n"), "p.yaml:5:19: YAML syntax error: while scanning a quoted scalar, found unexpected end of stream"),
        ("networks:\n\t- name: a\n".into(), "p.yaml:2:2: YAML syntax error: tabs disallowed within this context (block indentation)"),
        ("networks:\n  - just-a-name\n".into(), "p.yaml:2:5: expected a network, found `just-a-name`"),
        ("networks:\n  - cidr: 10.0.0.0/8\n".into(), "p.yaml:2:5: a network needs `name`"),
        (net("    cidr: 10.0.0.0/8\n    polices: []\n"), "p.yaml:4:5: unknown key `polices` in a network; did you mean `policies`?"),
        (net(""), "p.yaml:2:5: network `a` needs `cidr` or `cidrs`"),
        (net("    cidr: 10.0.0.0/8\n    cidrs: [10.1.0.0/16]\n"), "p.yaml:4:5: a network has either `cidr` or `cidrs`, not both"),
        (net("    cidrs: []\n"), "p.yaml:3:12: `cidrs` is empty; a network needs at least one CIDR"),
        (net("    cidrs:\n"), "p.yaml:3:5: `cidrs` is empty; a network needs at least one CIDR"),
        (net("    cidr: 10.100.1.0/33\n"), "p.yaml:3:11: invalid CIDR `10.100.1.0/33`: prefix length `33` is not 0-32 as IPv4 needs"),
        (net("    cidr: \"fd00::/129\"\n"), "p.yaml:3:11: invalid CIDR `fd00::/129`: prefix length `129` is not 0-128 as IPv6 needs"),
        (net("    cidr: 10.100.1.5/24\n"), "p.yaml:3:11: `10.100.1.5/24` has host bits set; did you mean `10.100.1.0/24`?"),
        (net("    cidr: 10.100.1/24\n"), "p.yaml:3:11: invalid CIDR `10.100.1/24`: `10.100.1` is not an IP address"),
        (net("    cidr: [10.0.0.0/8]\n"), "p.yaml:3:11: expected a CIDR, found a list"),
        (net("    cidr: 10.0.0.0/8\n    mode: strict\n"), "p.yaml:4:11: unknown mode `strict`; expected `enforce` or `audit`"),
        (net("    cidr: 10.0.0.0/8\n    policies: {}\n"), "p.yaml:4:15: expected `policies` to be a list of rules, found a mapping"),
        (net("    name: b\n"), "p.yaml:3:5: duplicate key `name`"),
        ("networks:\n  - name: a\n    cidr: 10.0.0.0/8\n  - name: a\n    cidr: 10.1.0.0/16\n".into(),
         "p.yaml:4:11: network `a` is already defined at line 2"),
        ("networks:\n  - name: a\n    cidr: 10.0.0.0/8\n  - name: b\n    cidrs: [10.1.0.0/16, 10.0.0.0/8]\n".into(),
         "p.yaml:5:26: 10.0.0.0/8 is already the CIDR of network `a` (line 3); a source address must belong to one network"),
        ("networks:\n  - name: \"\"\n    cidr: 10.0.0.0/8\n".into(), "p.yaml:2:11: network name is empty"),
        (with_rules("      - ports: [443]\n"), "p.yaml:5:9: a rule needs `hostname` or `ip`"),
        (with_rules("      - hostname: a.com\n        ip: 10.0.0.1\n"), "p.yaml:6:9: a rule has either `hostname` or `ip`, not both"),
        (with_rules("      - {ip: 10.0.0.1, hostname: a.com}\n"), "p.yaml:5:24: a rule has either `hostname` or `ip`, not both"),
        (with_rules("      - hostname: a.com\n        port: [1]\n"), "p.yaml:6:9: unknown key `port` in a rule; did you mean `ports`?"),
        (with_rules("      - hostname: a.com\n        ports: [0]\n"), "p.yaml:6:17: port 0 is out of range; ports are 1-65535"),
        (with_rules("      - hostname: a.com\n        ports: [80, 65536]\n"), "p.yaml:6:21: port 65536 is out of range; ports are 1-65535"),
        (with_rules("      - hostname: a.com\n        ports: [\"0-10\"]\n"), "p.yaml:6:17: port 0 in `0-10` is out of range; ports are 1-65535"),
        (with_rules("      - hostname: a.com\n        ports: [\"90-80\"]\n"), "p.yaml:6:17: port range `90-80` is reversed; write 80-90"),
        (with_rules("      - hostname: a.com\n        ports: [abc]\n"), "p.yaml:6:17: `abc` is not a port; expected a number 1-65535 or a range like 8000-8100"),
        (with_rules("      - hostname: a.com\n        ports:\n          - 1-2-3\n"), "p.yaml:7:13: `1-2-3` is not a port; expected a number 1-65535 or a range like 8000-8100"),
        (with_rules("      - hostname: a.com\n        ports: [-5]\n"), "p.yaml:6:17: `-5` is not a port; expected a number 1-65535 or a range like 8000-8100"),
        (with_rules("      - hostname: a.com\n        ports: 443\n"), "p.yaml:6:16: `ports` must be a list, e.g. [443]"),
        (with_rules("      - hostname: a.com\n        ports: []\n"), "p.yaml:6:16: `ports` is empty; omit it to allow all ports"),
        (with_rules("      - hostname: a.com\n        ports: [[1]]\n"), "p.yaml:6:17: expected a port or port range, found a list"),
        (with_rules(&format!("      - hostname: a.com\n        ports: [{}]\n", (1..=17).map(|p| p.to_string()).collect::<Vec<_>>().join(", "))),
         "p.yaml:6:72: more than 16 port entries in one rule (a datapath limit); use ranges or split the rule"),
        (with_rules("      - ip: 10.0.0.1\n        protocol: icmp\n"), "p.yaml:6:19: unknown protocol `icmp`; expected `tcp`, `udp` or `any`"),
        (with_rules("      - ip: 10.0.0.300\n"), "p.yaml:5:13: `10.0.0.300` is not an IP address or CIDR"),
        (with_rules("      - ip: 10.0.0.1/8\n"), "p.yaml:5:13: `10.0.0.1/8` has host bits set; did you mean `10.0.0.0/8`?"),
        (with_rules("      - hostname: \"*\"\n"), "p.yaml:5:19: `*` would allow every name; put a domain after it, e.g. `*.example.com`"),
        (with_rules("      - hostname: 192.0.2.1\n"), "p.yaml:5:19: `192.0.2.1` is an IP address, not a hostname; use `ip: 192.0.2.1`"),
        (with_rules("      - hostname: a.*.com\n"), "p.yaml:5:19: `a.*.com`: `*` is only allowed as the whole first label, `*.` (one label) or `**.` (any depth)"),
        (with_rules("      - hostname: a_b!.com\n"), "p.yaml:5:19: `a_b!.com` contains `!`; labels may only have letters, digits, `-` and `_`"),
        (with_rules("      - hostname:\n"), "p.yaml:5:9: expected a hostname, found nothing"),
        (with_rules("      - hostname: a.com\n    extra: 1\n"), "p.yaml:6:5: unknown key `extra` in a network; expected one of `name`, `cidr`, `cidrs`, `mode`, `allow_private`, `policies`"),
        (with_rules("      - hostname: a.com\n---\nnetworks: []\n"), "p.yaml:6:1: expected a single YAML document, found a second one"),
        (net("    cidr: 10.0.0.0/8\n    allow_private: 10.20.0.0/16\n"), "p.yaml:4:20: `allow_private` must be a list, e.g. [10.20.0.0/16]"),
        (net("    cidr: 10.0.0.0/8\n    allow_private: []\n"), "p.yaml:4:20: `allow_private` is empty; omit it to learn no private address"),
        (net("    cidr: 10.0.0.0/8\n    allow_private: [10.20.0.0/33]\n"), "p.yaml:4:21: invalid CIDR `10.20.0.0/33`: prefix length `33` is not 0-32 as IPv4 needs"),
        (net("    cidr: 10.0.0.0/8\n    allow_private: [10.20.0.1/16]\n"), "p.yaml:4:21: `10.20.0.1/16` has host bits set; did you mean `10.20.0.0/16`?"),
        (net("    cidr: 10.0.0.0/8\n    allow_private:\n      - 10.20.0.0/16\n      - {cidr: 1}\n"), "p.yaml:6:9: expected a CIDR, found a mapping"),
        (net("    cidr: 10.0.0.0/8\n    allow_private: [10.20.0.0/16, 127.0.0.0/8]\n"),
         "p.yaml:4:35: 127.0.0.0/8 is loopback, which DNS answers never grant; `allow_private` opens only private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16), shared (100.64.0.0/10) and unique-local (fc00::/7) addresses and the policy's networks"),
        (net("    cidr: 10.0.0.0/8\n    allow_private: [169.254.169.254]\n"),
         "p.yaml:4:21: 169.254.169.254/32 is link-local (cloud metadata lives there), which DNS answers never grant; `allow_private` opens only private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16), shared (100.64.0.0/10) and unique-local (fc00::/7) addresses and the policy's networks"),
        (net("    cidr: 10.0.0.0/8\n    allow_private: [\"::ffff:0:0/96\", \"fe80::/64\"]\n"),
         "p.yaml:4:38: fe80::/64 is link-local (cloud metadata lives there), which DNS answers never grant; `allow_private` opens only private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16), shared (100.64.0.0/10) and unique-local (fc00::/7) addresses and the policy's networks"),
        (net("    cidr: 10.0.0.0/8\n    allow_private: [8.8.8.0/24]\n"),
         "p.yaml:4:21: 8.8.8.0/24 holds no private address and no network of the policy, so it opens nothing (public addresses are learned anyway); `allow_private` opens only private (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16), shared (100.64.0.0/10) and unique-local (fc00::/7) addresses and the policy's networks"),
    ]
}

#[test]
fn allow_private_opens_private_ranges_and_policy_networks() {
    // A public network of the policy may be opened, by another network.
    let p = ok("networks:\n  - name: a\n    cidr: 10.1.0.0/24\n    allow_private: [10.20.0.0/16, \"fd00:20::/32\", 198.51.100.0/24, \"::ffff:100.64.0.0/106\"]\n  - name: b\n    cidr: 198.51.100.0/24\n");
    let want: Vec<IpNet> = [
        "10.20.0.0/16",
        "fd00:20::/32",
        "198.51.100.0/24",
        "100.64.0.0/10",
    ]
    .iter()
    .map(|c| c.parse().unwrap())
    .collect();
    let learning = p.learning();
    assert_eq!(learning.network(0).unwrap().allow_private(), want);
    assert!(learning.network(1).unwrap().allow_private().is_empty());
    assert!(learning
        .network(0)
        .unwrap()
        .opens("198.51.100.9".parse().unwrap()));
    assert!(!learning
        .network(1)
        .unwrap()
        .opens("10.20.0.1".parse().unwrap()));
    // The network order of the parsed policy is the learning table's.
    assert_eq!(&*p.networks[1].name, "b");
}

#[test]
fn every_error_names_file_line_and_column() {
    let mut failures = Vec::new();
    for (text, want) in error_cases() {
        let got = err(&text);
        if got != want {
            failures.push(format!("text:\n{text}\n  want: {want}\n   got: {got}\n"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sixteen_port_entries_are_fine() {
    let ports = (1..=16)
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let p = ok(&with_rules(&format!(
        "      - hostname: a.com\n        ports: [{ports}]\n"
    )));
    assert_eq!(p.networks[0].rules[0].ports.ranges().len(), 16);
}

#[test]
fn io_errors_name_the_file() {
    let e = load_policy_file(Path::new("/nonexistent/neuwerk-policy.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/neuwerk-policy.yaml: "),
        "{e}"
    );
}

/// 100,000 hostname rules over 100 networks; linear checks keep this fast
/// (about 0.5 s in release, most of it the YAML scanner; ~2 s unoptimized).
#[test]
fn hundred_thousand_rules() {
    let mut text = String::from("networks:\n");
    for n in 0..100 {
        text += &format!("  - name: net{n}\n    cidr: 10.{n}.0.0/16\n    policies:\n");
        for r in 0..1000 {
            text += &format!("      - hostname: \"*.host{r}.net{n}.example.com\"\n        ports: [443, \"8000-8100\"]\n");
        }
    }
    let start = Instant::now();
    let p = ok(&text);
    let took = start.elapsed();
    assert_eq!(
        p.summary(),
        "100 networks, 100000 rules (100000 hostname, 0 static)"
    );
    let n = p.network("net42").unwrap();
    assert!(n.ports_for_name("www.host999.net42.example.com").is_some());
    assert!(n.ports_for_name("www.host999.net41.example.com").is_none());
    let limit = if cfg!(debug_assertions) { 30 } else { 2 };
    assert!(took < Duration::from_secs(limit), "took {took:?}");
}
