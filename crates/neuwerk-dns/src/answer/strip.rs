//! Leaving special-use addresses out of the answer a client gets: it
//! should not try an address whose traffic the node will drop.

use std::net::IpAddr;

use hickory_proto::op::Message;
use hickory_proto::rr::{DNSClass, Name, RData, Record};

use super::{AnswerError, Chain};

/// The answer `bytes` to `qname` without the A and AAAA records of the
/// question's CNAME chain whose address is in `drop`: the records that
/// would have been learned. Other records, in every section, stay.
///
/// Relaying works in place on the upstream's bytes, but a record cannot
/// be cut out in place (a later name may point into it), and answers with
/// special-use addresses are rare: this one is decoded and re-encoded.
pub(crate) fn strip(bytes: &[u8], qname: &Name, drop: &[IpAddr]) -> Result<Vec<u8>, AnswerError> {
    let mut msg = Message::from_vec(bytes)?;
    let cnames: Vec<(Name, Name)> = msg
        .answers
        .iter()
        .filter(|r| r.dns_class == DNSClass::IN)
        .filter_map(|r| match &r.data {
            RData::CNAME(target) => Some((r.name.clone(), target.0.clone())),
            _ => None,
        })
        .collect();
    let chain = Chain::follow(qname, &cnames);
    msg.answers.retain(|r| {
        !(is_chain_address(r, &chain) && address(r).is_some_and(|a| drop.contains(&a)))
    });
    Ok(msg.to_vec()?)
}

fn is_chain_address(r: &Record, chain: &Chain<'_>) -> bool {
    r.dns_class == DNSClass::IN && chain.contains(&r.name)
}

fn address(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
