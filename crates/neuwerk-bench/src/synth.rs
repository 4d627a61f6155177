//! The synthetic zone's answers, written straight into wire format.
//!
//! The usual query (one question, uncompressed name, at most an OPT record)
//! is answered without decoding into a `Message`: the reply is the query's
//! header and question, one A record pointing back at the question name,
//! and an OPT record if the query had one. Anything else goes through
//! hickory-proto's `Message` (FORMERR for what it cannot decode). Keeping
//! the common case to a few hundred nanoseconds matters: in the benchmarks
//! this server shares two cores with the system under test.

use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

const HEADER_LEN: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// Answers are sent from 198.18.0.0/15 (RFC 2544 benchmarking space).
const BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const SPAN: u32 = 1 << 17;
/// The EDNS payload size announced in replies.
const EDNS_PAYLOAD: u16 = 1232;

/// The zone served and how.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lowercase wire labels of the zone apex, e.g. `[b"bench", b"test"]`.
    labels: Vec<Vec<u8>>,
    pub ttl: u32,
}

impl Zone {
    /// `apex` like `bench.test` (a trailing dot is fine).
    pub fn new(apex: &str, ttl: u32) -> Zone {
        let labels = apex
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
            .map(|l| l.to_ascii_lowercase().into_bytes())
            .collect();
        Zone { labels, ttl }
    }

    /// Whether `name` (labels, any case) is the apex or below it.
    fn contains(&self, name: &[&[u8]]) -> bool {
        name.len() >= self.labels.len()
            && name[name.len() - self.labels.len()..]
                .iter()
                .zip(&self.labels)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

/// The address of a name whose first label is `label`: the digits in it
/// (`n123456` -> 123456) added to 198.18.0.0, wrapping inside the /15;
/// a label without digits is hashed instead.
pub fn address_for(label: &[u8]) -> Ipv4Addr {
    let digits: Vec<u8> = label.iter().copied().filter(u8::is_ascii_digit).collect();
    let n = if digits.is_empty() {
        // FNV-1a
        label.iter().fold(0x811c_9dc5u32, |h, &b| {
            (h ^ u32::from(b.to_ascii_lowercase())).wrapping_mul(0x0100_0193)
        })
    } else {
        digits.iter().fold(0u32, |n, &d| {
            n.wrapping_mul(10).wrapping_add(u32::from(d - b'0'))
        })
    };
    Ipv4Addr::from(BASE + n % SPAN)
}

/// What [`answer`] did, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Fast path.
    Fast,
    /// Through hickory-proto.
    Slow,
    /// Not a query: no reply.
    Ignored,
}

/// Writes the reply to `query` into `out` (cleared first).
pub fn answer(zone: &Zone, query: &[u8], out: &mut Vec<u8>) -> Kind {
    out.clear();
    if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
        return Kind::Ignored;
    }
    if fast(zone, query, out) {
        Kind::Fast
    } else {
        out.clear();
        slow(zone, query, out);
        if out.is_empty() {
            Kind::Ignored
        } else {
            Kind::Slow
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn fast(zone: &Zone, q: &[u8], out: &mut Vec<u8>) -> bool {
    let opcode = (q[2] >> 3) & 0x0f;
    let (qd, an, ns, ar) = (be16(q, 4), be16(q, 6), be16(q, 8), be16(q, 10));
    if opcode != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return false;
    }
    // The question name: plain labels only.
    let mut labels: [&[u8]; 128] = [&[]; 128];
    let mut n = 0;
    let mut at = HEADER_LEN;
    loop {
        let Some(&len) = q.get(at) else { return false };
        let len = len as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 || n == labels.len() || at + 1 + len > q.len() {
            return false;
        }
        labels[n] = &q[at + 1..at + 1 + len];
        n += 1;
        at += 1 + len;
    }
    if at + 4 > q.len() {
        return false;
    }
    let qtype = be16(q, at);
    let qclass = be16(q, at + 2);
    let question_end = at + 4;
    // An OPT record, or nothing, after the question.
    let mut edns_do = None;
    if ar == 1 {
        let r = &q[question_end..];
        if r.len() < 11 || r[0] != 0 || be16(r, 1) != TYPE_OPT {
            return false;
        }
        edns_do = Some(r[7] & 0x80 != 0);
    } else if question_end != q.len() {
        return false;
    }
    if qclass != CLASS_IN {
        return false;
    }
    let name = &labels[..n];
    let in_zone = zone.contains(name);
    let rcode = if in_zone { 0 } else { 3 }; // NOERROR / NXDOMAIN
    let with_a = in_zone && qtype == TYPE_A && n > zone.labels.len();

    out.extend_from_slice(&q[..2]);
    // QR, opcode 0, AA, RD copied; RA 0, Z/AD 0, CD copied, rcode.
    out.push(0x80 | 0x04 | (q[2] & 0x01));
    out.push((q[3] & 0x10) | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::from(with_a).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&u16::from(edns_do.is_some()).to_be_bytes());
    out.extend_from_slice(&q[HEADER_LEN..question_end]);
    if with_a {
        out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&zone.ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&address_for(name[0]).octets());
    }
    if let Some(dnssec_ok) = edns_do {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        out.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
        out.extend_from_slice(&0u16.to_be_bytes());
    }
    true
}

fn slow(zone: &Zone, q: &[u8], out: &mut Vec<u8>) {
    let id = be16(q, 0);
    let msg = match Message::from_vec(q) {
        Ok(m) => m,
        Err(_) => {
            let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            m.metadata.message_type = MessageType::Response;
            if let Ok(v) = m.to_vec() {
                out.extend_from_slice(&v);
            }
            return;
        }
    };
    let mut reply = Message::response(msg.id, msg.op_code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = msg.recursion_desired;
    reply.metadata.checking_disabled = msg.checking_disabled;
    if msg.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
    } else if msg.queries.len() != 1 {
        reply.metadata.response_code = ResponseCode::FormErr;
    } else {
        let question = &msg.queries[0];
        let name: &Name = question.name();
        let labels: Vec<&[u8]> = name.iter().collect();
        if !zone.contains(&labels) {
            reply.metadata.response_code = ResponseCode::NXDomain;
        } else if question.query_type() == RecordType::A && labels.len() > zone.labels.len() {
            let addr = address_for(labels[0]);
            reply.add_answer(Record::from_rdata(
                name.clone(),
                zone.ttl,
                RData::A(A(addr)),
            ));
        }
        reply.add_query(question.clone());
    }
    if let Some(e) = &msg.edns {
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(e.flags().dnssec_ok);
        reply.set_edns(edns);
    }
    if let Ok(v) = reply.to_vec() {
        out.extend_from_slice(&v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Query};

    fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            e.set_dnssec_ok(true);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn ask(name: &str, t: RecordType, edns: bool) -> (Kind, Message) {
        let zone = Zone::new("Bench.Test.", 30);
        let mut out = Vec::new();
        let kind = answer(&zone, &query(name, t, edns), &mut out);
        (kind, Message::from_vec(&out).unwrap())
    }

    #[test]
    fn addresses_come_from_the_first_label() {
        assert_eq!(address_for(b"n0"), Ipv4Addr::new(198, 18, 0, 0));
        assert_eq!(address_for(b"n123456"), Ipv4Addr::new(198, 19, 226, 64));
        assert_eq!(address_for(b"n131072"), Ipv4Addr::new(198, 18, 0, 0));
        let hashed = u32::from(address_for(b"www"));
        assert!((BASE..BASE + SPAN).contains(&hashed));
    }

    #[test]
    fn in_zone_a_is_answered_on_the_fast_path() {
        for edns in [false, true] {
            let (kind, m) = ask("N123456.bench.TEST.", RecordType::A, edns);
            assert_eq!(kind, Kind::Fast);
            assert_eq!(m.id, 0x1234);
            assert_eq!(m.message_type, MessageType::Response);
            assert!(m.authoritative && m.recursion_desired);
            assert_eq!(m.response_code, ResponseCode::NoError);
            assert_eq!(m.queries.len(), 1);
            assert_eq!(m.answers.len(), 1);
            let a = &m.answers[0];
            assert_eq!(a.name, Name::from_ascii("N123456.bench.TEST.").unwrap());
            assert_eq!(a.ttl, 30);
            assert_eq!(a.data, RData::A(A(Ipv4Addr::new(198, 19, 226, 64))));
            assert_eq!(m.edns.is_some(), edns);
            if edns {
                assert!(m.edns.as_ref().unwrap().flags().dnssec_ok);
            }
        }
    }

    #[test]
    fn outside_the_zone_is_nxdomain_and_other_types_nodata() {
        let (kind, m) = ask("example.com.", RecordType::A, true);
        assert_eq!(kind, Kind::Fast);
        assert_eq!(m.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());
        let (_, m) = ask("n1.bench.test.", RecordType::AAAA, false);
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let (_, m) = ask("bench.test.", RecordType::A, false);
        assert_eq!(m.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unusual_queries_take_the_slow_path() {
        let zone = Zone::new("bench.test", 5);
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("n5.bench.test.").unwrap(),
            RecordType::A,
        ));
        m.add_query(Query::query(
            Name::from_ascii("n6.bench.test.").unwrap(),
            RecordType::A,
        ));
        let mut out = Vec::new();
        assert_eq!(answer(&zone, &m.to_vec().unwrap(), &mut out), Kind::Slow);
        let r = Message::from_vec(&out).unwrap();
        assert_eq!(r.response_code, ResponseCode::FormErr);
        // Garbage after a valid header: FORMERR with the id.
        let mut junk = query("n1.bench.test.", RecordType::A, false);
        junk.truncate(15);
        assert_eq!(answer(&zone, &junk, &mut out), Kind::Slow);
        assert_eq!(be16(&out, 0), 0x1234);
        // Responses are never answered.
        let mut resp = query("n1.bench.test.", RecordType::A, false);
        resp[2] |= 0x80;
        assert_eq!(answer(&zone, &resp, &mut out), Kind::Ignored);
    }
}
