//! A network's `allow_private` list: the private ranges and policy
//! networks its DNS answers may teach it. Each entry is checked once every
//! network is known, since it may open another network's CIDR.

use ipnet::IpNet;

use super::parse_cidr;
use crate::policy::model::{Location, Policy};
use crate::prefixes::PrefixSet;
use crate::special::{self, SpecialClass};
use crate::yaml::{Error, Node, Value};

/// One entry as written, with where it stands.
pub(super) type Entry = (IpNet, Location);

/// The entries of an `allow_private:` value.
pub(super) fn decode(node: &Node) -> Result<Vec<Entry>, Error> {
    let items = match &node.value {
        Value::Null => &[][..],
        Value::Scalar(s) => {
            return Err(Error::new(
                node.loc,
                format!("`allow_private` must be a list, e.g. [{s}]"),
            ))
        }
        _ => node.seq("a list of CIDRs")?,
    };
    if items.is_empty() {
        return Err(Error::new(
            node.loc,
            "`allow_private` is empty; omit it to learn no private address",
        ));
    }
    items
        .iter()
        .map(|item| Ok((item.parse_with("a CIDR", parse_cidr)?, item.loc)))
        .collect()
}

/// Refuses entries that can open nothing: inside a class never learned
/// (loopback, link-local, ...), or outside every private range and every
/// network of `policy` (public addresses need no opening).
pub(super) fn check(policy: &Policy, lists: &[Vec<Entry>]) -> Result<(), Error> {
    if lists.iter().all(Vec::is_empty) {
        return Ok(());
    }
    let openable = PrefixSet::new(
        special::private_ranges()
            .into_iter()
            .map(|(n, _)| n)
            .chain(policy.networks.iter().flat_map(|n| n.cidrs.iter().copied())),
    );
    for &(net, loc) in lists.iter().flatten() {
        if !openable.overlaps(net) {
            return Err(Error::new(loc, opens_nothing(net)));
        }
    }
    Ok(())
}

fn opens_nothing(net: IpNet) -> String {
    const OPENS: &str = "`allow_private` opens only private (10.0.0.0/8, 172.16.0.0/12, \
                         192.168.0.0/16), shared (100.64.0.0/10) and unique-local (fc00::/7) \
                         addresses and the policy's networks";
    match never_class_of(net) {
        Some(class) => format!(
            "{net} is {}, which DNS answers never grant; {OPENS}",
            describe(class)
        ),
        None => format!(
            "{net} holds no private address and no network of the policy, so it opens \
             nothing (public addresses are learned anyway); {OPENS}"
        ),
    }
}

/// The never-learned class holding all of `net`, if one does.
fn never_class_of(net: IpNet) -> Option<SpecialClass> {
    special::never_ranges()
        .into_iter()
        .find(|(range, _)| range.contains(&net))
        .map(|(_, class)| class)
}

fn describe(class: SpecialClass) -> &'static str {
    match class {
        SpecialClass::Loopback => "loopback",
        SpecialClass::Unspecified => "unspecified (this network)",
        SpecialClass::LinkLocal => "link-local (cloud metadata lives there)",
        SpecialClass::Multicast => "multicast",
        SpecialClass::Broadcast => "the broadcast address",
        SpecialClass::Reserved => "reserved (240.0.0.0/4)",
        SpecialClass::Ipv4Mapped => "IPv4-mapped or -compatible IPv6",
        _ => "special-use",
    }
}
