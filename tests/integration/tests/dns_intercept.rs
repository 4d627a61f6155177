//! Transparent DNS interception (`dns.intercept`, on by default): DNS from
//! a client to any address on port 53 is answered by neuwerk under the
//! same policy, as if from the address asked; the query never reaches that
//! address.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use neuwerk_integration::checks::*;
use neuwerk_integration::client::BLOCKED;
use neuwerk_integration::dns_client::rcode;
use neuwerk_integration::neuwerk::fixture;
use neuwerk_integration::topology::*;
use neuwerk_integration::{DnsOpts, Neuwerk, Topology};

/// Queries for `name` the resolvers received straight from the client.
fn from_client(topo: &Topology, name: &str) -> usize {
    topo.dns()
        .queries_for(name)
        .iter()
        .filter(|q| {
            q.client.ip() == IpAddr::V4(CLIENT_V4) || q.client.ip() == IpAddr::V6(CLIENT_V6)
        })
        .count()
}

#[test]
fn dns_to_another_resolver_is_answered_by_the_policy() {
    let topo = Topology::new();
    let c = topo.client();
    let nw = Neuwerk::start(&topo, &fixture("policy-dns-only.yaml"));
    for opts in [DnsOpts::udp(), DnsOpts::tcp()] {
        for server in [OTHER_DNS_V4, UPSTREAM_DNS_V4] {
            let addrs = c
                .resolve_with(server, "example.com", RecordType::A, opts)
                .unwrap_or_else(|e| panic!("{server} over {:?}: {e:#}", opts.transport));
            assert_eq!(addrs, vec![IpAddr::V4(DEST_V4)]);
            let denied = c
                .dns_query(server, "denied.test", RecordType::A, opts.timeout(BLOCKED))
                .unwrap_or_else(|e| panic!("denied name to {server}: {e:#}"));
            assert_eq!(rcode(&denied), ResponseCode::Refused);
        }
    }
    assert_eq!(
        from_client(&topo, "example.com"),
        0,
        "{:?}",
        topo.dns().queries()
    );
    assert!(
        topo.dns().queries_for("denied.test").is_empty(),
        "a denied name was forwarded"
    );
    // The grant works as for the listener.
    assert_http_ok(c, sa(DEST_V4, 443));
    nw.stop();
}
