//! Sets of IP prefixes as sorted, merged address ranges: membership is a
//! binary search that allocates nothing, however many CIDRs went in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// An inclusive range of addresses of one family, as integers.
type Range = (u128, u128);

/// A set of addresses built from CIDRs. IPv4 and IPv6 are kept apart;
/// IPv4-mapped IPv6 CIDRs and addresses are not converted (callers that
/// want them treated as IPv4 unmap them first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixSet {
    /// Sorted, disjoint, non-adjacent.
    v4: Vec<Range>,
    /// Sorted, disjoint, non-adjacent.
    v6: Vec<Range>,
}

impl PrefixSet {
    /// The set of every address in `nets`.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> PrefixSet {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((
                    u32::from(n.network()).into(),
                    u32::from(n.broadcast()).into(),
                )),
                IpNet::V6(n) => v6.push((n.network().into(), n.broadcast().into())),
            }
        }
        PrefixSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    /// The set of the given addresses.
    pub fn of_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> PrefixSet {
        PrefixSet::new(addrs.into_iter().map(IpNet::from))
    }

    /// Whether `addr` is in the set.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let (ranges, x) = match addr {
            IpAddr::V4(a) => (&self.v4, u128::from(u32::from(a))),
            IpAddr::V6(a) => (&self.v6, u128::from(a)),
        };
        // The last range starting at or below `x` is the only candidate.
        let after = ranges.partition_point(|&(lo, _)| lo <= x);
        after > 0 && ranges[after - 1].1 >= x
    }

    /// Whether no address is in the set.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether the set and `net` share an address.
    pub fn overlaps(&self, net: IpNet) -> bool {
        let other = PrefixSet::new([net]);
        let shared = |a: &[Range], b: &[Range]| {
            a.iter()
                .any(|&(lo, hi)| b.iter().any(|&(l, h)| lo <= h && l <= hi))
        };
        shared(&self.v4, &other.v4) || shared(&self.v6, &other.v6)
    }

    /// The addresses in either set.
    pub fn union(&self, other: &PrefixSet) -> PrefixSet {
        let join = |a: &[Range], b: &[Range]| merge(a.iter().chain(b).copied().collect());
        PrefixSet {
            v4: join(&self.v4, &other.v4),
            v6: join(&self.v6, &other.v6),
        }
    }

    /// The addresses in this set and not in `other`.
    pub fn difference(&self, other: &PrefixSet) -> PrefixSet {
        PrefixSet {
            v4: subtract(&self.v4, &other.v4),
            v6: subtract(&self.v6, &other.v6),
        }
    }

    /// The fewest CIDRs covering exactly the set, IPv4 first, each family
    /// in address order.
    pub fn cidrs(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(lo, hi) in &self.v4 {
            cover(lo, hi, 32, &mut out);
        }
        for &(lo, hi) in &self.v6 {
            cover(lo, hi, 128, &mut out);
        }
        out
    }
}

/// Sorts `ranges` and joins those that overlap or touch.
fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out.shrink_to_fit();
    out
}

/// `a` minus `b`, both sorted and disjoint.
fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        let mut start = lo;
        let mut done = false;
        for &(l, h) in b.iter().filter(|&&(l, h)| l <= hi && h >= lo) {
            if l > start {
                out.push((start, l - 1));
            }
            match h.checked_add(1) {
                Some(next) if next <= hi => start = next,
                _ => {
                    done = true;
                    break;
                }
            }
        }
        if !done {
            out.push((start, hi));
        }
    }
    out
}

/// Appends the fewest CIDRs covering `lo..=hi` in a family of `bits`.
fn cover(mut lo: u128, hi: u128, bits: u32, out: &mut Vec<IpNet>) {
    loop {
        let align = if lo == 0 { bits } else { lo.trailing_zeros() };
        // floor(log2(size)) of the rest of the range, without overflow.
        let span = hi - lo;
        let fits = match span.checked_add(1) {
            Some(size) => 127 - size.leading_zeros(),
            None => 128,
        };
        let k = align.min(fits).min(bits);
        out.push(net(lo, bits - k, bits));
        let last = if k == 128 {
            u128::MAX
        } else {
            lo + ((1u128 << k) - 1)
        };
        if last >= hi {
            return;
        }
        lo = last + 1;
    }
}

fn net(addr: u128, len: u32, bits: u32) -> IpNet {
    let len = len as u8;
    let ip = if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(addr as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    };
    // Cannot fail: `len` is at most the family's width.
    IpNet::new(ip, len).unwrap_or_else(|_| IpNet::from(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cidrs: &[&str]) -> PrefixSet {
        PrefixSet::new(cidrs.iter().map(|c| c.parse::<IpNet>().unwrap()))
    }

    fn texts(s: &PrefixSet) -> Vec<String> {
        s.cidrs().iter().map(ToString::to_string).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn membership_at_the_edges() {
        let s = set(&["10.0.0.0/8", "192.168.1.0/24", "fd00::/8"]);
        for yes in ["10.0.0.0", "10.255.255.255", "192.168.1.77", "fd12::1"] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in [
            "9.255.255.255",
            "11.0.0.0",
            "192.168.2.0",
            "fe00::",
            "::a00:1",
        ] {
            assert!(!s.contains(ip(no)), "{no}");
        }
        assert!(!PrefixSet::default().contains(ip("10.0.0.1")));
        assert!(set(&["0.0.0.0/0"]).contains(ip("255.255.255.255")));
        assert!(set(&["::/0"]).contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn overlapping_and_adjacent_prefixes_merge() {
        let s = set(&["10.0.1.0/24", "10.0.0.0/24", "10.0.0.128/25", "10.0.3.0/24"]);
        assert_eq!(texts(&s), ["10.0.0.0/23", "10.0.3.0/24"]);
        assert_eq!(s.v4.len(), 2);
    }

    #[test]
    fn many_prefixes_are_searched_not_scanned() {
        let nets: Vec<IpNet> = (0..4096u32)
            .map(|i| IpNet::new(IpAddr::V4(Ipv4Addr::from(i << 12)), 24).unwrap())
            .collect();
        let s = PrefixSet::new(nets);
        assert_eq!(s.v4.len(), 4096);
        assert!(s.contains(ip("0.1.0.5")));
        assert!(!s.contains(ip("0.1.1.5")));
    }

    #[test]
    fn difference_and_cover() {
        let private = set(&["10.0.0.0/8"]);
        let opened = set(&["10.20.0.0/16"]);
        let left = private.difference(&opened);
        assert!(!left.contains(ip("10.20.3.4")));
        assert!(left.contains(ip("10.21.0.0")));
        assert_eq!(
            texts(&left),
            [
                "10.0.0.0/12",
                "10.16.0.0/14",
                "10.21.0.0/16",
                "10.22.0.0/15",
                "10.24.0.0/13",
                "10.32.0.0/11",
                "10.64.0.0/10",
                "10.128.0.0/9"
            ]
        );
        assert!(set(&["10.0.0.0/8"])
            .difference(&set(&["0.0.0.0/0"]))
            .is_empty());
        let all6 = set(&["::/0"]).difference(&set(&["fc00::/7"]));
        assert!(all6.contains(ip("::")) && !all6.contains(ip("fd00::1")));
        assert_eq!(texts(&set(&["::/0"])), ["::/0"]);
        assert_eq!(texts(&set(&["0.0.0.0/0"])), ["0.0.0.0/0"]);
    }

    #[test]
    fn union_and_overlap() {
        let a = set(&["10.0.0.0/24"]);
        let b = set(&["10.0.1.0/24", "fc00::/7"]);
        assert_eq!(texts(&a.union(&b)), ["10.0.0.0/23", "fc00::/7"]);
        assert!(a.overlaps("10.0.0.128/25".parse().unwrap()));
        assert!(a.overlaps("0.0.0.0/0".parse().unwrap()));
        assert!(!a.overlaps("10.0.1.0/24".parse().unwrap()));
        assert!(!a.overlaps("::/0".parse().unwrap()));
    }
}
