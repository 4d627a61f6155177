use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;

const SECRET: &str = "0123456789abcdef-cluster";

/// A valid config whose `cluster` section is `section` (from line 9 on).
fn with_cluster(section: &str) -> String {
    format!(
        "interfaces:\n  ingress: nwi0\n  egress: nwe0\ndns:\n  listen: [\"10.0.0.1:53\"]\n  \
         upstreams: [\"10.0.0.2:53\"]\npolicy:\n  file: p.yaml\ncluster:\n{section}"
    )
}

fn minimal(extra: &str) -> String {
    with_cluster(&format!(
        "  node: node0\n  address: 10.100.3.10\n  peers: [10.100.3.11, 10.100.3.12]\n  \
         secret: {SECRET}\n{extra}"
    ))
}

fn err(text: &str) -> String {
    match Config::parse(text, "c.yaml") {
        Ok(c) => panic!("parsed, expected an error:\n{text}\n{c:?}"),
        Err(e) => e.to_string(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn without_the_section_the_node_runs_alone() {
    let text = with_cluster("").replace("cluster:\n", "");
    assert_eq!(Config::parse(&text, "c.yaml").unwrap().cluster, None);
}

#[test]
fn the_minimal_section_gets_the_defaults() {
    let c = Config::parse(&minimal(""), "/etc/neuwerk/config.yaml")
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(c.node, "node0");
    assert_eq!(c.address, ip("10.100.3.10"));
    assert_eq!(c.peers, vec![ip("10.100.3.11"), ip("10.100.3.12")]);
    assert_eq!(c.secret, SECRET);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/neuwerk/cluster"));
    assert_eq!(c.ack_timeout, Duration::from_millis(250));
    assert_eq!(c.dead_after, Duration::from_secs(1));
    assert_eq!(c.join_timeout, Duration::from_secs(10));
    assert_eq!((&c.on_coordinator, &c.nats_servers), (&None, &None));
    assert!(
        !format!("{c:?}").contains(SECRET),
        "the secret stays out of debug output"
    );
}

#[test]
fn every_key_is_read() {
    let c = Config::parse(
        &minimal(
            "  data_dir: js\n  ack_timeout: 100ms\n  dead_after: 2s\n  join_timeout: 3s\n  \
             on_coordinator: /usr/local/bin/neuwerk-promote\n  \
             nats: { servers: [\"nats://10.0.0.5:4222\", \"tls://10.0.0.6:4222\"] }\n",
        ),
        "/etc/neuwerk/config.yaml",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/etc/neuwerk/js"));
    assert_eq!(c.ack_timeout, Duration::from_millis(100));
    assert_eq!(c.dead_after, Duration::from_secs(2));
    assert_eq!(c.join_timeout, Duration::from_secs(3));
    assert_eq!(
        c.on_coordinator,
        Some(PathBuf::from("/usr/local/bin/neuwerk-promote"))
    );
    assert_eq!(
        c.nats_servers,
        Some(vec![
            "nats://10.0.0.5:4222".to_string(),
            "tls://10.0.0.6:4222".to_string()
        ])
    );
}

#[test]
fn the_secret_file_is_read_and_trimmed() {
    let dir = std::env::temp_dir().join(format!("nw-cluster-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.secret"), format!("{SECRET}\n")).unwrap();
    let text = minimal("").replace(&format!("secret: {SECRET}"), "secret_file: cluster.secret");
    let file = dir.join("config.yaml").display().to_string();
    let c = Config::parse(&text, &file).unwrap().cluster.unwrap();
    assert_eq!(c.secret, SECRET);
    let e = Config::parse(&text.replace("cluster.secret", "nope"), &file).unwrap_err();
    assert!(e.to_string().contains("cannot read secret file"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_sections_name_file_line_and_column() {
    let no_secret = with_cluster("  node: n\n  address: 10.0.3.1\n  peers: [10.0.3.2]\n");
    let cases = [
        (
            minimal("  gossip: true\n"),
            "c.yaml:14:3: unknown key `gossip` in `cluster`; expected one of `node`, `address`, \
             `peers`, `secret`, `secret_file`, `data_dir`, `ack_timeout`, `dead_after`, \
             `join_timeout`, `on_coordinator`, `nats`",
        ),
        (
            minimal("").replace("peers: [10.100.3.11,", "peers: [10.100.3.10,"),
            "c.yaml:12:11: 10.100.3.10 is this node's own `address`; `peers` lists the other nodes",
        ),
        (
            minimal("").replace("10.100.3.12]", "10.100.3.11]"),
            "c.yaml:12:24: 10.100.3.11 is listed twice",
        ),
        (
            minimal("").replace("peers: [10.100.3.11, 10.100.3.12]", "peers: []"),
            "c.yaml:12:10: `peers` is empty; a cluster needs the other nodes' addresses (a node \
             alone needs no `cluster` section)",
        ),
        (
            no_secret,
            "c.yaml:10:3: `cluster` needs `secret_file` (or `secret`): NATS authenticates the nodes with it",
        ),
        (
            minimal("").replace(SECRET, "short"),
            "c.yaml:13:11: the cluster secret is shorter than 16 characters",
        ),
        (
            minimal("  secret_file: s\n"),
            "c.yaml:14:16: `secret` and `secret_file` are mutually exclusive; use one",
        ),
        (
            minimal("").replace("node0", "node.0"),
            "c.yaml:10:9: node `node.0`: a node name is 1 to 64 letters, digits, `-` or `_`",
        ),
        (
            minimal("").replace("address: 10.100.3.10", "address: 0.0.0.0"),
            "c.yaml:11:12: `0.0.0.0` is the unspecified address; give this node's address on the \
             management network",
        ),
        (
            minimal("").replace("address: 10.100.3.10", "address: mgmt0"),
            "c.yaml:11:12: `mgmt0` is not an IP address",
        ),
        (minimal("  ack_timeout: 0s\n"), "c.yaml:14:16: ack_timeout must be greater than 0"),
        (
            minimal("  nats: { servers: [\"http://x:4222\"] }\n"),
            "c.yaml:14:21: `http://x:4222` is not a NATS URL; expected nats://host:port or tls://host:port",
        ),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        let got = err(&text);
        if got != want {
            failures.push(format!("text:\n{text}\n  want: {want}\n   got: {got}\n"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
