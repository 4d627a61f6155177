//! Just enough of the DNS wire format (RFC 1035 §4) to read a header, build
//! header-only errors, and walk records to patch or cut a message in place.
//!
//! Upstream answers are relayed as the bytes the upstream sent (only the id,
//! TTLs and, when needed, the OPT record and the tail are touched), which is
//! both faithful and cheaper than re-encoding; hickory-proto still decodes
//! every message, this module only locates fields.

/// Length of the fixed header.
pub(crate) const HEADER_LEN: usize = 12;
/// RR type of the EDNS(0) pseudo-record, whose TTL field is not a TTL.
pub(crate) const TYPE_OPT: u16 = 41;
/// RCODE values used for header-only replies.
pub(crate) const RCODE_FORMERR: u8 = 1;
pub(crate) const RCODE_NOTIMP: u8 = 4;

/// Why a message could not be walked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    #[error("message ends early at offset {0}")]
    Short(usize),
    #[error("invalid label type at offset {0}")]
    BadLabel(usize),
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, WireError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(WireError::Short(at)),
    }
}

/// The message id; `b` must hold a header.
pub(crate) fn id(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Overwrites the message id; `b` must hold a header.
pub(crate) fn set_id(b: &mut [u8], id: u16) {
    b[..2].copy_from_slice(&id.to_be_bytes());
}

/// QR bit: the message is a response.
pub(crate) fn is_response(b: &[u8]) -> bool {
    b[2] & 0x80 != 0
}

/// The 4-bit OPCODE.
pub(crate) fn opcode(b: &[u8]) -> u8 {
    (b[2] >> 3) & 0x0f
}

/// QDCOUNT.
pub(crate) fn qdcount(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[4], b[5]])
}

/// The TC bit.
pub(crate) fn is_truncated(b: &[u8]) -> bool {
    b[2] & 0x02 != 0
}

/// The header's 4-bit RCODE (an OPT record may extend it).
pub(crate) fn rcode_low(b: &[u8]) -> u8 {
    b[3] & 0x0f
}

/// Whether `msg` asks `sent`'s question, `sent` being a message the proxy
/// wrote (one question, its name uncompressed): one question, the same
/// labels up to ASCII case (RFC 4343), type and class. Ids and flags are
/// not compared; nothing is decoded, and a compressed name never matches.
/// `msg` may end right after its question (an ICMP error's quote).
pub(crate) fn same_question(msg: &[u8], sent: &[u8]) -> bool {
    if msg.len() < HEADER_LEN || sent.len() < HEADER_LEN {
        return false;
    }
    if qdcount(msg) != 1 || qdcount(sent) != 1 {
        return false;
    }
    let mut at = HEADER_LEN;
    // A name is at most 255 bytes, so at most 128 labels: bounded loop.
    for _ in 0..128 {
        let Some(&len) = sent.get(at) else {
            return false;
        };
        if len & 0xc0 != 0 || msg.get(at) != Some(&len) {
            return false;
        }
        // The root label: type and class follow.
        let end = at + 1 + if len == 0 { 4 } else { len as usize };
        match (msg.get(at + 1..end), sent.get(at + 1..end)) {
            (Some(a), Some(b)) if len == 0 => return a == b,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => at = end,
            _ => return false,
        }
    }
    false
}

fn set_count(b: &mut [u8], index: usize, n: u16) {
    let at = 4 + 2 * index;
    b[at..at + 2].copy_from_slice(&n.to_be_bytes());
}

/// Sets the TC bit.
pub(crate) fn set_truncated(b: &mut [u8]) {
    b[2] |= 0x02;
}

/// A header-only reply to `query` (which must hold a header): same id,
/// opcode and RD, QR=1, RA=1, the given rcode, all counts zero. Used when
/// the question cannot be echoed (undecodable, unsupported opcode).
pub(crate) fn header_reply(query: &[u8], rcode: u8) -> Vec<u8> {
    let mut r = vec![0u8; HEADER_LEN];
    r[..2].copy_from_slice(&query[..2]);
    r[2] = 0x80 | (query[2] & 0x78) | (query[2] & 0x01);
    r[3] = 0x80 | (rcode & 0x0f);
    r
}

/// The offset just past the (possibly compressed) name starting at `at`.
pub(crate) fn skip_name(b: &[u8], mut at: usize) -> Result<usize, WireError> {
    // A name is at most 255 bytes, so at most 128 labels: bounded loop.
    for _ in 0..128 {
        let len = *b.get(at).ok_or(WireError::Short(at))?;
        match len & 0xc0 {
            0x00 if len == 0 => return Ok(at + 1),
            0x00 => at += 1 + len as usize,
            // A pointer ends the name in this place.
            0xc0 => {
                return if at + 2 <= b.len() {
                    Ok(at + 2)
                } else {
                    Err(WireError::Short(at))
                }
            }
            _ => return Err(WireError::BadLabel(at)),
        }
    }
    Err(WireError::BadLabel(at))
}

/// The name at `at` is written out in full: labels up to the root, no
/// compression pointer.
pub(crate) fn is_plain_name(b: &[u8], mut at: usize) -> bool {
    for _ in 0..128 {
        match b.get(at) {
            Some(0) => return true,
            Some(&len) if len & 0xc0 == 0 => at += 1 + len as usize,
            _ => return false,
        }
    }
    false
}

/// Which section a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Answer,
    Authority,
    Additional,
}

/// Where one resource record sits in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub section: Section,
    pub start: usize,
    pub end: usize,
    pub rtype: u16,
    /// The CLASS field (for OPT, the sender's UDP payload size).
    pub class: u16,
    /// Offset of the 4-byte TTL field.
    pub ttl_at: usize,
    /// Offset of the RDATA, which runs to `end`.
    pub rdata: usize,
}

/// Walks the records of a message after its question section. Not an
/// `Iterator`: the buffer is passed to each step so the caller may patch it
/// between steps.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    at: usize,
    /// Records left per section (answer, authority, additional).
    left: [u16; 3],
}

impl Records {
    /// Starts after the question section; also returns where it ends.
    pub(crate) fn new(buf: &[u8]) -> Result<(Records, usize), WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Short(buf.len()));
        }
        let mut at = HEADER_LEN;
        for _ in 0..qdcount(buf) {
            at = skip_name(buf, at)? + 4;
        }
        if at > buf.len() {
            return Err(WireError::Short(buf.len()));
        }
        let left = [u16_at(buf, 6)?, u16_at(buf, 8)?, u16_at(buf, 10)?];
        Ok((Records { at, left }, at))
    }

    /// The next record of `buf` (the buffer given to [`Records::new`]).
    pub(crate) fn next(&mut self, buf: &[u8]) -> Option<Result<Span, WireError>> {
        let index = self.left.iter().position(|&n| n > 0)?;
        self.left[index] -= 1;
        let section = [Section::Answer, Section::Authority, Section::Additional][index];
        let start = self.at;
        let span = skip_name(buf, start).and_then(|name_end| {
            let rtype = u16_at(buf, name_end)?;
            let class = u16_at(buf, name_end + 2)?;
            let rdlen = u16_at(buf, name_end + 8)? as usize;
            let end = name_end + 10 + rdlen;
            if end > buf.len() {
                return Err(WireError::Short(buf.len()));
            }
            Ok(Span {
                section,
                start,
                end,
                rtype,
                class,
                ttl_at: name_end + 4,
                rdata: name_end + 10,
            })
        });
        match &span {
            Ok(s) => self.at = s.end,
            // Stop after the first error.
            Err(_) => self.left = [0; 3],
        }
        Some(span)
    }
}

/// Replaces the count of `section` records in the header.
pub(crate) fn set_section_count(b: &mut [u8], section: Section, n: u16) {
    let index = match section {
        Section::Answer => 1,
        Section::Authority => 2,
        Section::Additional => 3,
    };
    set_count(b, index, n);
}

/// The additional section's record count.
pub(crate) fn arcount(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[10], b[11]])
}

/// Reads the TTL at `at` (a [`Span::ttl_at`]).
pub(crate) fn ttl(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes the TTL at `at` (a [`Span::ttl_at`]).
pub(crate) fn set_ttl(b: &mut [u8], at: usize, ttl: u32) {
    b[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_name_handles_labels_pointers_and_garbage() {
        let b = [3, b'w', b'w', b'w', 0, 0xc0, 0x00, 0x40, 1];
        assert_eq!(skip_name(&b, 0), Ok(5));
        assert_eq!(skip_name(&b, 5), Ok(7));
        assert_eq!(skip_name(&b, 7), Err(WireError::BadLabel(7)));
        assert_eq!(skip_name(&b[..3], 0), Err(WireError::Short(4)));
        assert_eq!(skip_name(&[0xc0], 0), Err(WireError::Short(0)));
    }

    /// A message with id 0, the given flags byte, and one question.
    fn with_question(flags: u8, name: &[u8], qtype: u8) -> Vec<u8> {
        let mut b = vec![0, 0, flags, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(name);
        b.extend_from_slice(&[0, qtype, 0, 1]);
        b
    }

    #[test]
    fn same_question_ignores_case_only() {
        let sent = with_question(0x01, b"\x03www\x07Example\x00", 1);
        let same = with_question(0x81, b"\x03WwW\x07example\x00", 1);
        assert!(same_question(&same, &sent));
        // Cut after the question (as an ICMP error may quote it): still it.
        assert!(same_question(&sent[..sent.len()], &sent));
        assert!(!same_question(&sent[..sent.len() - 1], &sent));
        // Another name, another type, a longer name, a compressed one.
        for other in [
            with_question(0x81, b"\x03www\x07exampla\x00", 1),
            with_question(0x81, b"\x03www\x07example\x00", 28),
            with_question(0x81, b"\x03www\x07example\x03com\x00", 1),
            with_question(0x81, b"\x03www\xc0\x0c", 1),
        ] {
            assert!(!same_question(&other, &sent), "{other:?}");
        }
        // Two questions.
        let mut two = same.clone();
        two[5] = 2;
        assert!(!same_question(&two, &sent));
        assert!(!same_question(&sent[..HEADER_LEN - 1], &sent));
    }

    #[test]
    fn header_reply_echoes_id_opcode_and_rd() {
        let q = [0xab, 0xcd, 0x29, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let r = header_reply(&q, RCODE_NOTIMP);
        assert_eq!(r, [0xab, 0xcd, 0xa9, 0x84, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn records_stop_at_truncated_record() {
        // Header: 0 questions, 1 answer, whose rdata runs past the end.
        let mut b = vec![0, 1, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 0];
        b.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2]);
        let (mut recs, qend) = Records::new(&b).unwrap();
        assert_eq!(qend, HEADER_LEN);
        assert!(recs.next(&b).unwrap().is_err());
        assert!(recs.next(&b).is_none());
    }
}
