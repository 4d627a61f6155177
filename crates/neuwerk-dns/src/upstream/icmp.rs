//! ICMP errors, each with the datagram that caused it.
//!
//! A connected UDP socket reports an ICMP error (port or host unreachable)
//! as one pending socket error that names no datagram: the pool could only
//! fail every query waiting on the socket, so one stray error, or one an
//! attacker who found the port sent, failed hundreds of queries. With
//! `IP_RECVERR` (`IPV6_RECVERR`) the kernel also queues each error with the
//! start of the datagram it quotes, so the pool fails the one query whose
//! id and question the quote carries, and nothing when it carries none.
//!
//! Neither std, tokio nor socket2 reads the error queue; this is the one
//! `recvmsg(MSG_ERRQUEUE)` loop over buffers on the stack.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};

/// Bytes of a quoted datagram read at most: the kernel quotes at most
/// 576 bytes of IP packet (RFC 1812), and a header and question are far
/// fewer.
const QUOTE: usize = 576;
/// Errors read per call at most: the queue is bounded by the receive
/// buffer, this bounds one call's work under a flood of them.
const MAX_PER_DRAIN: usize = 256;

/// Turns on per-datagram error reports on `socket` (IPv4 or IPv6).
pub(crate) fn enable(socket: &UdpSocket, v6: bool) -> io::Result<()> {
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::SOL_IP, libc::IP_RECVERR)
    };
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor and an int option of the size given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads every error queued on `fd`, without blocking, and gives `each`
/// the quoted start of the datagram that caused it and what went wrong.
/// Returns how many were read.
pub(crate) fn drain(fd: RawFd, mut each: impl FnMut(&[u8], io::ErrorKind)) -> usize {
    let mut quote = [0u8; QUOTE];
    // Room for one sock_extended_err and the offender's address after it.
    let mut control = [0u64; 16];
    let mut read = 0;
    while read < MAX_PER_DRAIN {
        let mut iov = libc::iovec {
            iov_base: quote.as_mut_ptr().cast(),
            iov_len: quote.len(),
        };
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: the header points at live buffers with their true sizes.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            break; // EAGAIN: the queue is empty.
        }
        read += 1;
        let kind = errno_of(&msg).map_or(io::ErrorKind::Other, |e| {
            io::Error::from_raw_os_error(e).kind()
        });
        each(&quote[..n as usize], kind);
    }
    read
}

/// The errno of the extended error among `msg`'s control messages.
fn errno_of(msg: &libc::msghdr) -> Option<i32> {
    // SAFETY: the kernel wrote `msg_controllen` bytes of control messages
    // into the buffer the header points at; the CMSG macros stay in it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let ours = (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
            if ours {
                let mut err = MaybeUninit::<libc::sock_extended_err>::uninit();
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(cmsg),
                    err.as_mut_ptr().cast::<u8>(),
                    size_of::<libc::sock_extended_err>(),
                );
                return Some(err.assume_init().ee_errno as i32);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}
