//! Addresses and prefixes in the ABI's form: 16 bytes, IPv4 as IPv4-mapped
//! IPv6, so that one map and one lookup serve both families.

use std::net::IpAddr;

use ipnet::IpNet;
use neuwerk_abi::Addr;
use neuwerk_core::policy::model::canonical;

/// Prefix bits an IPv4 prefix gains when mapped into IPv6.
const V4_MAPPED_BITS: u32 = 96;

/// The ABI bytes of an address.
pub fn addr_bytes(ip: IpAddr) -> Addr {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address back from its ABI bytes (IPv4-mapped becomes IPv4).
pub fn addr_from_bytes(b: Addr) -> IpAddr {
    canonical(IpAddr::from(b))
}

/// A prefix as (network bytes, prefix length in the 128-bit space).
pub fn prefix_bits(net: &IpNet) -> (Addr, u32) {
    let trunc = net.trunc();
    match trunc {
        IpNet::V4(v4) => (
            addr_bytes(IpAddr::V4(v4.network())),
            V4_MAPPED_BITS + u32::from(v4.prefix_len()),
        ),
        IpNet::V6(v6) => (v6.network().octets(), u32::from(v6.prefix_len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_is_mapped_and_round_trips() {
        let ip: IpAddr = "192.0.2.100".parse().unwrap();
        let b = addr_bytes(ip);
        assert_eq!(&b[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&b[12..], &[192, 0, 2, 100]);
        assert_eq!(addr_from_bytes(b), ip);
        let mapped: IpAddr = "::ffff:192.0.2.100".parse().unwrap();
        assert_eq!(addr_bytes(mapped), b);
    }

    #[test]
    fn prefixes_grow_by_96_bits_for_v4() {
        let (b, len) = prefix_bits(&"10.100.1.0/24".parse().unwrap());
        assert_eq!(len, 120);
        assert_eq!(&b[12..], &[10, 100, 1, 0]);
        let (b, len) = prefix_bits(&"fd00:100:1::/64".parse().unwrap());
        assert_eq!(len, 64);
        assert_eq!(b[0], 0xfd);
    }
}
