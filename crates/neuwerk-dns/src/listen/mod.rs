//! Listeners: they only receive and frame bytes into a [`Query`] and hand
//! it to the one [`Handler`](crate::handler::Handler), then send its reply
//! back the way the query came.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinError;
use tracing::error;

use crate::Transport;

pub(crate) mod tcp;
pub(crate) mod udp;

/// One query as received, whatever the transport.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    /// The DNS message, without TCP's length prefix.
    pub bytes: Bytes,
    pub peer: SocketAddr,
    pub transport: Transport,
    /// When the listener received it (for TCP, when the read that
    /// completed the frame returned): the start of the query's time.
    pub received: Instant,
}

/// A task ended; a panic is a bug worth an error, not a dead server.
pub(crate) fn reap(done: Result<(), JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            error!(error = %e, "task panicked");
        }
    }
}

/// Receive buffer asked for UDP listeners (the kernel caps it at
/// net.core.rmem_max). The default ~200 KiB holds only a few hundred
/// queued datagrams, so a burst of queries would be dropped before the
/// receive loop sees them.
const UDP_RECV_BUFFER: usize = 4 << 20;
/// Pending connections queued by the kernel.
const TCP_BACKLOG: i32 = 1024;

/// Whether a listening socket joins a group of sockets on the same
/// address (one per worker; the kernel spreads clients across them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    /// Alone: binding fails if anything holds the address, even a group.
    Exclusive,
    /// `SO_REUSEPORT`: joins the group of this user's sockets on it.
    Group,
}

/// A socket for `addr`; IPv6 sockets are IPv6-only so that `[::]:53` and
/// `0.0.0.0:53` can both be listened on.
fn socket(addr: SocketAddr, ty: Type, proto: Protocol, share: Share) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if share == Share::Group {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A UDP listener on `addr` with a large receive buffer, not yet tied to
/// a runtime (a worker thread adopts it).
pub(crate) fn udp_socket(addr: SocketAddr, share: Share) -> io::Result<std::net::UdpSocket> {
    let socket = socket(addr, Type::DGRAM, Protocol::UDP, share)?;
    // Best effort: a smaller buffer only means drops under bursts.
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A TCP listener on `addr`, not yet tied to a runtime.
pub(crate) fn tcp_listener(addr: SocketAddr, share: Share) -> io::Result<std::net::TcpListener> {
    let socket = socket(addr, Type::STREAM, Protocol::TCP, share)?;
    // Restarts must not wait for old connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(TCP_BACKLOG)?;
    Ok(socket.into())
}
