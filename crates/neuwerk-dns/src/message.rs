//! The parts of a message the query path reads, and the messages it writes.
//!
//! A query and its answer were each decoded into a whole hickory-proto
//! `Message` (a vector per section, every record and its data) and the
//! upstream query encoded from one: about a tenth of the proxy's CPU per
//! query, for a header, one question and an OPT record. hickory-proto
//! still decodes what needs decoding (header, question, names, with their
//! compression and validity rules); [`wire`] locates the records; the few
//! messages the proxy writes have a fixed layout and are written here.

use hickory_proto::op::{Header, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::answer::EDNS_PAYLOAD;
use crate::wire::{self, Section, WireError, HEADER_LEN, TYPE_OPT};

/// An OPT record's fields the proxy uses (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opt {
    /// The sender's UDP payload size.
    pub payload: u16,
    /// The TTL field: extended rcode, version, DO and the other flags.
    pub ttl: u32,
}

impl Opt {
    /// The DO bit.
    pub(crate) fn dnssec_ok(&self) -> bool {
        self.ttl & 0x8000 != 0
    }
}

/// Why a message cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{0}")]
    Decode(#[from] hickory_proto::serialize::binary::DecodeError),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0} questions")]
    Questions(u16),
    #[error("compressed question name")]
    CompressedQuestion,
}

/// A message with exactly one question, read as far as the proxy needs.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub header: Header,
    pub question: Query,
    /// Where the question section ends (it starts at [`HEADER_LEN`]).
    pub question_end: usize,
    /// The OPT record of the additional section, if any.
    pub opt: Option<Opt>,
}

/// Reads the header and the single question, and walks every record
/// after it (so a message that ends early or has a bad name is refused
/// here, not halfway through relaying it).
pub(crate) fn read(b: &[u8]) -> Result<Parsed, ReadError> {
    let mut d = BinDecoder::new(b);
    let header = Header::read(&mut d)?;
    if header.counts.queries != 1 {
        return Err(ReadError::Questions(header.counts.queries));
    }
    let question = Query::read(&mut d)?;
    let (mut records, question_end) = wire::Records::new(b)?;
    let mut opt = None;
    while let Some(span) = records.next(b) {
        let span = span?;
        if span.rtype == TYPE_OPT && span.section == Section::Additional {
            opt = Some(Opt {
                payload: span.class,
                ttl: wire::ttl(b, span.ttl_at),
            });
        }
    }
    Ok(Parsed {
        header,
        question,
        question_end,
        opt,
    })
}

/// [`read`] for a client's query, whose question name must not be
/// compressed: its bytes are copied into the upstream query and replies,
/// where a pointer would point into other bytes and name another name than
/// the one policy allowed.
pub(crate) fn read_query(b: &[u8]) -> Result<Parsed, ReadError> {
    let parsed = read(b)?;
    if !wire::is_plain_name(b, HEADER_LEN) {
        return Err(ReadError::CompressedQuestion);
    }
    Ok(parsed)
}

/// What the proxy needs of an upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AnswerHead {
    /// With the OPT record's extended bits.
    pub rcode: ResponseCode,
    /// TC=1: the whole answer must be fetched over TCP.
    pub truncated: bool,
}

/// Reads an upstream answer to `sent`, the query as the proxy sent it: the
/// answer must ask its question ([`wire::same_question`]) and its records
/// must walk cleanly, so one that ends early is refused here, not halfway
/// through relaying it. Its names are not decoded: the question is
/// compared on the wire, the records are only located (decoding the
/// answer's question with hickory-proto was 3% of the proxy's CPU).
pub(crate) fn read_answer(b: &[u8], sent: &[u8]) -> Option<AnswerHead> {
    if !wire::same_question(b, sent) {
        return None;
    }
    let (mut records, _) = wire::Records::new(b).ok()?;
    let mut extended = 0;
    while let Some(span) = records.next(b) {
        let span = span.ok()?;
        if span.rtype == TYPE_OPT && span.section == Section::Additional {
            extended = (wire::ttl(b, span.ttl_at) >> 24) as u8;
        }
    }
    Some(AnswerHead {
        rcode: ResponseCode::from(extended, wire::rcode_low(b)),
        truncated: wire::is_truncated(b),
    })
}

/// Length of the OPT record written here: root owner, no options.
const OPT_LEN: usize = 11;

/// Appends an OPT record with our payload size and `ttl`'s flags.
pub(crate) fn push_opt(out: &mut Vec<u8>, ttl: u32) {
    out.extend_from_slice(&[0, 0, TYPE_OPT as u8]);
    out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

/// Header (`flags` as bytes 2 and 3), the question of `query` copied as
/// received, and an OPT record with `opt_ttl` if given.
fn with_question(query: &[u8], q: &Parsed, flags: [u8; 2], opt_ttl: Option<u32>) -> Vec<u8> {
    let question = &query[HEADER_LEN..q.question_end];
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + OPT_LEN);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&flags);
    let arcount = u16::from(opt_ttl.is_some());
    for count in [1, 0, 0, arcount] {
        out.extend_from_slice(&count.to_be_bytes());
    }
    out.extend_from_slice(question);
    if let Some(ttl) = opt_ttl {
        push_opt(&mut out, ttl);
    }
    out
}

/// The upstream query for the client's `query`: its question and its RD,
/// AD and CD flags, EDNS with our payload size and the client's DO bit.
/// The client's other EDNS options (client subnet, cookies) are not
/// forwarded: they describe the client, whom the upstream is not talking
/// to. Id 0 until each try sets one.
pub(crate) fn upstream_query(query: &[u8], q: &Parsed) -> Vec<u8> {
    let flags = [query[2] & 0x01, query[3] & 0x30];
    let dnssec_ok = q.opt.is_some_and(|o| o.dnssec_ok());
    let mut out = with_question(query, q, flags, Some(u32::from(dnssec_ok) << 15));
    wire::set_id(&mut out, 0);
    out
}

/// A reply to `query` with `rcode`: the client's id, RD and CD, RA set,
/// the question echoed, and an OPT record (with the client's DO bit) if
/// the client sent one.
pub(crate) fn error_reply(query: &[u8], q: &Parsed, rcode: ResponseCode) -> Vec<u8> {
    let code = u16::from(rcode);
    let flags = [
        0x80 | (query[2] & 0x01),
        0x80 | (query[3] & 0x10) | (code & 0x0f) as u8,
    ];
    let opt_ttl = q.opt.map(|o| {
        let high = u32::from((code >> 4) as u8) << 24;
        high | (o.ttl & 0x8000)
    });
    with_question(query, q, flags, opt_ttl)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn client_query(edns: Option<bool>) -> Vec<u8> {
        let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.checking_disabled = true;
        m.add_query(Query::query(
            Name::from_ascii("WWW.Example.com.").unwrap(),
            RecordType::AAAA,
        ));
        if let Some(dnssec_ok) = edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn reads_question_and_opt() {
        let b = client_query(Some(true));
        let q = read(&b).unwrap();
        assert_eq!(q.header.metadata.id, 0xbeef);
        assert_eq!(q.question.query_type(), RecordType::AAAA);
        assert_eq!(
            q.question.name(),
            &Name::from_ascii("www.example.com.").unwrap()
        );
        let opt = q.opt.unwrap();
        assert_eq!(opt.payload, 4096);
        assert!(opt.dnssec_ok());
        assert!(read(&client_query(None)).unwrap().opt.is_none());
    }

    #[test]
    fn refuses_short_and_multi_question_messages() {
        let b = client_query(Some(false));
        assert!(read(&b[..b.len() - 3]).is_err());
        let mut two = b.clone();
        two[5] = 2;
        assert!(read(&two).is_err());
    }

    #[test]
    fn a_compressed_question_name_is_refused() {
        // "a" then a pointer to offset 2 (into the header).
        let mut b = vec![0, 1, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&[1, b'a', 0xc0, 2, 0, 1, 0, 1]);
        assert!(matches!(
            read_query(&b),
            Err(ReadError::CompressedQuestion) | Err(ReadError::Decode(_))
        ));
        assert!(read_query(&client_query(None)).is_ok());
    }

    #[test]
    fn upstream_query_keeps_question_flags_and_do_bit_only() {
        for dnssec_ok in [false, true] {
            let b = client_query(Some(dnssec_ok));
            let q = read(&b).unwrap();
            let up = Message::from_vec(&upstream_query(&b, &q)).unwrap();
            assert_eq!(up.id, 0);
            assert_eq!(up.message_type, MessageType::Query);
            assert!(up.recursion_desired && up.checking_disabled && !up.authentic_data);
            assert_eq!(up.queries, vec![q.question.clone()]);
            let edns = up.edns.unwrap();
            assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
            assert_eq!(edns.flags().dnssec_ok, dnssec_ok);
        }
    }

    #[test]
    fn error_reply_echoes_question_and_edns() {
        let b = client_query(Some(true));
        let q = read(&b).unwrap();
        let r = Message::from_vec(&error_reply(&b, &q, ResponseCode::Refused)).unwrap();
        assert_eq!(r.id, 0xbeef);
        assert_eq!(r.message_type, MessageType::Response);
        assert_eq!(r.response_code, ResponseCode::Refused);
        assert!(r.recursion_desired && r.recursion_available && r.checking_disabled);
        assert_eq!(r.queries, vec![q.question.clone()]);
        assert!(r.answers.is_empty());
        let edns = r.edns.unwrap();
        assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
        assert!(edns.flags().dnssec_ok);

        let b = client_query(None);
        let q = read(&b).unwrap();
        let r = Message::from_vec(&error_reply(&b, &q, ResponseCode::NXDomain)).unwrap();
        assert_eq!(r.response_code, ResponseCode::NXDomain);
        assert!(r.edns.is_none());
    }

    #[test]
    fn an_answer_is_read_against_the_query_sent() {
        let b = client_query(Some(false));
        let sent = upstream_query(&b, &read(&b).unwrap());
        // The upstream's answer: the query echoed as a response, with an
        // extended rcode (BADVERS, 16) in its OPT record and TC set.
        let mut answer = sent.clone();
        answer[2] |= 0x82;
        answer[3] = 0x80;
        let ttl_at = answer.len() - 6;
        answer[ttl_at] = 1;
        let head = read_answer(&answer, &sent).unwrap();
        assert_eq!(u16::from(head.rcode), 16);
        assert!(head.truncated);
        // Cut inside its OPT record, or asking another question: refused.
        assert_eq!(read_answer(&answer[..answer.len() - 2], &sent), None);
        let mut other = answer.clone();
        other[HEADER_LEN + 1] ^= 1;
        assert_eq!(read_answer(&other, &sent), None);
    }
}
