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
  workers: 3
  intercept: false
policy:
  file: /etc/neuwerk/policy.yaml
  audit: true
management:
  listen: 127.0.0.1:3000
  token: " s3cret "
conntrack:
  tcp_idle: 1h
  tcp_closing: 10s
  udp_idle: 60s
  icmp_idle: 30s
logging:
  format: json
  level: info,neuwerk_dns=debug
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
    assert_eq!(c.dns.workers, 3);
    assert!(!c.dns.intercept);
    assert_eq!(c.policy.file, PathBuf::from("/etc/neuwerk/policy.yaml"));
    assert!(c.policy.audit);
    assert_eq!(c.management.listen, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.management.token.as_deref(), Some("s3cret"));
    assert_eq!(c.conntrack, ConntrackConfig::default());
    assert_eq!(
        c.logging,
        LoggingConfig {
            format: LogFormat::Json,
            level: "info,neuwerk_dns=debug".into(),
        }
    );
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
    assert_eq!(c.dns.workers, 0);
    assert!(c.dns.intercept);
    assert_eq!(c.interfaces.forwarding, Forwarding::Direct);
    assert_eq!(c.management, ManagementConfig::default());
    assert_eq!(c.management.listen, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.management.token, None);
    assert!(!c.policy.audit);
    assert_eq!(c.conntrack, ConntrackConfig::default());
    assert_eq!(c.logging, LoggingConfig::default());
    assert_eq!(c.logging.format, LogFormat::Text);
    assert_eq!(c.logging.level, "info");
    // An empty optional section means all defaults.
    let c = ok(&with_tail(
        "management:\nconntrack:\n  udp_idle: 5m\nlogging:\n",
    ));
    assert_eq!(c.management, ManagementConfig::default());
    assert_eq!(c.logging, LoggingConfig::default());
    assert_eq!(c.conntrack.udp_idle, Duration::from_secs(300));
    assert_eq!(c.conntrack.tcp_idle, ConntrackConfig::default().tcp_idle);
}

#[test]
fn forwarding_modes() {
    for (mode, want) in [
        ("direct", Forwarding::Direct),
        ("kernel", Forwarding::Kernel),
    ] {
        let c = ok(&with_dns("").replace(
            "egress: nwe0",
            &format!("egress: nwe0\n  forwarding: {mode}"),
        ));
        assert_eq!(c.interfaces.forwarding, want, "forwarding: {mode}");
    }
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

#[test]
fn policy_audit() {
    let audit = |v: &str| {
        let text = with_dns("").replace("file: p.yaml", &format!("file: p.yaml\n  audit: {v}"));
        ok(&text).policy.audit
    };
    assert!(audit("true"));
    assert!(audit("True"));
    assert!(!audit("false"));
    assert!(!audit("FALSE"));
}

#[test]
fn logging_section() {
    let c = ok(&with_tail("logging:\n  format: JSON\n"));
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.logging.level, "info");
    let c = ok(&with_tail("logging:\n  level: warn\n"));
    assert_eq!(c.logging.format, LogFormat::Text);
    assert_eq!(c.logging.level, "warn");
    for level in [
        "debug",
        "neuwerk_dns=debug",
        "info, neuwerk_dns::handler=trace",
        "OFF",
        "warn,neuwerk[query]=debug",
    ] {
        let c = ok(&with_tail(&format!("logging:\n  level: \"{level}\"\n")));
        assert_eq!(c.logging.level, level);
    }
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("neuwerk-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn management_token_inline_or_from_a_file() {
    let dir = TempDir::new("token");
    let config = dir.0.join("config.yaml");
    let parse =
        |management: &str| Config::parse(&with_tail(management), &config.display().to_string());
    let c = parse("management:\n  token: abc123\n").unwrap();
    assert_eq!(c.management.token.as_deref(), Some("abc123"));
    assert_eq!(c.management.listen, ManagementConfig::default().listen);

    // Relative to the config's directory, whitespace trimmed.
    std::fs::write(dir.0.join("token"), "  from-file\n\n").unwrap();
    let c = parse("management:\n  listen: 127.0.0.1:9000\n  token_file: token\n").unwrap();
    assert_eq!(c.management.token.as_deref(), Some("from-file"));
    assert_eq!(c.management.listen, "127.0.0.1:9000".parse().unwrap());
    let abs = dir.0.join("token").display().to_string();
    let c = parse(&format!("management:\n  token_file: \"{abs}\"\n")).unwrap();
    assert_eq!(c.management.token.as_deref(), Some("from-file"));
    // Never shown in debug output.
    let debug = format!("{c:?}");
    assert!(!debug.contains("from-file"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");

    let file = config.display().to_string();
    let missing = dir.0.join("nope");
    let e = parse("management:\n  token_file: nope\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "{file}:10:15: cannot read token file {}: ",
            missing.display()
        )),
        "{e}"
    );
    std::fs::write(dir.0.join("blank"), " \n\t\n").unwrap();
    let e = parse("management:\n  token_file: blank\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "{file}:10:15: token file {} is empty",
            dir.0.join("blank").display()
        )
    );
    // A directory cannot be read as a token.
    let e = parse("management:\n  token_file: .\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot read token file"), "{e}");
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
        (with_dns("  retries: 3\n"), "c.yaml:7:3: unknown key `retries` in `dns`; expected one of `listen`, `upstreams`, `upstream_timeout`, `min_ttl`, `max_ttl`, `deny_response`, `workers`, `intercept`"),
        (with_dns("  intercept: maybe\n"), "c.yaml:7:14: `maybe` is not a boolean; use true or false"),
        (with_dns("  workers: 65\n"), "c.yaml:7:12: workers must be a number from 0 (automatic) to 64, not `65`"),
        (with_dns("  workers: two\n"), "c.yaml:7:12: workers must be a number from 0 (automatic) to 64, not `two`"),
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
        (iface("nwi0", "nwe0\n  outside: eth1"), "c.yaml:4:3: unknown key `outside` in `interfaces`; expected one of `ingress`, `egress`, `forwarding`"),
        (iface("nwi0", "nwe0\n  forwarding: fast"), "c.yaml:4:15: unknown forwarding mode `fast`; expected `direct` or `kernel`"),
        (with_dns("").replace("file: p.yaml", "file: \"\""), "c.yaml:8:9: policy file path is empty"),
        (with_dns("").replace("  file: p.yaml\n", ""), "c.yaml:7:1: `policy` needs `file`"),
        (with_tail("management:\n  listen: localhost:3000\n"), "c.yaml:10:11: `localhost:3000` is not an address; expected IP:port, e.g. 127.0.0.1:3000"),
        (with_tail("management:\n  port: 3000\n"), "c.yaml:10:3: unknown key `port` in `management`; expected one of `listen`, `token`, `token_file`"),
        (with_tail("management:\n  token: a\n  token_file: t\n"), "c.yaml:11:3: `token` and `token_file` are mutually exclusive; use one"),
        (with_tail("management:\n  token_file: t\n  token: a\n"), "c.yaml:11:3: `token` and `token_file` are mutually exclusive; use one"),
        (with_tail("management:\n  token: \" \"\n"), "c.yaml:10:10: `token` is empty"),
        (with_tail("management:\n  token:\n"), "c.yaml:10:3: expected a token, found nothing"),
        (with_tail("management:\n  token_file: \"\"\n"), "c.yaml:10:15: token file path is empty"),
        (with_dns("").replace("file: p.yaml", "file: p.yaml\n  audit: yes"), "c.yaml:9:10: `yes` is not a boolean; use true or false"),
        (with_dns("").replace("file: p.yaml", "file: p.yaml\n  audit: [true]"), "c.yaml:9:10: expected true or false, found a list"),
        (with_dns("").replace("file: p.yaml", "file: p.yaml\n  adit: true"), "c.yaml:9:3: unknown key `adit` in `policy`; did you mean `audit`?"),
        (with_tail("logging:\n  format: xml\n"), "c.yaml:10:11: unknown log format `xml`; expected `text` or `json`"),
        (with_tail("logging:\n  level: inof\n"), "c.yaml:10:10: unknown level `inof`; expected trace, debug, info, warn, error or off, or target=level"),
        (with_tail("logging:\n  level: neuwerk_dns=verbose\n"), "c.yaml:10:10: `neuwerk_dns=verbose`: unknown level `verbose`; expected trace, debug, info, warn, error or off"),
        (with_tail("logging:\n  level: =debug\n"), "c.yaml:10:10: `=debug` has no target before `=`"),
        (with_tail("logging:\n  level: \" , \"\n"), "c.yaml:10:10: logging level is empty; e.g. info or info,neuwerk_dns=debug"),
        (with_tail("logging:\n  levels: info\n"), "c.yaml:10:3: unknown key `levels` in `logging`; did you mean `level`?"),
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

#[test]
fn the_shipped_example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config.example.yaml");
    let c = Config::load(&path).unwrap();
    assert!(!c.policy.audit);
    assert_eq!(c.management.token, None);
    assert_eq!(c.logging, LoggingConfig::default());
}

#[test]
fn the_pin_dir_defaults_per_ingress_and_can_move() {
    let c = ok(&with_tail(""));
    assert_eq!(c.dataplane.pin_dir, Path::new("/sys/fs/bpf/neuwerk/nwi0"));
    let c = ok(&with_tail("dataplane:\n  pin_dir: /sys/fs/bpf/site-a\n"));
    assert_eq!(c.dataplane.pin_dir, Path::new("/sys/fs/bpf/site-a"));
    let e = err(&with_tail("dataplane:\n  pin_dir: relative/dir\n"));
    assert!(
        e.contains("c.yaml:10:12: pin_dir `relative/dir` must be an absolute path"),
        "{e}"
    );
    assert_eq!(c.dataplane.forwarding_sysctls, ForwardingSysctls::Set);
    let c = ok(&with_tail("dataplane:\n  forwarding_sysctls: require\n"));
    assert_eq!(c.dataplane.forwarding_sysctls, ForwardingSysctls::Require);
    let e = err(&with_tail("dataplane:\n  forwarding_sysctls: maybe\n"));
    assert!(e.contains("unknown forwarding_sysctls `maybe`"), "{e}");
    let e = err(&with_tail("dataplane:\n  pin_dri: /x\n"));
    assert!(e.contains("did you mean `pin_dir`"), "{e}");
}
