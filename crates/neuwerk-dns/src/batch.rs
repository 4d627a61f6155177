//! Datagrams in batches: one `recvmmsg` for everything a socket has
//! queued, up to [`BATCH`], instead of a `recvfrom` per datagram plus the
//! one that finds the queue empty; one `sendmmsg` for what a batch sends
//! on one socket.
//!
//! Neither tokio nor socket2 offers these; nix's borrow their buffers anew
//! on every call. These are the syscalls over buffers the caller owns,
//! with the headers built on the stack per call (no allocation).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{SockAddr, SockAddrStorage};
use tokio::io::Interest;

/// What a receive loop waits for: data, or an error the socket reports
/// (an ICMP unreachable on a connected socket), as tokio's own `recv`.
pub(crate) const READ: Interest = Interest::READABLE.add(Interest::ERROR);

/// Datagrams read per call at most.
pub(crate) const BATCH: usize = 32;

/// Buffers for up to [`BATCH`] datagrams of at most `size` bytes each.
pub(crate) struct RecvBatch {
    size: usize,
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    /// The datagram was longer than `size` and was cut.
    cut: [bool; BATCH],
    addrs: Box<[MaybeUninit<libc::sockaddr_storage>; BATCH]>,
    addr_lens: [libc::socklen_t; BATCH],
}

impl RecvBatch {
    /// Room for [`BATCH`] datagrams of `size` bytes (longer ones are cut:
    /// size it for the largest datagram worth reading whole).
    pub(crate) fn new(size: usize) -> RecvBatch {
        RecvBatch {
            size,
            bufs: vec![0u8; size * BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            cut: [false; BATCH],
            addrs: Box::new([MaybeUninit::uninit(); BATCH]),
            addr_lens: [0; BATCH],
        }
    }

    /// Reads what `fd` has queued, up to [`BATCH`] datagrams, without
    /// blocking; returns how many (at least one: an empty queue is
    /// `WouldBlock`).
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, chunk) in self.bufs.chunks_exact_mut(self.size).enumerate() {
            let iov = iovs[i].write(libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            });
            let h = &mut hdrs[i].msg_hdr;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            h.msg_name = self.addrs[i].as_mut_ptr().cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: every header points into buffers that live as long as
        // `self`, each with its true length; the kernel writes at most that.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs[..n].iter().enumerate() {
            self.lens[i] = (h.msg_len as usize).min(self.size);
            self.cut[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] was longer than the
    /// buffer and was cut.
    pub(crate) fn cut(&self, i: usize) -> bool {
        self.cut[i]
    }

    /// Datagram `i` of the last [`RecvBatch::recv`] and who sent it (`None`
    /// on a connected socket, which may report no address).
    pub(crate) fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let start = i * self.size;
        let data = &self.bufs[start..start + self.lens[i]];
        let len = self.addr_lens[i];
        let from = (len > 0).then(|| {
            let mut storage = SockAddrStorage::zeroed();
            // SAFETY: the kernel wrote `len` bytes of a socket address into
            // that storage (never more than it holds); the view is of the
            // same type, as socket2 documents.
            let addr = unsafe {
                *storage.view_as::<libc::sockaddr_storage>() = self.addrs[i].assume_init_read();
                SockAddr::new(storage, len)
            };
            addr.as_socket()
        });
        (data, from.flatten())
    }
}

/// Sends each datagram of `msgs` (bytes, and the address unless the socket
/// is connected) with as few `sendmmsg` calls as it takes, without
/// blocking; `failed` gets the index and error of each one not sent.
pub(crate) fn send_all(
    fd: RawFd,
    msgs: &[(&[u8], Option<&SockAddr>)],
    mut failed: impl FnMut(usize, io::Error),
) {
    let mut start = 0;
    while start < msgs.len() {
        let chunk = &msgs[start..msgs.len().min(start + BATCH)];
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, (data, to)) in chunk.iter().enumerate() {
            let iov = iovs[i].write(libc::iovec {
                iov_base: data.as_ptr().cast_mut().cast(),
                iov_len: data.len(),
            });
            let h = &mut hdrs[i].msg_hdr;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            if let Some(to) = to {
                h.msg_name = to.as_ptr().cast_mut().cast();
                h.msg_namelen = to.len();
            }
        }
        // SAFETY: every header points at live buffers with their true
        // lengths; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                chunk.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            // The first datagram of the chunk failed; go on after it.
            failed(start, io::Error::last_os_error());
            start += 1;
        } else {
            start += n as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn reads_every_queued_datagram_with_its_sender() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        a.send_to(b"one", to).unwrap();
        b.send_to(b"second", to).unwrap();
        a.send_to(&[7u8; 100], to).unwrap();
        // Loopback delivers synchronously, but be patient anyway.
        std::thread::sleep(std::time::Duration::from_millis(20));

        let mut batch = RecvBatch::new(64);
        let n = batch.recv(rx.as_raw_fd()).unwrap();
        assert_eq!(n, 3);
        assert_eq!(batch.get(0), (&b"one"[..], Some(a.local_addr().unwrap())));
        assert_eq!(
            batch.get(1),
            (&b"second"[..], Some(b.local_addr().unwrap()))
        );
        // Cut at the buffer size, like recvfrom would, and said so.
        assert_eq!(batch.get(2).0, &[7u8; 64][..]);
        assert!(batch.cut(2) && !batch.cut(0));

        let empty = batch.recv(rx.as_raw_fd()).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn sends_all_and_reports_each_failure() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = SockAddr::from(rx.local_addr().unwrap());
        // An IPv6 address on an IPv4 socket fails; the rest still go.
        let bad = SockAddr::from("[::1]:9".parse::<SocketAddr>().unwrap());
        let payloads: Vec<Vec<u8>> = (0..BATCH as u8 + 3).map(|i| vec![i]).collect();
        let mut msgs: Vec<(&[u8], Option<&SockAddr>)> =
            payloads.iter().map(|p| (&p[..], Some(&to))).collect();
        msgs[1].1 = Some(&bad);
        let mut failures = Vec::new();
        send_all(tx.as_raw_fd(), &msgs, |i, _| failures.push(i));
        assert_eq!(failures, [1]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut batch = RecvBatch::new(16);
        let mut got = Vec::new();
        while let Ok(n) = batch.recv(rx.as_raw_fd()) {
            got.extend((0..n).map(|i| batch.get(i).0[0]));
        }
        let want: Vec<u8> = (0..BATCH as u8 + 3).filter(|&i| i != 1).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn stops_at_the_batch_size() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..BATCH + 5 {
            tx.send_to(&[i as u8], rx.local_addr().unwrap()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut batch = RecvBatch::new(16);
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), BATCH);
        assert_eq!(batch.get(BATCH - 1).0, &[(BATCH - 1) as u8][..]);
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 5);
    }
}
