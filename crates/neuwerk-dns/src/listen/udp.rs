//! UDP listener: one receive loop per socket, one task per datagram, all
//! on the worker's thread.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{reap, Query};
use crate::handler::Handler;
use crate::upstream::Upstreams;
use crate::Transport;

/// Queries handled at once per socket. Beyond it the loop stops reading
/// and the kernel's receive queue absorbs (or drops) the excess, which
/// bounds memory and upstream sockets under a flood.
pub(crate) const MAX_UDP_INFLIGHT: usize = 4096;

/// Receives datagrams until dropped (the server's shutdown drops it, and
/// with it every in-flight query).
pub(crate) async fn serve(socket: UdpSocket, handler: Arc<Handler>, upstreams: Rc<Upstreams>) {
    let socket = Rc::new(socket);
    // Reused for every datagram; each query gets an exact-size copy.
    let mut buf = vec![0u8; u16::MAX as usize];
    let mut inflight = JoinSet::new();
    loop {
        while let Some(done) = inflight.try_join_next() {
            reap(done);
        }
        if inflight.len() >= MAX_UDP_INFLIGHT {
            if let Some(done) = inflight.join_next().await {
                reap(done);
            }
            continue;
        }
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                // Not expected on an unconnected socket; the pause keeps a
                // persistent error from spinning the loop.
                warn!(error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let received = Instant::now();
        let query = Query {
            bytes: Bytes::copy_from_slice(&buf[..n]),
            peer,
            transport: Transport::Udp,
            received,
        };
        let handler = handler.clone();
        let socket = socket.clone();
        let upstreams = upstreams.clone();
        inflight.spawn_local(async move {
            if let Some(reply) = handler.handle(query, &upstreams).await {
                if let Err(e) = socket.send_to(&reply, peer).await {
                    debug!(%peer, error = %e, "UDP reply not sent");
                }
            }
        });
    }
}
