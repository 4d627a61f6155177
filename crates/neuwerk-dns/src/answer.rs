//! What an upstream answer teaches (the addresses answering the question,
//! through the CNAME chain) and how it is relayed to the client (TTLs
//! capped, sized for the client's transport, special-use addresses left
//! out: [`strip`]).

use std::net::IpAddr;

use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use smallvec::SmallVec;

use crate::message;
use crate::wire::{self, Section, WireError};

mod strip;

pub(crate) use strip::strip;

/// Longest CNAME chain followed from the query name; real chains are a few
/// hops, the bound only stops hostile answers.
pub(crate) const MAX_CNAME_CHAIN: usize = 16;

/// Smallest UDP payload every client accepts (RFC 1035).
pub(crate) const MIN_UDP_PAYLOAD: u16 = 512;

/// EDNS UDP payload size advertised upstream and to clients (DNS flag day
/// 2020: avoids IP fragmentation on common paths).
pub(crate) const EDNS_PAYLOAD: u16 = 1232;

/// Largest DNS message over TCP (2-byte length prefix).
pub(crate) const MAX_TCP_MESSAGE: usize = u16::MAX as usize;

/// Why an answer could not be prepared for the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnswerError {
    #[error("malformed upstream answer: {0}")]
    Wire(#[from] WireError),
    #[error("decoding the answer failed: {0}")]
    Decode(#[from] hickory_proto::serialize::binary::DecodeError),
    #[error("re-encoding the answer failed: {0}")]
    Encode(#[from] hickory_proto::ProtoError),
}

/// Addresses one answer usually carries at most: up to this many are
/// held inline, so an answer's addresses cost no allocation.
const INLINE_ADDRS: usize = 4;

/// The addresses learned from an answer, each once, with the TTL in
/// seconds of its record (`ttls[i]` is `addrs[i]`'s). Kept apart so that
/// the addresses can be lent out as a slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Learned {
    pub addrs: SmallVec<[IpAddr; INLINE_ADDRS]>,
    pub ttls: SmallVec<[u32; INLINE_ADDRS]>,
}

impl Learned {
    pub(crate) fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Keeps the addresses (and their TTLs) `keep` accepts, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(IpAddr) -> bool) {
        let mut i = 0;
        while i < self.addrs.len() {
            if keep(self.addrs[i]) {
                i += 1;
            } else {
                self.addrs.remove(i);
                self.ttls.remove(i);
            }
        }
    }
}

/// RR types and class read here.
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// The name at `at` in `b`, decoded by hickory-proto (which follows and
/// bounds compression pointers); `None` if it is not a valid name.
fn name_at(b: &[u8], at: usize) -> Option<Name> {
    let mut d = BinDecoder::new(b).clone(u16::try_from(at).ok()?);
    Name::read(&mut d).ok()
}

/// The name at `at` is a compression pointer to the question's name (the
/// usual owner of an answer record), so it is that name.
fn is_question_name(b: &[u8], at: usize) -> bool {
    b.get(at..at + 2) == Some(&[0xc0, wire::HEADER_LEN as u8])
}

/// The names that answer a question: its name, then each CNAME target
/// reached from it, until a name without CNAME, a loop, or
/// [`MAX_CNAME_CHAIN`] hops. Bounded, so it lives on the stack.
pub(crate) struct Chain<'a> {
    names: [&'a Name; MAX_CNAME_CHAIN + 1],
    len: usize,
}

impl<'a> Chain<'a> {
    /// The chain from `qname` through `cnames`, (owner, target) pairs.
    pub(crate) fn follow(qname: &'a Name, cnames: &'a [(Name, Name)]) -> Chain<'a> {
        let mut names = [qname; MAX_CNAME_CHAIN + 1];
        let mut len = 1;
        while len < names.len() {
            let current = names[len - 1];
            let target = cnames.iter().find(|(owner, _)| owner == current);
            match target {
                // A loop back into the chain ends it.
                Some((_, t)) if !names[..len].contains(&t) => {
                    names[len] = t;
                    len += 1;
                }
                _ => break,
            }
        }
        Chain { names, len }
    }

    /// Whether `name` (any case) is in the chain.
    pub(crate) fn contains(&self, name: &Name) -> bool {
        self.names[..self.len].contains(&name)
    }
}

/// The A and AAAA records of the answer section owned by `qname` or by a
/// name reached from it through the answer's CNAME chain. Records for any
/// other name are ignored: only what answers the question becomes a grant.
/// One entry per address, with the longest TTL seen for it.
///
/// `b` is an answer whose question is `qname` (checked when it was
/// accepted) and whose records walk cleanly (checked by the same walk).
pub(crate) fn chain_addresses(b: &[u8], qname: &Name) -> Learned {
    let mut out = Learned::default();
    let Ok((records, _)) = wire::Records::new(b) else {
        return out;
    };
    let answers = || {
        let mut records = records.clone();
        std::iter::from_fn(move || records.next(b))
            .map_while(Result::ok)
            .filter(|s| s.section == Section::Answer && s.class == CLASS_IN)
    };
    // (owner, target) of each CNAME; most answers have none.
    let cnames: Vec<(Name, Name)> = answers()
        .filter(|s| s.rtype == TYPE_CNAME)
        .filter_map(|s| Some((name_at(b, s.start)?, name_at(b, s.rdata)?)))
        .collect();
    let chain = Chain::follow(qname, &cnames);

    for s in answers() {
        let rdata = &b[s.rdata..s.end];
        let addr = match (s.rtype, rdata.len()) {
            (TYPE_A, 4) => IpAddr::from(<[u8; 4]>::try_from(rdata).unwrap_or_default()),
            (TYPE_AAAA, 16) => IpAddr::from(<[u8; 16]>::try_from(rdata).unwrap_or_default()),
            _ => continue,
        };
        let owned = is_question_name(b, s.start)
            || name_at(b, s.start).is_some_and(|owner| chain.contains(&owner));
        if !owned {
            continue;
        }
        let ttl = wire::ttl(b, s.ttl_at);
        match out.addrs.iter().position(|a| *a == addr) {
            Some(i) => out.ttls[i] = out.ttls[i].max(ttl),
            None => {
                out.addrs.push(addr);
                out.ttls.push(ttl);
            }
        }
    }
    out
}

/// How the client asked: decides the size limit and the OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientView {
    pub id: u16,
    /// The client's EDNS payload size, if it sent an OPT record.
    pub edns_payload: Option<u16>,
    pub udp: bool,
}

impl ClientView {
    /// The largest reply the client takes on its transport.
    pub(crate) fn limit(&self) -> usize {
        if !self.udp {
            return MAX_TCP_MESSAGE;
        }
        self.edns_payload.unwrap_or(0).max(MIN_UDP_PAYLOAD) as usize
    }
}

/// What [`relay`] did, beyond capping TTLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Relayed {
    pub truncated: bool,
}

/// Turns the upstream's answer bytes into the client's reply, in place: the
/// client's id, every TTL capped at `max_ttl` (so no client caches an answer
/// longer than its grant lives), the OPT record dropped if the client sent
/// none (RFC 6891 §7), and cut to the client's size with TC=1.
///
/// The answer is decoded and re-encoded only in the rare case of an OPT
/// record that is not the message's last record.
pub(crate) fn relay(
    mut bytes: Vec<u8>,
    client: &ClientView,
    max_ttl: u32,
) -> Result<(Vec<u8>, Relayed), AnswerError> {
    let (mut records, _) = wire::Records::new(&bytes)?;
    let mut opt = None;
    while let Some(span) = records.next(&bytes) {
        let span = span?;
        if span.rtype == wire::TYPE_OPT && span.section == Section::Additional {
            // Its "TTL" holds the extended rcode, version and flags.
            opt = Some(span);
        } else if wire::ttl(&bytes, span.ttl_at) > max_ttl {
            wire::set_ttl(&mut bytes, span.ttl_at, max_ttl);
        }
    }
    wire::set_id(&mut bytes, client.id);
    let opt_ttl = opt.map(|o| wire::ttl(&bytes, o.ttl_at));

    if let (None, Some(opt)) = (client.edns_payload, opt) {
        if opt.end == bytes.len() {
            bytes.truncate(opt.start);
            let arcount = wire::arcount(&bytes);
            wire::set_section_count(&mut bytes, Section::Additional, arcount - 1);
        } else {
            bytes = reencode_without_edns(&bytes, client.id, max_ttl)?;
        }
    }

    let limit = client.limit();
    if bytes.len() <= limit {
        return Ok((bytes, Relayed::default()));
    }
    truncate(&mut bytes, limit, client.edns_payload.is_some(), opt_ttl)?;
    Ok((bytes, Relayed { truncated: true }))
}

/// Cuts `bytes` to at most `limit`: header, question and as many whole
/// answer records as fit (compression pointers only point backwards, so a
/// prefix stays valid), plus a fresh OPT record for EDNS clients; TC=1 so
/// the client retries over TCP.
fn truncate(
    bytes: &mut Vec<u8>,
    limit: usize,
    edns: bool,
    opt_ttl: Option<u32>,
) -> Result<(), AnswerError> {
    const OPT_LEN: usize = 11;
    let reserve = if edns { OPT_LEN } else { 0 };
    let (mut records, question_end) = wire::Records::new(bytes)?;
    let mut end = question_end;
    let mut answers: u16 = 0;
    while let Some(span) = records.next(bytes) {
        let span = span?;
        if span.section != Section::Answer || span.end + reserve > limit {
            break;
        }
        end = span.end;
        answers += 1;
    }
    bytes.truncate(end);
    wire::set_section_count(bytes, Section::Answer, answers);
    wire::set_section_count(bytes, Section::Authority, 0);
    wire::set_section_count(bytes, Section::Additional, 0);
    wire::set_truncated(bytes);
    if edns {
        // Our payload size, the upstream's extended rcode/version/flags
        // when it sent an OPT record.
        message::push_opt(bytes, opt_ttl.unwrap_or(0));
        wire::set_section_count(bytes, Section::Additional, 1);
    }
    Ok(())
}

/// The slow path of [`relay`]: decodes the answer and encodes it again
/// without its OPT record, with the client's id and capped TTLs.
fn reencode_without_edns(bytes: &[u8], id: u16, max_ttl: u32) -> Result<Vec<u8>, AnswerError> {
    let mut msg = Message::from_vec(bytes)?;
    msg.edns = None;
    msg.metadata.id = id;
    for r in msg
        .answers
        .iter_mut()
        .chain(msg.authorities.iter_mut())
        .chain(msg.additionals.iter_mut())
    {
        r.ttl = r.ttl.min(max_ttl);
    }
    Ok(msg.to_vec()?)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
    use hickory_proto::rr::{RData, Record, RecordType};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn cname(owner: &str, ttl: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn response(qname: &str, answers: Vec<Record>) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name(qname), RecordType::A));
        m.add_answers(answers);
        m
    }

    #[test]
    fn chain_follows_cnames_and_ignores_other_names() {
        let m = response(
            "www.example.com.",
            vec![
                cname("WWW.example.com.", 300, "edge.cdn.net."),
                cname("edge.cdn.net.", 300, "e1.cdn.net."),
                a("e1.cdn.net.", 60, [192, 0, 2, 1]),
                a("e1.cdn.net.", 30, [192, 0, 2, 1]),
                Record::from_rdata(
                    name("e1.cdn.net."),
                    20,
                    RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
                ),
                a("evil.example.org.", 60, [203, 0, 113, 6]),
            ],
        );
        let got = chain_addresses(&m.to_vec().unwrap(), &name("www.example.com."));
        assert_eq!(
            got,
            Learned {
                addrs: [[192, 0, 2, 1].into(), Ipv6Addr::LOCALHOST.into()]
                    .into_iter()
                    .collect(),
                ttls: [60, 20].into_iter().collect(),
            }
        );
    }

    #[test]
    fn chain_survives_loops() {
        let m = response(
            "a.test.",
            vec![
                cname("a.test.", 1, "b.test."),
                cname("b.test.", 1, "a.test."),
                a("b.test.", 5, [10, 0, 0, 1]),
            ],
        );
        let got = chain_addresses(&m.to_vec().unwrap(), &name("a.test."));
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn chain_is_bounded() {
        let mut recs: Vec<Record> = (0..40)
            .map(|i| cname(&format!("n{i}.test."), 1, &format!("n{}.test.", i + 1)))
            .collect();
        recs.push(a("n40.test.", 5, [10, 0, 0, 1]));
        recs.push(a("n3.test.", 5, [10, 0, 0, 3]));
        let bytes = response("n0.test.", recs).to_vec().unwrap();
        let got = chain_addresses(&bytes, &name("n0.test."));
        assert_eq!(got.addrs[..], [IpAddr::from([10, 0, 0, 3])]);
    }

    fn view(edns_payload: Option<u16>, udp: bool) -> ClientView {
        ClientView {
            id: 0x1234,
            edns_payload,
            udp,
        }
    }

    #[test]
    fn relay_caps_ttls_everywhere_and_sets_id() {
        let mut m = response(
            "x.test.",
            vec![
                a("x.test.", 9000, [1, 2, 3, 4]),
                a("x.test.", 5, [1, 2, 3, 5]),
            ],
        );
        m.add_authority(a("ns.test.", 7200, [1, 1, 1, 1]));
        m.add_additional(Record::from_rdata(
            name("t.test."),
            99999,
            RData::TXT(TXT::new(vec!["hi".into()])),
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        m.set_edns(edns);
        let bytes = m.to_vec().unwrap();
        let (out, r) = relay(bytes, &view(Some(1232), true), 600).unwrap();
        assert!(!r.truncated);
        let got = Message::from_vec(&out).unwrap();
        assert_eq!(got.id, 0x1234);
        let ttls: Vec<u32> = got.all_sections().map(|r| r.ttl).collect();
        assert_eq!(ttls, vec![600, 5, 600, 600]);
        assert_eq!(got.edns.unwrap().max_payload(), 1232);
    }

    #[test]
    fn relay_drops_opt_for_clients_without_edns() {
        let mut m = response("x.test.", vec![a("x.test.", 60, [1, 2, 3, 4])]);
        m.add_additional(a("y.test.", 60, [1, 2, 3, 5]));
        m.set_edns(Edns::new());
        let bytes = m.to_vec().unwrap();
        let (out, _) = relay(bytes.clone(), &view(None, true), 600).unwrap();
        let got = Message::from_vec(&out).unwrap();
        assert!(got.edns.is_none());
        assert_eq!(got.additionals.len(), 1);
        assert_eq!(out.len(), bytes.len() - 11);

        // OPT first in the additional section: the slow path.
        let mut raw = Message::new(7, MessageType::Response, OpCode::Query);
        raw.add_query(Query::query(name("x.test."), RecordType::A));
        raw.add_answer(a("x.test.", 60, [1, 2, 3, 4]));
        let mut bytes = raw.to_vec().unwrap();
        // Append OPT then an A record by hand, ARCOUNT = 2.
        bytes.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 9, 9, 9, 9]);
        bytes[11] = 2;
        assert!(Message::from_vec(&bytes).unwrap().edns.is_some());
        let (out, _) = relay(bytes, &view(None, true), 30).unwrap();
        let got = Message::from_vec(&out).unwrap();
        assert!(got.edns.is_none());
        assert_eq!(got.id, 0x1234);
        assert_eq!(got.additionals.len(), 1);
        assert!(got.all_sections().all(|r| r.ttl == 30));
    }

    #[test]
    fn relay_truncates_for_small_udp_clients_only() {
        let recs = (0..100)
            .map(|i| a("big.test.", 60, [10, 0, 0, i]))
            .collect();
        let mut m = response("big.test.", recs);
        m.add_additional(a("big.test.", 60, [10, 1, 0, 0]));
        m.set_edns(Edns::new());
        let bytes = m.to_vec().unwrap();

        let (out, r) = relay(bytes.clone(), &view(None, true), 600).unwrap();
        assert!(r.truncated);
        assert!(out.len() <= 512);
        let got = Message::from_vec(&out).unwrap();
        assert!(got.truncation);
        assert!(got.edns.is_none());
        assert!(!got.answers.is_empty() && got.answers.len() < 100);
        assert!(got.additionals.is_empty());
        assert_eq!(got.queries.len(), 1);

        let (out, r) = relay(bytes.clone(), &view(Some(1000), true), 600).unwrap();
        assert!(r.truncated && out.len() <= 1000);
        let got = Message::from_vec(&out).unwrap();
        assert!(got.truncation);
        assert_eq!(got.edns.unwrap().max_payload(), EDNS_PAYLOAD);

        let (out, r) = relay(bytes, &view(Some(1000), false), 600).unwrap();
        assert!(!r.truncated);
        assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 100);
    }

    #[test]
    fn client_limit() {
        assert_eq!(view(None, true).limit(), 512);
        assert_eq!(view(Some(100), true).limit(), 512);
        assert_eq!(view(Some(4096), true).limit(), 4096);
        assert_eq!(view(None, false).limit(), 65535);
    }
}
