//! Bytes on the wire for the frame builder ([`super::frame`]): Ethernet,
//! IPv6 extension headers, the Internet checksum.

use std::net::IpAddr;

pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_ARP: u16 = 0x0806;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const ETH_HLEN: usize = 14;

/// An IPv6 extension header, between the fixed header and the L4 header.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ext {
    HopByHop,
    DestOpts,
    /// Offset in 8-byte units, and the more-fragments flag.
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ext {
    /// Its value in a next-header field.
    pub(crate) fn code(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::DestOpts => 60,
            Ext::Fragment { .. } => 44,
        }
    }

    /// The header's 8 bytes (options: one PadN), `next` its next header.
    pub(crate) fn bytes(self, next: u8) -> [u8; 8] {
        match self {
            Ext::HopByHop | Ext::DestOpts => [next, 0, 1, 4, 0, 0, 0, 0],
            Ext::Fragment { offset, more } => {
                let [a, b] = (offset << 3 | u16::from(more)).to_be_bytes();
                [next, 0, a, b, 0, 0, 0x12, 0x34]
            }
        }
    }
}

/// An Ethernet frame of `ethertype` around `payload`.
pub(crate) fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// The pseudo-header of `proto` over `len` bytes, for L4 checksums.
pub(crate) fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend([0, proto]);
            p.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend((len as u32).to_be_bytes());
            p.extend([0, 0, 0, proto]);
        }
        _ => unreachable!("one family"),
    }
    p
}

/// The Internet checksum (RFC 1071) of `b`.
pub(crate) fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
