//! Load edge cases: many concurrent DNS resolutions and many simultaneous
//! connections through neuwerk, all of which must succeed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::ALLOWED;
use neuwerk_integration::dns_client::{self, expect_addresses};
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::{DnsOpts, MockRecord, Neuwerk, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RESOLUTIONS: usize = 500;
const CONNECTIONS: usize = 200;

/// A distinct answer per name (never routed, only compared), public: a
/// private one would be left out of the answer.
fn load_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1)
}

#[test]
fn concurrent_dns_resolutions_all_answered_correctly() {
    let topo = Topology::new();
    for i in 0..RESOLUTIONS {
        topo.dns().set_records(
            &format!("n{i}.load.example.net"),
            vec![MockRecord::A(load_addr(i), 300)],
        );
    }
    let nw = Neuwerk::start(&topo, &fixture("policy-dns-only.yaml"));
    let failures: Vec<String> = topo.client().block_on(|| async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..RESOLUTIONS {
            set.spawn(async move {
                let name = format!("n{i}.load.example.net");
                let opts = DnsOpts::udp().timeout(Duration::from_secs(5));
                let got = dns_client::query(NEUWERK_DNS_V4, &name, RecordType::A, opts)
                    .await
                    .and_then(|m| expect_addresses(&m));
                match got {
                    Ok(a) if a == vec![IpAddr::V4(load_addr(i))] => None,
                    Ok(a) => Some(format!("{name}: wrong answer {a:?}")),
                    Err(e) => Some(format!("{name}: {e:#}")),
                }
            });
        }
        set.join_all().await.into_iter().flatten().collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {RESOLUTIONS} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Neuwerk is still healthy afterwards.
    assert_resolves(
        topo.client(),
        NEUWERK_DNS_V4,
        "example.com",
        &[DEST_V4.into()],
    );
    nw.stop();
}

#[test]
fn many_simultaneous_connections_all_succeed() {
    let topo = Topology::new();
    let nw = Neuwerk::start(&topo, &fixture("policy-static.yaml"));
    let dst = sa(DEST_V4, 443);
    let before = topo.http().accepted_on(dst);
    let failures: Vec<String> = topo.client().block_on(|| async move {
        // Open all connections first, then use each one: all are open at once.
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..CONNECTIONS {
            set.spawn(async move {
                tokio::time::timeout(ALLOWED, tokio::net::TcpStream::connect(dst)).await
            });
        }
        let mut streams = Vec::new();
        let mut failures = Vec::new();
        for r in set.join_all().await {
            match r {
                Ok(Ok(s)) => streams.push(s),
                Ok(Err(e)) => failures.push(format!("connect: {e}")),
                Err(_) => failures.push("connect: timeout".to_owned()),
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for mut s in streams {
            set.spawn(async move {
                let req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
                let io = async {
                    s.write_all(req).await?;
                    let mut resp = String::new();
                    s.read_to_string(&mut resp).await?;
                    Ok::<_, std::io::Error>(resp)
                };
                match tokio::time::timeout(ALLOWED, io).await {
                    Ok(Ok(resp)) if resp.ends_with("ok 443") => None,
                    Ok(Ok(resp)) => Some(format!("bad response {resp:?}")),
                    Ok(Err(e)) => Some(format!("request: {e}")),
                    Err(_) => Some("request: timeout".to_owned()),
                }
            });
        }
        failures.extend(set.join_all().await.into_iter().flatten());
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(topo.http().accepted_on(dst) - before, CONNECTIONS);
    nw.stop();
}
