//! Special-use addresses in allowed answers: never granted, left out of
//! the reply, reported; public addresses of the same answer are granted
//! as usual; `allow_private` opens its prefixes; audit keeps them in.

use std::net::IpAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use ipnet::IpNet;
use neuwerk_core::events::{DnsResult, FilteredEvent};
use neuwerk_core::policy::{NetworkMode, ParsedPolicy};
use neuwerk_core::special::SpecialClass;

use crate::harness::*;

const LAN: &[&str] = &["127.0.0.0/8", "::1/128"];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// (address, class, left in the answer) of each filtered report.
fn filtered(proxy: &Proxy) -> Vec<(IpAddr, SpecialClass, bool)> {
    let seen = proxy.observed.filtered.lock().unwrap();
    seen.iter().map(|f| (f.addr, f.class, f.audit)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_answer_grants_and_relays_only_its_public_address() {
    let up = Upstream::start(Mode::Normal).await;
    let owner = "mixed.example.net.";
    up.answer(
        "mixed.example.net",
        RecordType::A,
        vec![
            a(owner, 60, [10, 0, 0, 5]),
            a(owner, 60, [192, 0, 2, 1]),
            a(owner, 60, [169, 254, 169, 254]),
            a(owner, 60, [127, 0, 0, 1]),
        ],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    for edns in [None, Some(1232)] {
        let (reply, _) = udp(proxy.udp, &query(owner, RecordType::A, edns)).await;
        assert_eq!(reply.response_code, ResponseCode::NoError);
        assert_eq!(reply.id, 0x4242);
        assert_eq!(addresses(&reply), [ip("192.0.2.1")]);
        assert_eq!(reply.edns.is_some(), edns.is_some());
    }
    let reply = tcp(proxy.tcp, &query(owner, RecordType::A, None)).await;
    assert_eq!(addresses(&reply), [ip("192.0.2.1")]);

    assert_eq!(proxy.sink.addrs(), vec![ip("192.0.2.1"); 3]);
    let want = [
        (ip("10.0.0.5"), SpecialClass::Private, false),
        (ip("169.254.169.254"), SpecialClass::LinkLocal, false),
        (ip("127.0.0.1"), SpecialClass::Loopback, false),
    ];
    assert_eq!(filtered(&proxy), want.repeat(3));
    let first = proxy.observed.filtered.lock().unwrap()[0].clone();
    assert_eq!(
        first,
        FilteredEvent {
            client: ip("127.0.0.1"),
            network: "lan".into(),
            name: "mixed.example.net".into(),
            addr: ip("10.0.0.5"),
            class: SpecialClass::Private,
            audit: false,
        }
    );
    let o = proxy.observed.nth(1).await;
    assert_eq!(o.event.result, DnsResult::Allowed);
    assert_eq!(o.event.addrs, [ip("192.0.2.1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_its_resolvers_and_the_policy_networks_are_never_learned() {
    let up = Upstream::start(Mode::Normal).await;
    let owner = "inside.example.net.";
    up.answer(
        "inside.example.net",
        RecordType::A,
        vec![
            a(owner, 60, [203, 0, 113, 10]),
            a(owner, 60, [198, 51, 100, 53]),
            a(owner, 60, [198, 18, 0, 7]),
            a(owner, 60, [100, 64, 1, 1]),
        ],
    );
    // The second resolver never answers: it is only there to be listed.
    let cfg = config(&[up.addr, "198.51.100.53:53".parse().unwrap()]);
    let lan_and_public = &["127.0.0.0/8", "::1/128", "198.18.0.0/24"];
    let own = vec![ip("203.0.113.10")];
    let proxy = Proxy::start_with(cfg, policy(lan_and_public), own).await;
    let (reply, _) = udp(proxy.udp, &query(owner, RecordType::A, None)).await;
    // Every address left out: NOERROR without addresses.
    assert_eq!(reply.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty(), "{reply:?}");
    assert!(proxy.sink.grants().is_empty());
    let classes: Vec<SpecialClass> = filtered(&proxy).iter().map(|f| f.1).collect();
    assert_eq!(
        classes,
        [
            SpecialClass::Node,
            SpecialClass::Resolver,
            SpecialClass::PolicyNetwork,
            SpecialClass::Shared
        ]
    );
    let o = proxy.observed.nth(1).await;
    assert_eq!(o.event.result, DnsResult::Allowed);
    assert!(o.event.addrs.is_empty());
    assert_eq!(o.grant_commit, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_answers_lose_mapped_unique_local_link_local_and_multicast() {
    let up = Upstream::start(Mode::Normal).await;
    let owner = "v6.example.net.";
    up.answer(
        "v6.example.net",
        RecordType::AAAA,
        vec![
            aaaa(owner, 60, "::ffff:10.0.0.1"),
            aaaa(owner, 60, "fd00::1"),
            aaaa(owner, 60, "2001:db8::1"),
            aaaa(owner, 60, "fe80::1"),
            aaaa(owner, 60, "ff02::1"),
            aaaa(owner, 60, "::1"),
        ],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query(owner, RecordType::AAAA, None)).await;
    assert_eq!(addresses(&reply), [ip("2001:db8::1")]);
    assert_eq!(proxy.sink.addrs(), [ip("2001:db8::1")]);
    let classes: Vec<SpecialClass> = filtered(&proxy).iter().map(|f| f.1).collect();
    assert_eq!(
        classes,
        [
            SpecialClass::Ipv4Mapped,
            SpecialClass::UniqueLocal,
            SpecialClass::LinkLocal,
            SpecialClass::Multicast,
            SpecialClass::Loopback
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_chain_keeps_its_aliases() {
    let up = Upstream::start(Mode::Normal).await;
    up.answer(
        "alias.example.net",
        RecordType::A,
        vec![
            cname("alias.example.net.", 60, "edge.cdn.test."),
            a("edge.cdn.test.", 60, [172, 16, 0, 9]),
            a("edge.cdn.test.", 60, [198, 51, 100, 9]),
        ],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy(LAN)).await;
    let (reply, _) = udp(proxy.udp, &query("alias.example.net.", RecordType::A, None)).await;
    assert_eq!(reply.answers.len(), 2, "{reply:?}");
    assert!(matches!(reply.answers[0].data, RData::CNAME(_)));
    assert_eq!(addresses(&reply), [ip("198.51.100.9")]);
    assert_eq!(proxy.sink.addrs(), [ip("198.51.100.9")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_private_opens_its_prefixes_only() {
    let up = Upstream::start(Mode::Normal).await;
    let owner = "lab.example.net.";
    up.answer(
        "lab.example.net",
        RecordType::A,
        vec![
            a(owner, 60, [10, 20, 0, 5]),
            a(owner, 60, [10, 21, 0, 5]),
            a(owner, 60, [127, 0, 0, 2]),
        ],
    );
    let opened: Vec<IpNet> = vec![
        "10.20.0.0/16".parse().unwrap(),
        "127.0.0.0/8".parse().unwrap(),
    ];
    let policy = ParsedPolicy::new(policy(LAN), vec![opened]);
    let proxy = Proxy::start(config(&[up.addr]), policy).await;
    let (reply, _) = udp(proxy.udp, &query(owner, RecordType::A, None)).await;
    assert_eq!(addresses(&reply), [ip("10.20.0.5")]);
    assert_eq!(proxy.sink.addrs(), [ip("10.20.0.5")]);
    assert_eq!(
        filtered(&proxy),
        [
            (ip("10.21.0.5"), SpecialClass::Private, false),
            (ip("127.0.0.2"), SpecialClass::Loopback, false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditing_network_keeps_them_in_the_answer_but_learns_none() {
    let up = Upstream::start(Mode::Normal).await;
    let owner = "www.example.com.";
    up.answer(
        "www.example.com",
        RecordType::A,
        vec![a(owner, 60, [10, 0, 0, 5]), a(owner, 60, [192, 0, 2, 1])],
    );
    let proxy = Proxy::start(config(&[up.addr]), policy_in(LAN, NetworkMode::Audit)).await;
    let (reply, _) = udp(proxy.udp, &query(owner, RecordType::A, None)).await;
    assert_eq!(addresses(&reply), [ip("10.0.0.5"), ip("192.0.2.1")]);
    assert_eq!(proxy.sink.addrs(), [ip("192.0.2.1")]);
    assert_eq!(
        filtered(&proxy),
        [(ip("10.0.0.5"), SpecialClass::Private, true)]
    );
}
