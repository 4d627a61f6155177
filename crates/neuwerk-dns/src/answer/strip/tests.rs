use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, TXT};
use hickory_proto::rr::{RData, Record, RecordType};

use super::*;
use crate::answer::{chain_addresses, relay, ClientView};

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a(owner: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(name(owner), 60, RData::A(A(Ipv4Addr::from(ip))))
}

fn aaaa(owner: &str, ip: &str) -> Record {
    let ip: Ipv6Addr = ip.parse().unwrap();
    Record::from_rdata(name(owner), 60, RData::AAAA(AAAA(ip)))
}

fn cname(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
}

fn response(qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
    let mut m = Message::new(7, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(name(qname), qtype));
    m.add_answers(answers);
    m
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(address).collect()
}

#[test]
fn a_mixed_answer_keeps_its_public_address_and_everything_else() {
    let mut m = response(
        "mixed.example.com.",
        RecordType::A,
        vec![
            a("mixed.example.com.", [10, 0, 0, 5]),
            a("mixed.example.com.", [192, 0, 2, 1]),
            a("mixed.example.com.", [169, 254, 169, 254]),
        ],
    );
    m.add_authority(Record::from_rdata(
        name("example.com."),
        60,
        RData::NS(NS(name("ns.example.com."))),
    ));
    m.add_additional(a("ns.example.com.", [10, 0, 0, 5]));
    m.add_additional(Record::from_rdata(
        name("t.example.com."),
        60,
        RData::TXT(TXT::new(vec!["hi".into()])),
    ));
    m.set_edns(Edns::new());
    let bytes = m.to_vec().unwrap();
    let qname = name("mixed.example.com.");
    assert_eq!(chain_addresses(&bytes, &qname).len(), 3);

    let out = strip(&bytes, &qname, &[ip("10.0.0.5"), ip("169.254.169.254")]).unwrap();
    let got = Message::from_vec(&out).unwrap();
    assert_eq!(addresses(&got), [ip("192.0.2.1")]);
    assert_eq!(got.id, 7);
    assert_eq!(got.response_code, ResponseCode::NoError);
    assert_eq!(got.queries, m.queries);
    // Only the answer section's records of the question are concerned:
    // the glue with the same address stays.
    assert_eq!(got.authorities, m.authorities);
    assert_eq!(got.additionals, m.additionals);
    assert!(got.edns.is_some());
    // What the client then gets, and what is learned from it.
    assert_eq!(chain_addresses(&out, &qname).addrs[..], [ip("192.0.2.1")]);
    let client = ClientView {
        id: 0x99,
        edns_payload: Some(1232),
        udp: true,
    };
    let (reply, _) = relay(out, &client, 30).unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.id, 0x99);
    assert_eq!(addresses(&reply), [ip("192.0.2.1")]);
}

#[test]
fn the_cname_chain_stays_and_only_its_addresses_go() {
    let m = response(
        "www.example.com.",
        RecordType::A,
        vec![
            cname("WWW.example.com.", "edge.cdn.net."),
            cname("edge.cdn.net.", "e1.cdn.net."),
            a("e1.cdn.net.", [10, 1, 2, 3]),
            a("e1.cdn.net.", [198, 51, 100, 7]),
            // Not on the chain: never learned, so never removed.
            a("other.cdn.net.", [10, 1, 2, 3]),
        ],
    );
    let bytes = m.to_vec().unwrap();
    let out = strip(&bytes, &name("www.example.com."), &[ip("10.1.2.3")]).unwrap();
    let got = Message::from_vec(&out).unwrap();
    let cnames = got
        .answers
        .iter()
        .filter(|r| matches!(r.data, RData::CNAME(_)))
        .count();
    assert_eq!(cnames, 2);
    let left: Vec<(String, IpAddr)> = got
        .answers
        .iter()
        .filter_map(|r| Some((r.name.to_ascii(), address(r)?)))
        .collect();
    assert_eq!(
        left,
        [
            ("e1.cdn.net.".to_string(), ip("198.51.100.7")),
            ("other.cdn.net.".to_string(), ip("10.1.2.3"))
        ]
    );
}

#[test]
fn an_answer_with_only_special_use_addresses_is_left_with_none() {
    let m = response(
        "meta.example.com.",
        RecordType::A,
        vec![
            cname("meta.example.com.", "metadata.internal."),
            a("metadata.internal.", [169, 254, 169, 254]),
            a("metadata.internal.", [127, 0, 0, 1]),
        ],
    );
    let bytes = m.to_vec().unwrap();
    let qname = name("meta.example.com.");
    let drop = chain_addresses(&bytes, &qname).addrs;
    let out = strip(&bytes, &qname, &drop).unwrap();
    let got = Message::from_vec(&out).unwrap();
    assert_eq!(got.response_code, ResponseCode::NoError);
    assert_eq!(got.answers.len(), 1);
    assert!(matches!(got.answers[0].data, RData::CNAME(_)));
    assert!(chain_addresses(&out, &qname).is_empty());
}

#[test]
fn mapped_aaaa_records_go_and_real_ipv6_stays() {
    let m = response(
        "v6.example.com.",
        RecordType::AAAA,
        vec![
            aaaa("v6.example.com.", "::ffff:10.0.0.1"),
            aaaa("v6.example.com.", "2001:db8::1"),
        ],
    );
    let bytes = m.to_vec().unwrap();
    let out = strip(&bytes, &name("v6.example.com."), &[ip("::ffff:10.0.0.1")]).unwrap();
    let got = Message::from_vec(&out).unwrap();
    assert_eq!(addresses(&got), [ip("2001:db8::1")]);
}
