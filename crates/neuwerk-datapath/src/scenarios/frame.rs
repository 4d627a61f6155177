//! A small frame builder: Ethernet, IPv4 or IPv6 (IPv4 fragments, IPv6
//! extension headers including the fragment header), then TCP, UDP, ICMP
//! or ICMPv6 with a payload of a given size, or an ICMP error quoting
//! another packet. Lengths and checksums are right: the programs check no
//! checksum, but a wrong length would test the parser, not the policy.

use std::net::IpAddr;

use super::ip;
use super::wire::{checksum, pseudo_header};
pub(crate) use super::wire::{ethernet, Ext, ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6};

pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
pub(crate) const ICMP: u8 = 1;
pub(crate) const ICMPV6: u8 = 58;

pub(crate) const SYN: u8 = 0x02;
pub(crate) const ACK: u8 = 0x10;

/// Bytes of an IPv4 / IPv6 packet a router's error may carry in all
/// (RFC 1812 4.3.2.3, RFC 4443 2.4(c)).
pub(crate) const ERROR_MAX_V4: usize = 576;
pub(crate) const ERROR_MAX_V6: usize = 1280;

#[derive(Debug, Clone)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 by the family; `rest` follows the checksum.
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
    },
}

/// An IP packet to build: a constructor, then options, then [`Packet::ip`]
/// or [`Packet::frame`].
#[derive(Debug, Clone)]
pub(crate) struct Packet {
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    payload: Vec<u8>,
    exts: Vec<Ext>,
    /// IPv4 fragment offset (8-byte units) and more-fragments flag.
    frag4: (u16, bool),
}

impl Packet {
    fn new(src: &str, dst: &str, l4: L4) -> Packet {
        let (src, dst) = (ip(src), ip(dst));
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "one family: {src} -> {dst}");
        Packet {
            src,
            dst,
            l4,
            payload: Vec::new(),
            exts: Vec::new(),
            frag4: (0, false),
        }
    }

    /// A TCP segment with `flags` (SYN, ACK, ...).
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Packet {
        Packet::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    /// A UDP datagram.
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Packet {
        Packet::new(src, dst, L4::Udp { sport, dport })
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) message of `kind` and `code`.
    pub fn icmp(src: &str, dst: &str, kind: u8, code: u8) -> Packet {
        Packet::new(
            src,
            dst,
            L4::Icmp {
                kind,
                code,
                rest: [0; 4],
            },
        )
    }

    /// An echo request with `id` (sequence 1).
    pub fn echo(src: &str, dst: &str, id: u16) -> Packet {
        let kind = if ip(src).is_ipv4() { 8 } else { 128 };
        Packet::icmp(src, dst, kind, 0).rest(echo_rest(id))
    }

    /// An echo reply with `id` (sequence 1).
    pub fn echo_reply(src: &str, dst: &str, id: u16) -> Packet {
        let kind = if ip(src).is_ipv4() { 0 } else { 129 };
        Packet::icmp(src, dst, kind, 0).rest(echo_rest(id))
    }

    /// An ICMP error of `kind` and `code` carrying `quoted` (see
    /// [`Packet::router_quote`]).
    pub fn error(src: &str, dst: &str, kind: u8, code: u8, quoted: &[u8]) -> Packet {
        let mut p = Packet::icmp(src, dst, kind, code);
        p.payload = quoted.to_vec();
        p
    }

    /// The 4 ICMP bytes after the checksum (echo id and sequence, next-hop
    /// MTU, ...).
    pub fn rest(mut self, rest: [u8; 4]) -> Packet {
        if let L4::Icmp { rest: r, .. } = &mut self.l4 {
            *r = rest;
        }
        self
    }

    /// A payload of `n` bytes after the L4 header.
    pub fn payload_len(mut self, n: usize) -> Packet {
        self.payload = (0..n).map(|i| i as u8).collect();
        self
    }

    /// An IPv6 extension header, after those added before.
    pub fn ext(mut self, ext: Ext) -> Packet {
        assert!(self.src.is_ipv6(), "extension headers are IPv6");
        self.exts.push(ext);
        self
    }

    /// A fragment at `offset` (8-byte units): the IPv4 header's fields, or
    /// an IPv6 fragment header. The L4 header stays in the bytes: a
    /// non-first fragment must be dropped even when its data looks like one.
    pub fn fragment(self, offset: u16, more: bool) -> Packet {
        if self.src.is_ipv6() {
            return self.ext(Ext::Fragment { offset, more });
        }
        Packet {
            frag4: (offset, more),
            ..self
        }
    }

    /// What a router's error quotes of this packet: as much as fits in an
    /// error of the family's minimum size.
    pub fn router_quote(&self) -> Vec<u8> {
        let room = if self.src.is_ipv4() {
            ERROR_MAX_V4 - 28
        } else {
            ERROR_MAX_V6 - 48
        };
        let mut b = self.ip();
        b.truncate(room);
        b
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Icmp { .. } if self.src.is_ipv4() => ICMP,
            L4::Icmp { .. } => ICMPV6,
        }
    }

    /// The L4 header and payload, checksummed.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(20 + self.payload.len());
        let csum_at = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                for w in [sport, dport, 0, 1, 0, 0] {
                    b.extend(w.to_be_bytes()); // ports, seq 1, ack 0
                }
                b.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
                16
            }
            L4::Udp { sport, dport } => {
                let len = (8 + self.payload.len()) as u16;
                for w in [sport, dport, len, 0] {
                    b.extend(w.to_be_bytes());
                }
                6
            }
            L4::Icmp { kind, code, rest } => {
                b.extend([kind, code, 0, 0]);
                b.extend(rest);
                2
            }
        };
        b.extend(&self.payload);
        let proto = self.proto();
        let mut sum_over = Vec::new();
        if proto != ICMP {
            sum_over.extend(pseudo_header(self.src, self.dst, proto, b.len()));
        }
        sum_over.extend(&b);
        let mut sum = checksum(&sum_over);
        if proto == UDP && sum == 0 {
            sum = 0xffff; // 0 would mean no checksum
        }
        b[csum_at..csum_at + 2].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The IP packet.
    pub fn ip(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = (20 + l4.len()) as u16;
                let (offset, more) = self.frag4;
                let frag = offset & 0x1fff | if more { 0x2000 } else { 0 };
                let mut h = vec![0x45, 0];
                h.extend(total.to_be_bytes());
                h.extend([0x12, 0x34]);
                h.extend(frag.to_be_bytes());
                h.extend([64, self.proto(), 0, 0]);
                h.extend(s.octets());
                h.extend(d.octets());
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                h.extend(l4);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let codes: Vec<u8> = self.exts.iter().map(|e| e.code()).collect();
                let first = codes.first().copied().unwrap_or(self.proto());
                let len = (8 * self.exts.len() + l4.len()) as u16;
                let mut h = vec![0x60, 0, 0, 0];
                h.extend(len.to_be_bytes());
                h.extend([first, 64]);
                h.extend(s.octets());
                h.extend(d.octets());
                for (i, e) in self.exts.iter().enumerate() {
                    h.extend(e.bytes(codes.get(i + 1).copied().unwrap_or(self.proto())));
                }
                h.extend(l4);
                h
            }
            _ => unreachable!("one family, checked in Packet::new"),
        }
    }

    /// The packet in an Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let ethertype = if self.src.is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        };
        ethernet(ethertype, &self.ip())
    }
}

fn echo_rest(id: u16) -> [u8; 4] {
    let [a, b] = id.to_be_bytes();
    [a, b, 0, 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_checksums_hold() {
        let p = Packet::udp("10.0.0.1", 1, "10.0.0.2", 2).payload_len(5);
        let b = p.ip();
        assert_eq!(b.len(), 20 + 8 + 5);
        assert_eq!(u16::from_be_bytes([b[2], b[3]]), 33);
        assert_eq!(checksum(&b[..20]), 0, "IPv4 header checksum");
        let mut l4 = pseudo_header(ip("10.0.0.1"), ip("10.0.0.2"), UDP, 13);
        l4.extend(&b[20..]);
        assert_eq!(checksum(&l4), 0, "UDP checksum");
        let q = Packet::tcp("fd00::1", 1, "fd00::2", 2, SYN)
            .ext(Ext::HopByHop)
            .fragment(0, true);
        let b = q.ip();
        assert_eq!(b.len(), 40 + 16 + 20);
        assert_eq!((b[6], b[40], b[48]), (0, 44, TCP));
        let big = Packet::udp("10.0.0.1", 1, "10.0.0.2", 2).payload_len(1400);
        assert_eq!(big.router_quote().len(), ERROR_MAX_V4 - 28);
    }
}
