//! UDP listener. A query takes no task of its own: the receive loop
//! begins it and sends it upstream, and the loop that reads its answer
//! finishes it, learning the grants of all the answers of one read
//! together before their replies leave (see [`outbox`]). Only a query
//! whose first try gives nothing to relay (truncated, failed, timed out)
//! goes on in a task, through the same upstream code as TCP queries.
//!
//! A task per datagram (spawn, wake-up, a channel to hand the answer over)
//! was a quarter of the proxy's userspace time.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::os::fd::AsRawFd;

use smallvec::SmallVec;
use socket2::SockAddr;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::Query;
use crate::batch::{self, RecvBatch};
use crate::dgram::Datagrams;
use crate::handler::{Begin, Finish, Forward, Handler};
use crate::outbox::{self, Flush, Learn};
use crate::upstream::{Answer, Reply, ResolveError, Resume, Upstreams, Waiting};
use crate::Transport;

/// Queries handled at once per socket. Beyond it the loop stops reading
/// and the kernel's receive queue absorbs (or drops) the excess, which
/// bounds memory and upstream sockets under a flood.
pub(crate) const MAX_UDP_INFLIGHT: usize = 4096;
/// Longest query read over UDP; longer ones are dropped. Real queries are
/// a few hundred bytes (the same bound as over TCP).
const MAX_UDP_QUERY: usize = 4096;

/// One listening socket and what its queries share.
struct Listener {
    socket: Datagrams,
    handler: Arc<Handler>,
    upstreams: Rc<Upstreams>,
    /// Queries between receipt and reply.
    inflight: Cell<usize>,
    /// Signalled when `inflight` falls below the cap.
    room: Notify,
    /// Replies waiting for the end of the batch (see [`outbox`]).
    outbox: RefCell<Vec<(Vec<u8>, SockAddr)>>,
    /// Answered queries waiting to be learned together (see [`outbox`]).
    learning: RefCell<Vec<Finish>>,
}

/// Receives datagrams until dropped (the server's shutdown drops it, and
/// with it every in-flight query).
pub(crate) async fn serve(socket: Datagrams, handler: Arc<Handler>, upstreams: Rc<Upstreams>) {
    let listener = Rc::new(Listener {
        socket,
        handler,
        upstreams,
        inflight: Cell::new(0),
        room: Notify::new(),
        outbox: RefCell::default(),
        learning: RefCell::default(),
    });
    // Reused for every batch; each query gets an exact-size copy.
    let mut batch = RecvBatch::new(MAX_UDP_QUERY);
    // The last read filled the batch: the next one would not wait.
    let mut full = false;
    loop {
        if listener.inflight.get() >= MAX_UDP_INFLIGHT {
            listener.room.notified().await;
            continue;
        }
        if full {
            outbox::before_read().await;
        }
        let received = match listener.socket.recv(&mut batch).await {
            Ok(n) => {
                full = n == batch::BATCH;
                n
            }
            Err(e) => {
                // Not expected on an unconnected socket; the pause keeps a
                // persistent error from spinning the loop.
                warn!(error = %e, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let now = Instant::now();
        // Replies and upstream queries of this batch go out together.
        let _batch = outbox::scope();
        for i in 0..received {
            let (bytes, peer) = batch.get(i);
            let Some(peer) = peer else { continue };
            if batch.cut(i) {
                debug!(%peer, "query longer than {MAX_UDP_QUERY} bytes dropped");
                continue;
            }
            listener.begin(Query {
                bytes: Bytes::copy_from_slice(bytes),
                peer,
                transport: Transport::Udp,
                received: now,
            });
        }
    }
}

impl Listener {
    /// Answers the query, or sends it upstream.
    fn begin(self: &Rc<Self>, query: Query) {
        let peer = query.peer;
        match self.handler.begin(query) {
            Begin::Done(reply) => {
                if let Some(reply) = reply {
                    self.send(reply, peer);
                }
            }
            Begin::Forward(fwd) => self.forward(fwd),
        }
    }

    /// Sends the query to the first upstream; the reply comes to
    /// [`Pending::complete`].
    fn forward(self: &Rc<Self>, fwd: Box<Forward>) {
        self.inflight.set(self.inflight.get() + 1);
        let Some((pool, deadline)) = self.upstreams.first() else {
            // No upstream configured: the resolution fails at once.
            self.resume(fwd, Default::default());
            return;
        };
        let pending = Box::new(Pending {
            fwd,
            listener: Rc::downgrade(self),
            deadline,
        });
        pool.send_waiting(pending, deadline);
    }

    /// Goes on with the upstreams after the first try, in a task.
    fn resume(self: &Rc<Self>, mut fwd: Box<Forward>, resume: Resume) {
        let this = self.clone();
        tokio::task::spawn_local(async move {
            let resolved = this.upstreams.resume(&mut fwd.ask.request, resume).await;
            this.finish(fwd, resolved);
        });
    }

    /// Learns, replies, and makes room for the next query; in a batch,
    /// together with the batch's other answers at its end.
    fn finish(self: &Rc<Self>, fwd: Box<Forward>, resolved: Result<Answer, ResolveError>) {
        let item = Finish::new(fwd, resolved);
        if outbox::deferring() {
            let mut learning = self.learning.borrow_mut();
            if learning.is_empty() {
                outbox::learning(self.clone());
            }
            learning.push(item);
            return;
        }
        self.answer(&mut [item]);
    }

    /// Learns the items' grants together, then sends their replies.
    fn answer(self: &Rc<Self>, items: &mut [Finish]) {
        self.handler.finish_all(items);
        for it in items.iter_mut() {
            if let Some(reply) = it.reply.take() {
                self.send(reply, it.fwd.query.peer);
            }
        }
        let inflight = self.inflight.get();
        self.inflight.set(inflight - items.len());
        if inflight >= MAX_UDP_INFLIGHT && inflight - items.len() < MAX_UDP_INFLIGHT {
            self.room.notify_one();
        }
    }

    /// Sends a reply now, or at the end of the batch if one is open.
    fn send(self: &Rc<Self>, reply: Vec<u8>, peer: SocketAddr) {
        let to = SockAddr::from(peer);
        if outbox::deferring() {
            let mut queue = self.outbox.borrow_mut();
            if queue.is_empty() {
                outbox::queued(self.clone());
            }
            queue.push((reply, to));
            return;
        }
        if let Err(e) = self.socket.try_send(&reply, Some(&to)) {
            self.unsent(reply, peer, e);
        }
    }

    /// A reply the kernel did not take: if only for want of buffer room,
    /// it waits for room in a task.
    fn unsent(self: &Rc<Self>, reply: Vec<u8>, peer: SocketAddr, e: std::io::Error) {
        if e.kind() != std::io::ErrorKind::WouldBlock {
            debug!(%peer, error = %e, "UDP reply not sent");
            return;
        }
        let this = self.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = this.socket.send(&reply, Some(&peer.into())).await {
                debug!(%peer, error = %e, "UDP reply not sent");
            }
        });
    }
}

impl Learn for Listener {
    /// The answers of one batch, learned together when it ends.
    fn learn(self: Rc<Self>) {
        let mut items = std::mem::take(&mut *self.learning.borrow_mut());
        self.answer(&mut items);
        outbox::give_back(&self.learning, items);
    }
}

impl Flush for Listener {
    fn flush(self: Rc<Self>) {
        let queue = std::mem::take(&mut *self.outbox.borrow_mut());
        let msgs: SmallVec<[(&[u8], Option<&SockAddr>); batch::BATCH]> =
            queue.iter().map(|(r, to)| (&r[..], Some(to))).collect();
        let mut unsent = Vec::new();
        batch::send_all(self.socket.as_raw_fd(), &msgs, |i, e| unsent.push((i, e)));
        for (i, e) in unsent {
            let (reply, to) = &queue[i];
            if let Some(peer) = to.as_socket() {
                self.unsent(reply.clone(), peer, e);
            }
        }
        drop(msgs);
        outbox::give_back(&self.outbox, queue);
    }
}

/// A UDP query waiting for its first upstream answer.
struct Pending {
    fwd: Box<Forward>,
    /// Weak: the pool holding this query belongs to the listener's
    /// upstreams, and a strong reference would keep them all alive.
    listener: Weak<Listener>,
    deadline: tokio::time::Instant,
}

impl Waiting for Pending {
    fn wire(&mut self) -> &mut [u8] {
        &mut self.fwd.ask.request.wire
    }

    fn bytes(&self) -> &[u8] {
        &self.fwd.ask.request.wire
    }

    fn complete(self: Box<Self>, reply: Reply) {
        let Pending {
            fwd,
            listener,
            deadline,
        } = *self;
        // Gone: the worker is stopping, and the query with it.
        let Some(listener) = listener.upgrade() else {
            return;
        };
        match listener.upstreams.first_reply(reply, deadline) {
            Ok(answer) => listener.finish(fwd, Ok(answer)),
            Err(resume) => listener.resume(fwd, resume),
        }
    }
}
