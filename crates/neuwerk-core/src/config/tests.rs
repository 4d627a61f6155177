use super::*;

fn ok(text: &str) -> Config {
    match Config::parse(text, "/etc/neuwerk/config.yaml") {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(text: &str) -> String {
    match Config::parse(text, "c.yaml") {
        Ok(c) => panic!("parsed, expected an error:\n{text}\n{c:?}"),
        Err(e) => e.to_string(),
    }
}

/// A valid config whose `dns` section gets `extra` from line 7 on.
fn with_dns(extra: &str) -> String {
    format!(
        "interfaces:\n  ingress: nwi0\n  egress: nwe0\ndns:\n  listen: [\"10.0.0.1:53\"]\n  \
         upstreams: [\"10.0.0.2:53\"]\n{extra}policy:\n  file: p.yaml\n"
    )
}

/// A valid config followed by `extra` from line 9 on.
fn with_tail(extra: &str) -> String {
    with_dns("") + extra
}

const FULL: &str = r#"interfaces:
  ingress: nwi0
  egress: nwe0
dns:
  listen: ["10.100.1.10:53", "[fd00:100:1::10]:53"]
  upstreams: ["10.100.2.100:53"]
  upstream_timeout: 2s
  min_ttl: 0s
  max_ttl: 24h
  deny_response: nxdomain
policy:
  file: /etc/neuwerk/policy.yaml
management:
  listen: 127.0.0.1:3000
conntrack:
  tcp_idle: 1h
  tcp_closing: 10s
  udp_idle: 60s
  icmp_idle: 30s
"#;

#[test]
fn the_documented_example() {
    let c = ok(FULL);
    assert_eq!(c.interfaces.ingress, "nwi0");
    assert_eq!(c.interfaces.egress, "nwe0");
    let listen: Vec<SocketAddr> = vec![
        "10.100.1.10:53".parse().unwrap(),
        "[fd00:100:1::10]:53".parse().unwrap(),
    ];
    assert_eq!(c.dns.listen, listen);
    assert_eq!(c.dns.upstreams, vec!["10.100.2.100:53".parse().unwrap()]);
    assert_eq!(c.dns.upstream_timeout, Duration::from_secs(2));
    assert_eq!(c.dns.min_ttl, Duration::ZERO);
    assert_eq!(c.dns.max_ttl, Duration::from_secs(86_400));
    assert_eq!(c.dns.deny_response, DenyResponse::NxDomain);
    assert_eq!(c.policy.file, PathBuf::from("/etc/neuwerk/policy.yaml"));
    assert_eq!(c.management.listen, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.conntrack, ConntrackConfig::default());
}

#[test]
fn defaults() {
    let c = ok("interfaces: {ingress: nwi0, egress: nwe0}\n\
                dns: {listen: [\"10.0.0.1:53\"], upstreams: [10.0.0.2, \"[fd00::2]\"]}\n\
                policy: {file: policy.yaml}\n");
    let upstreams: Vec<SocketAddr> = vec![
        "10.0.0.2:53".parse().unwrap(),
        "[fd00::2]:53".parse().unwrap(),
    ];
    assert_eq!(c.dns.upstreams, upstreams);
    assert_eq!(c.dns.upstream_timeout, Duration::from_secs(2));
    assert_eq!(c.dns.min_ttl, Duration::ZERO);
    assert_eq!(c.dns.max_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.dns.deny_response, DenyResponse::Refused);
    assert_eq!(c.management, ManagementConfig::default());
    assert_eq!(c.management.listen, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.conntrack, ConntrackConfig::default());
    // An empty optional section means all defaults.
    let c = ok(&with_tail("management:\nconntrack:\n  udp_idle: 5m\n"));
    assert_eq!(c.management, ManagementConfig::default());
    assert_eq!(c.conntrack.udp_idle, Duration::from_secs(300));
    assert_eq!(c.conntrack.tcp_idle, ConntrackConfig::default().tcp_idle);
}

#[test]
fn durations_in_config() {
    let c = ok(&with_dns(
        "  upstream_timeout: 250ms\n  min_ttl: 30s\n  max_ttl: 1h30m\n",
    ));
    assert_eq!(c.dns.upstream_timeout, Duration::from_millis(250));
    assert_eq!(c.dns.min_ttl, Duration::from_secs(30));
    assert_eq!(c.dns.max_ttl, Duration::from_secs(5400));
    let c = ok(&with_tail(
        "conntrack:\n  tcp_idle: 1d\n  tcp_closing: 500ms\n  icmp_idle: 250us\n",
    ));
    assert_eq!(c.conntrack.tcp_idle, Duration::from_secs(86_400));
    assert_eq!(c.conntrack.tcp_closing, Duration::from_millis(500));
    assert_eq!(c.conntrack.icmp_idle, Duration::from_micros(250));
}

#[test]
fn policy_path_resolves_against_the_config_directory() {
    let at = |file: &str, path: &str| {
        let text = with_dns("").replace("file: p.yaml", &format!("file: {path}"));
        Config::parse(&text, file).unwrap().policy.file
    };
    assert_eq!(
        at("/etc/neuwerk/config.yaml", "policy.yaml"),
        PathBuf::from("/etc/neuwerk/policy.yaml")
    );
    assert_eq!(
        at("/etc/neuwerk/config.yaml", "../p.yaml"),
        PathBuf::from("/etc/neuwerk/../p.yaml")
    );
    assert_eq!(
        at("/etc/neuwerk/config.yaml", "/srv/p.yaml"),
        PathBuf::from("/srv/p.yaml")
    );
    assert_eq!(
        at("config.yaml", "policy.yaml"),
        PathBuf::from("policy.yaml")
    );
    assert_eq!(
        at("conf/config.yaml", "policy.yaml"),
        PathBuf::from("conf/policy.yaml")
    );
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("neuwerk-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, with_dns("")).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.policy.file, dir.join("p.yaml"));
    std::fs::write(&path, with_dns("  min_ttl: 5\n")).unwrap();
    let e = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:7:12: `5` has no unit; use a unit, e.g. 2s",
            path.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
    let e = Config::load(Path::new("/nonexistent/neuwerk.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(
        e.to_string().starts_with("/nonexistent/neuwerk.yaml: "),
        "{e}"
    );
}

fn error_cases() -> Vec<(String, &'static str)> {
    let iface = |ingress: &str, egress: &str| {
        with_dns("")
            .replace("ingress: nwi0", &format!("ingress: {ingress}"))
            .replace("egress: nwe0", &format!("egress: {egress}"))
    };
    let dns = |listen: &str, upstreams: &str| {
        format!(
            "interfaces:\n  ingress: nwi0\n  egress: nwe0\ndns:\n  listen: {listen}\n  \
             upstreams: {upstreams}\npolicy:\n  file: p.yaml\n"
        )
    };
    vec![
        (String::new(), "c.yaml:1:1: the config is empty"),
        ("[]\n".into(), "c.yaml:1:1: expected the config, found a list"),
        ("interfaces: {ingress: a, egress: b}\n".into(), "c.yaml:1:1: the config needs `dns`"),
        (with_tail("dsn: {}\n"), "c.yaml:9:1: unknown key `dsn` in the config; did you mean `dns`?"),
        (with_dns("  retries: 3\n"), "c.yaml:7:3: unknown key `retries` in `dns`; expected one of `listen`, `upstreams`, `upstream_timeout`, `min_ttl`, `max_ttl`, `deny_response`"),
        (with_dns("  upstream_timeout: 2\n"), "c.yaml:7:21: `2` has no unit; use a unit, e.g. 2s"),
        (with_dns("  upstream_timeout: 2 s\n"), "c.yaml:7:21: `2 s`: unknown unit ` s`; use ns, us, ms, s, m, h or d"),
        (with_dns("  upstream_timeout: 0s\n"), "c.yaml:7:21: upstream_timeout must be greater than 0"),
        (with_dns("  upstream_timeout: [2s]\n"), "c.yaml:7:21: expected a duration, found a list"),
        (with_dns("  min_ttl: 1h\n  max_ttl: 30m\n"), "c.yaml:8:12: min_ttl (3600s) is greater than max_ttl (1800s)"),
        (with_dns("  min_ttl: 2d\n"), "c.yaml:7:12: min_ttl (172800s) is greater than max_ttl (86400s)"),
        (with_dns("  deny_response: servfail\n"), "c.yaml:7:18: unknown deny_response `servfail`; expected `refused` or `nxdomain`"),
        (dns("[]", "[10.0.0.2]"), "c.yaml:5:11: `listen` is empty; it needs at least one address"),
        (dns("", "[10.0.0.2]"), "c.yaml:5:3: `listen` is empty; it needs at least one address"),
        (dns("\"10.0.0.1:53\"", "[10.0.0.2]"), "c.yaml:5:11: expected `listen` to be a list of addresses, found `10.0.0.1:53`"),
        (dns("[\"10.0.0.1:99999\"]", "[10.0.0.2]"), "c.yaml:5:12: `10.0.0.1:99999` is not an address; expected IP:port, e.g. 10.0.0.1:53 or \"[fd00::1]:53\""),
        (dns("[10.0.0.1:53, 10.0.0.1:53]", "[10.0.0.2]"), "c.yaml:5:25: 10.0.0.1:53 is listed twice"),
        (dns("[[fd00::1]]", "[10.0.0.2]"), "c.yaml:5:12: quote IPv6 addresses, e.g. \"[fd00::1]:53\""),
        (dns("[10.0.0.1:53]", "[10.0.0.2:0]"), "c.yaml:6:15: 10.0.0.2:0: port 0 is not a DNS port"),
        (with_dns("").replace("  upstreams: [\"10.0.0.2:53\"]\n", ""), "c.yaml:5:3: `dns` needs `upstreams`"),
        (iface("averyveryverylongname", "nwe0"), "c.yaml:2:12: interface name `averyveryverylongname` is 21 characters long; Linux allows at most 15"),
        (iface("\"\"", "nwe0"), "c.yaml:2:12: interface name is empty"),
        (iface("nwi0", "\"a b\""), "c.yaml:3:11: `a b` is not a valid interface name"),
        (iface("nwi0", "nwi0"), "c.yaml:3:11: ingress and egress must be different interfaces"),
        (iface("nwi0", "nwe0\n  outside: eth1"), "c.yaml:4:3: unknown key `outside` in `interfaces`; expected one of `ingress`, `egress`"),
        (with_dns("").replace("file: p.yaml", "file: \"\""), "c.yaml:8:9: policy file path is empty"),
        (with_dns("").replace("  file: p.yaml\n", ""), "c.yaml:7:1: `policy` needs `file`"),
        (with_tail("management:\n  listen: localhost:3000\n"), "c.yaml:10:11: `localhost:3000` is not an address; expected IP:port, e.g. 127.0.0.1:3000"),
        (with_tail("management:\n  port: 3000\n"), "c.yaml:10:3: unknown key `port` in `management`; expected one of `listen`"),
        (with_tail("conntrack:\n  tcp_idel: 1h\n"), "c.yaml:10:3: unknown key `tcp_idel` in `conntrack`; did you mean `tcp_idle`?"),
        (with_tail("conntrack:\n  udp_idle: 0s\n"), "c.yaml:10:13: udp_idle must be greater than 0"),
        (with_tail("conntrack:\n  icmp_idle: 30\n"), "c.yaml:10:14: `30` has no unit; use a unit, e.g. 2s"),
    ]
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
