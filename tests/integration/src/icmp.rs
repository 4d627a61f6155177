//! ICMP and ICMPv6 errors crafted byte by byte, sent from a namespace
//! through a raw socket (the whole IP packet as given), and a raw-socket
//! listener that sees every ICMP message reaching a namespace's own
//! addresses before its kernel acts on them.
//!
//! Crafted packets carry a marker (any bytes, e.g. `<big-out>`) in the
//! payload of the datagram they quote, so a listener can tell them apart
//! from the kernel's own ICMP traffic (echo, neighbour discovery) and from
//! each other.

use std::io;
use std::mem::{size_of, size_of_val, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// ICMP destination unreachable.
pub const V4_DEST_UNREACH: u8 = 3;
/// ICMP destination unreachable code: port unreachable.
pub const V4_PORT_UNREACH: u8 = 3;
/// ICMP destination unreachable code: fragmentation needed and DF set.
pub const V4_FRAG_NEEDED: u8 = 4;
/// ICMP time exceeded.
pub const V4_TIME_EXCEEDED: u8 = 11;
/// ICMPv6 destination unreachable.
pub const V6_DEST_UNREACH: u8 = 1;
/// ICMPv6 destination unreachable code: port unreachable.
pub const V6_PORT_UNREACH: u8 = 4;
/// ICMPv6 packet too big.
pub const V6_PACKET_TOO_BIG: u8 = 2;
/// ICMPv6 time exceeded.
pub const V6_TIME_EXCEEDED: u8 = 3;

/// Bytes an ICMP error quoting a UDP datagram adds to the datagram's
/// payload: outer IP and ICMP headers, quoted IP and UDP headers.
pub fn error_overhead(v6: bool) -> usize {
    if v6 {
        40 + 8 + 40 + 8
    } else {
        20 + 8 + 20 + 8
    }
}

/// `marker` followed by zeros up to `len` bytes (`marker` alone if longer).
pub fn padded(marker: &[u8], len: usize) -> Vec<u8> {
    let mut p = marker.to_vec();
    p.resize(len.max(marker.len()), 0);
    p
}

/// A UDP datagram from `src` to `dst` as a whole IP packet (headers and
/// checksums filled, DF set on IPv4): what an ICMP error about it quotes.
/// Panics when the families differ.
pub fn udp_datagram(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut udp = Vec::with_capacity(len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let sum = checksum(&[
        &pseudo_header(src.ip(), dst.ip(), libc::IPPROTO_UDP as u8, len),
        &udp,
    ]);
    // 0 means "no checksum" in UDP; its ones' complement twin stands for it.
    let sum = if sum == 0 { 0xffff } else { sum };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    ip_packet(src.ip(), dst.ip(), libc::IPPROTO_UDP as u8, true, &udp)
}

/// An ICMP (IPv4) or ICMPv6 error, built into a whole IP packet by
/// [`IcmpError::packet`].
#[derive(Debug, Clone)]
pub struct IcmpError {
    /// Who sends it (a router or the host that refused).
    pub src: IpAddr,
    /// Who it is addressed to.
    pub dst: IpAddr,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
    /// The four bytes after the checksum: 0, the next-hop MTU of an IPv4
    /// "fragmentation needed" (low 16 bits), the MTU of an ICMPv6 "packet
    /// too big".
    pub info: u32,
    /// The packet it is about (from [`udp_datagram`]), possibly cut short.
    pub quote: Vec<u8>,
}

impl IcmpError {
    /// The error as an IP packet, checksums filled. Panics when `src` and
    /// `dst` are of different families.
    pub fn packet(&self) -> Vec<u8> {
        let v6 = self.src.is_ipv6();
        let proto = if v6 {
            libc::IPPROTO_ICMPV6
        } else {
            libc::IPPROTO_ICMP
        } as u8;
        let mut icmp = vec![self.icmp_type, self.code, 0, 0];
        icmp.extend_from_slice(&self.info.to_be_bytes());
        icmp.extend_from_slice(&self.quote);
        // ICMPv6 sums a pseudo-header too; ICMP only the message.
        let pseudo = if v6 {
            pseudo_header(self.src, self.dst, proto, icmp.len())
        } else {
            Vec::new()
        };
        let sum = checksum(&[&pseudo, &icmp]);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        ip_packet(self.src, self.dst, proto, false, &icmp)
    }
}

/// `payload` behind an IPv4 or IPv6 header (TTL / hop limit 64).
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, dont_fragment: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + payload.len()) as u16;
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            p.extend_from_slice(&0x4e57u16.to_be_bytes()); // id: nonzero, so the kernel keeps it
            p.extend_from_slice(&[if dont_fragment { 0x40 } else { 0 }, 0]);
            p.extend_from_slice(&[64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            let sum = checksum(&[&p]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        _ => panic!("an IP packet from {src} to {dst}: families differ"),
    }
    p.extend_from_slice(payload);
    p
}

/// The pseudo-header UDP and ICMPv6 checksums cover.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(&[0, proto]);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(&(len as u32).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("a pseudo-header from {src} to {dst}: families differ"),
    }
    h
}

/// The Internet checksum (RFC 1071) of `parts` laid end to end; every part
/// but the last has an even length here.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).copied().map_or(0, u32::from);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Raw sockets in one namespace that send whole IP packets as given
/// (`IPPROTO_RAW` implies `IP_HDRINCL`), so tests can send what no socket
/// API would: errors about other hosts' packets, from any source.
#[derive(Debug)]
pub struct RawSender {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl RawSender {
    /// The sockets, created in `ns`; panics when that fails (needs root).
    pub fn new(ns: &Netns) -> RawSender {
        ns.run(|| RawSender {
            v4: raw_socket(libc::AF_INET, libc::IPPROTO_RAW).expect("raw IPv4 socket"),
            v6: raw_socket(libc::AF_INET6, libc::IPPROTO_RAW).expect("raw IPv6 socket"),
        })
    }

    /// Sends `packet` (an IPv4 or IPv6 packet) to its destination address.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        let rc = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let dst: [u8; 4] = packet[16..20].try_into().expect("4 bytes");
                // SAFETY: zeroed is a valid sockaddr_in; every field is an integer.
                let mut sa: libc::sockaddr_in = unsafe { zeroed() };
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(dst);
                // SAFETY: a valid fd, a buffer of the given length, and a
                // sockaddr_in of the given size.
                unsafe {
                    libc::sendto(
                        self.v4.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&sa as *const libc::sockaddr_in).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
            }
            Some(6) if packet.len() >= 40 => {
                let dst: [u8; 16] = packet[24..40].try_into().expect("16 bytes");
                // SAFETY: zeroed is a valid sockaddr_in6; every field is an integer.
                let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = dst;
                // SAFETY: as above, with a sockaddr_in6.
                unsafe {
                    libc::sendto(
                        self.v6.as_raw_fd(),
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an IPv4 or IPv6 packet",
                ))
            }
        };
        match rc {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != packet.len() => Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                packet.len()
            ))),
            _ => Ok(()),
        }
    }
}

fn raw_socket(family: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An ICMP or ICMPv6 message a [`IcmpListener`] saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The address it was sent to.
    pub dst: IpAddr,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub code: u8,
    /// The ICMP message, from its type byte on.
    pub message: Vec<u8>,
}

impl Seen {
    /// Whether the message contains `marker`.
    pub fn carries(&self, marker: &[u8]) -> bool {
        !marker.is_empty() && self.message.windows(marker.len()).any(|w| w == marker)
    }
}

/// Every ICMP and ICMPv6 message that reaches the addresses of a namespace,
/// as raw sockets there see them: before the kernel acts on them, so also
/// errors no socket of the namespace would accept. Stops when dropped.
#[derive(Debug)]
pub struct IcmpListener {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl IcmpListener {
    /// Opens the raw sockets in `ns` (they see what arrives from now on)
    /// and reads them on a thread of their own.
    pub fn start(ns: &Netns) -> IcmpListener {
        let (v4, v6) = ns.run(|| {
            let v4 = raw_socket(libc::AF_INET, libc::IPPROTO_ICMP).expect("raw ICMP socket");
            let v6 = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6).expect("raw ICMPv6 socket");
            // The IPv6 socket gets no IP header: the destination comes as
            // ancillary data.
            crate::sockopt::set_int(&v6, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
                .expect("IPV6_RECVPKTINFO");
            (v4, v6)
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("icmp-listener-{}", ns.name()))
                .spawn(move || read_loop(&v4, &v6, &seen, &stop))
                .expect("spawn ICMP listener")
        };
        IcmpListener {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The messages seen so far that carry `marker`.
    pub fn carrying(&self, marker: &[u8]) -> Vec<Seen> {
        let seen = self.seen.lock().expect("listener lock");
        seen.iter().filter(|s| s.carries(marker)).cloned().collect()
    }

    /// Waits up to `limit` for a message carrying `marker`.
    pub fn wait_for(&self, marker: &[u8], limit: Duration) -> Option<Seen> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.carrying(marker).into_iter().next() {
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for IcmpListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(v4: &OwnedFd, v6: &OwnedFd, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    let mut fds = [v4.as_raw_fd(), v6.as_raw_fd()].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: an array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            while let Some(s) = recv_v4(v4) {
                seen.lock().expect("listener lock").push(s);
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            while let Some(s) = recv_v6(v6) {
                seen.lock().expect("listener lock").push(s);
            }
        }
    }
}

/// One message from the raw ICMP socket (which gets the IP header too);
/// `None` when none is waiting.
fn recv_v4(fd: &OwnedFd) -> Option<Seen> {
    let mut buf = [0u8; 2048];
    // SAFETY: a valid fd and a buffer of the given length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let n = usize::try_from(n).ok()?;
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    if n < ihl + 4 {
        return None;
    }
    let dst: [u8; 4] = buf[16..20].try_into().ok()?;
    Some(Seen {
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        icmp_type: buf[ihl],
        code: buf[ihl + 1],
        message: buf[ihl..n].to_vec(),
    })
}

/// One message from the raw ICMPv6 socket, its destination from
/// `IPV6_PKTINFO`; `None` when none is waiting.
fn recv_v6(fd: &OwnedFd) -> Option<Seen> {
    let mut buf = [0u8; 2048];
    // u64 elements: cmsg headers need their alignment.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed is a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: msg points at live buffers of the lengths it states.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    let n = usize::try_from(n).ok()?;
    if n < 4 {
        return None;
    }
    let mut dst = Ipv6Addr::UNSPECIFIED;
    // SAFETY: the cmsg walk stays within msg_control as recvmsg filled it;
    // in6_pktinfo is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some(Seen {
        dst: IpAddr::V6(dst),
        icmp_type: buf[0],
        code: buf[1],
        message: buf[..n].to_vec(),
    })
}

/// The path MTU the kernel of `ns` holds for `dst` (`mtu` in `ip route get`:
/// set once a "fragmentation needed" or "packet too big" was accepted);
/// `None` without one.
pub fn path_mtu(ns: &Netns, dst: IpAddr) -> Option<u32> {
    let out = ns
        .exec("ip", &["route", "get", &dst.to_string()])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        out.status.success(),
        "ip route get {dst} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu" {
            return words.next()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        // A correct checksum makes the whole sum come out as 0.
        let dgram = udp_datagram(
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:2000".parse().unwrap(),
            b"abc",
        );
        assert_eq!(dgram.len(), 20 + 8 + 3);
        assert_eq!(checksum(&[&dgram[..20]]), 0, "IPv4 header");
        let err = IcmpError {
            src: "10.0.0.2".parse().unwrap(),
            dst: "10.0.0.1".parse().unwrap(),
            icmp_type: V4_DEST_UNREACH,
            code: V4_FRAG_NEEDED,
            info: 1400,
            quote: dgram.clone(),
        }
        .packet();
        assert_eq!(err.len(), 20 + 8 + dgram.len());
        assert_eq!(checksum(&[&err[20..]]), 0, "ICMP");
        assert_eq!(&err[26..28], &1400u16.to_be_bytes(), "next-hop MTU");

        let src: IpAddr = "fd00::1".parse().unwrap();
        let dst: IpAddr = "fd00::2".parse().unwrap();
        let err6 = IcmpError {
            src,
            dst,
            icmp_type: V6_PACKET_TOO_BIG,
            code: 0,
            info: 1280,
            quote: udp_datagram(SocketAddr::new(dst, 1), SocketAddr::new(src, 2), b"x"),
        }
        .packet();
        assert_eq!(err6.len(), error_overhead(true) + 1);
        let pseudo = pseudo_header(src, dst, libc::IPPROTO_ICMPV6 as u8, err6.len() - 40);
        assert_eq!(checksum(&[&pseudo, &err6[40..]]), 0, "ICMPv6");
    }

    #[test]
    fn seen_marker() {
        let s = Seen {
            dst: IpAddr::V4(Ipv4Addr::LOCALHOST),
            icmp_type: 3,
            code: 3,
            message: padded(b"..<m-1>..", 20),
        };
        assert!(s.carries(b"<m-1>"));
        assert!(!s.carries(b"<m-10>"));
    }
}
