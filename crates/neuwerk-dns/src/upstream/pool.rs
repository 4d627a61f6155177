//! Long-lived UDP sockets to one upstream, shared by one worker's queries,
//! with a table of the queries waiting on each.
//!
//! A socket per try (socket, connect, epoll registration, close: four more
//! syscalls per query) was a fifth of the proxy's CPU. The pool keeps what
//! made it safe:
//! - every socket is bound to an ephemeral port the kernel picks at random
//!   and `connect`ed, so the kernel drops datagrams from anyone but the
//!   upstream, and a spoofer must guess the port among the pool's and the
//!   16-bit id, and then match the question, which is compared in full;
//! - ids are random and unique per socket; a late answer to a finished
//!   query finds no waiter, or a waiter whose question differs;
//! - sockets are replaced after [`ROTATE_AFTER`] queries, so ports do not
//!   stay fixed for the life of the process;
//! - ICMP errors still arrive (a connected socket reports them), each with
//!   the query it quotes ([`icmp`]): that query fails at once instead of at
//!   the timeout, and the others waiting on the socket go on.
//!
//! The pool is per worker thread (`Rc`, `RefCell`): no locks, no wake-ups
//! across threads.
//!
//! A query waits in one of two ways: a task awaits a [`Registration`]
//! (TCP clients, retries), or a UDP query hands itself over as a
//! [`Waiting`] and is completed by the receive loop that reads its answer,
//! or by the pool's timeout queue: no task, channel or wake-up per query.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use smallvec::SmallVec;
use socket2::SockAddr;
use tokio::sync::{oneshot, Notify};
use tracing::debug;

use super::{accept, icmp, Answer, MAX_UDP_ANSWER};
use crate::batch::{self, RecvBatch};
use crate::dgram::Datagrams;
use crate::outbox::{self, Flush};
use crate::wire;

/// Sockets per upstream per worker. More sockets mean more ports for a
/// spoofer to guess and fewer id collisions to retry; each costs a
/// descriptor and a receive task.
pub(crate) const POOL_SOCKETS: usize = 8;
/// Consecutive queries sent on one socket before the next one's turn, so
/// that a batch's queries leave in few `sendmmsg` calls.
const SLOT_RUN: usize = 16;
/// Queries a socket carries before a fresh one (with a fresh random port)
/// takes its place.
pub(crate) const ROTATE_AFTER: u32 = 8192;
/// Receive buffer asked for each socket. The default (~200 KiB, a few
/// hundred answers) overflows when the worker stalls for a few ms at 150k
/// qps: with two sockets instead of eight, 0.1% of answers were dropped
/// at 60k qps (RcvbufErrors), none with 1 MiB each.
const ANSWER_RECV_BUFFER: usize = 1 << 20;
/// Queries waiting on one socket at most. The listeners' in-flight caps
/// keep real load far below it; it keeps the id draw short.
const MAX_WAITING: usize = 16384;

/// What a waiting query gets back.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A response with our id and our question.
    Answer(Answer),
    /// Our answer, but cut: fetch it over TCP.
    Truncated,
    /// The socket reported an error (an ICMP unreachable, typically).
    Failed(io::ErrorKind),
    /// No answer before the deadline (only [`Waiting`] queries get this;
    /// a [`Registration`]'s owner times out on its own).
    TimedOut,
}

/// A query that completes itself: handed to [`Pool::send_waiting`], it is
/// given its reply on the worker's thread, exactly once, unless the worker
/// stops first (then it is dropped).
pub(crate) trait Waiting {
    /// The upstream query; its id is set before it is sent.
    fn wire(&mut self) -> &mut [u8];
    /// The same, to send, and to compare an answer's question with.
    fn bytes(&self) -> &[u8];
    /// Takes the reply.
    fn complete(self: Box<Self>, reply: Reply);
}

/// Who gets a waiter's reply.
enum Then {
    /// A task awaiting its [`Registration`].
    Send {
        /// A copy of the query (its id aside), whose question an answer
        /// must carry.
        sent: Vec<u8>,
        tx: oneshot::Sender<Reply>,
    },
    /// A query completing itself.
    Call(Box<dyn Waiting>),
}

impl Then {
    /// The query as sent (its id aside).
    fn sent(&self) -> &[u8] {
        match self {
            Then::Send { sent, .. } => sent,
            Then::Call(w) => w.bytes(),
        }
    }

    fn reply(self, reply: Reply) {
        match self {
            Then::Send { tx, .. } => {
                let _ = tx.send(reply);
            }
            Then::Call(w) => w.complete(reply),
        }
    }
}

/// A query waiting for its answer.
struct Waiter {
    /// Tells a waiter's guard from a later query's that got the same id.
    seq: u64,
    then: Then,
}

/// One connected socket and the queries waiting on it.
struct Slot {
    socket: Datagrams,
    waiting: RefCell<HashMap<u16, Waiter>>,
    /// Queries sent on it so far.
    used: Cell<u32>,
    /// Replaced in the pool: its receive task ends once nobody waits.
    retired: Cell<bool>,
    drained: Notify,
    /// (id, seq) of [`Waiting`] queries to send at the end of the batch
    /// (see [`outbox`]).
    outbox: RefCell<Vec<(u16, u64)>>,
}

impl Slot {
    /// Binds and connects a socket (neither blocks for UDP) and starts its
    /// receive task on this worker.
    fn open(server: SocketAddr) -> io::Result<Rc<Slot>> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = std::net::UdpSocket::bind(local)?;
        socket.connect(server)?;
        icmp::enable(&socket, server.is_ipv6())?;
        // Best effort (capped by net.core.rmem_max), as for the listeners.
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(ANSWER_RECV_BUFFER);
        let socket = Datagrams::new(socket)?;
        let slot = Rc::new(Slot {
            socket,
            waiting: RefCell::new(HashMap::new()),
            used: Cell::new(0),
            retired: Cell::new(false),
            drained: Notify::new(),
            outbox: RefCell::default(),
        });
        tokio::task::spawn_local(receive(slot.clone(), server));
        Ok(slot)
    }

    /// Hands the datagram to the query it answers, if any.
    fn deliver(&self, buf: &[u8], received: Instant) {
        if buf.len() < wire::HEADER_LEN || !wire::is_response(buf) {
            return;
        }
        let id = wire::id(buf);
        let mut waiting = self.waiting.borrow_mut();
        let Some(waiter) = waiting.get(&id) else {
            return;
        };
        let reply = if buf.len() >= MAX_UDP_ANSWER {
            // It filled the buffer, so it may have been cut.
            Reply::Truncated
        } else {
            match accept(buf, id, waiter.then.sent()) {
                Some(head) if head.truncated => Reply::Truncated,
                Some(head) => Reply::Answer(Answer {
                    rcode: head.rcode,
                    bytes: buf.to_vec(),
                    received,
                }),
                None => {
                    debug!("ignoring a datagram that does not answer its query");
                    return;
                }
            }
        };
        let waiter = waiting.remove(&id);
        // Released first: completing a query may register another one.
        drop(waiting);
        if let Some(waiter) = waiter {
            waiter.then.reply(reply);
        }
    }

    /// The socket reported `err`: each ICMP error queued on it fails the
    /// waiting query it quotes; one that quotes none fails nothing (late,
    /// stray or forged: the queries on the socket still get their answers,
    /// or time out).
    fn fail_reported(&self, err: &io::Error) {
        let mut failed = Vec::new();
        let read = icmp::drain(self.socket.as_raw_fd(), |quote, kind| {
            match self.take_quoted(quote) {
                Some(waiter) => failed.push((waiter, kind)),
                None => debug!(error = ?kind, "ICMP error for no waiting query ignored"),
            }
        });
        if read == 0 {
            debug!(error = %err, "upstream socket error that names no query ignored");
        }
        // Completed after the drain: completing may send on this socket.
        for (waiter, kind) in failed {
            waiter.then.reply(Reply::Failed(kind));
        }
    }

    /// Takes out the waiter whose id and question `quote` (the start of a
    /// query we sent, perhaps cut after its question) carries.
    fn take_quoted(&self, quote: &[u8]) -> Option<Waiter> {
        if quote.len() < wire::HEADER_LEN || wire::is_response(quote) {
            return None;
        }
        let id = wire::id(quote);
        let seq = match self.waiting.borrow().get(&id) {
            Some(w) if wire::same_question(quote, w.then.sent()) => w.seq,
            _ => return None,
        };
        self.take(id, seq)
    }

    /// Takes the waiter of `id` out if it is still the query `seq`.
    fn take(&self, id: u16, seq: u64) -> Option<Waiter> {
        let mut waiting = self.waiting.borrow_mut();
        let waiter = match waiting.get(&id) {
            Some(w) if w.seq == seq => waiting.remove(&id),
            _ => None,
        };
        if waiting.is_empty() && self.retired.get() {
            self.drained.notify_one();
        }
        waiter
    }
}

impl Flush for Slot {
    /// Sends the queued queries that still wait; one the kernel refuses
    /// fails at once, as an unqueued send would.
    fn flush(self: Rc<Self>) {
        let queue = std::mem::take(&mut *self.outbox.borrow_mut());
        let mut unsent = Vec::new();
        {
            let waiting = self.waiting.borrow();
            let sendable: SmallVec<[(u16, u64, &[u8]); batch::BATCH]> = queue
                .iter()
                .filter_map(|&(id, seq)| match waiting.get(&id) {
                    Some(Waiter {
                        seq: s,
                        then: Then::Call(w),
                    }) if *s == seq => Some((id, seq, w.bytes())),
                    _ => None,
                })
                .collect();
            let msgs: SmallVec<[(&[u8], Option<&SockAddr>); batch::BATCH]> =
                sendable.iter().map(|&(_, _, b)| (b, None)).collect();
            batch::send_all(self.socket.as_raw_fd(), &msgs, |i, e| {
                unsent.push((sendable[i].0, sendable[i].1, e.kind()));
            });
        }
        outbox::give_back(&self.outbox, queue);
        for (id, seq, kind) in unsent {
            if let Some(waiter) = self.take(id, seq) {
                waiter.then.reply(Reply::Failed(kind));
            }
        }
    }
}

/// Reads answers until the socket is retired and nobody waits on it.
async fn receive(slot: Rc<Slot>, server: SocketAddr) {
    let mut batch = RecvBatch::new(MAX_UDP_ANSWER);
    // The last read filled the batch: the next one would not wait.
    let mut full = false;
    loop {
        if full {
            outbox::before_read().await;
        }
        tokio::select! {
            read = slot.socket.recv(&mut batch) => match read {
                Ok(n) => {
                    full = n == batch::BATCH;
                    let now = Instant::now();
                    // The replies of this batch go out together.
                    let outermost = !outbox::deferring();
                    let scope = outbox::scope();
                    for i in 0..n {
                        slot.deliver(batch.get(i).0, now);
                    }
                    if outermost {
                        // The other sockets' loops woken by the same poll
                        // run before this one resumes: their answers join
                        // this batch (one learn, one reply sendmmsg) instead
                        // of each closing a batch of a few. Only the
                        // outermost yields, and the loops read again inside
                        // it only a few times (`before_read`), so the batch
                        // closes soon however busy the worker is.
                        tokio::task::yield_now().await;
                    }
                    drop(scope);
                }
                Err(e) => {
                    debug!(%server, error = %e, "upstream socket error");
                    slot.fail_reported(&e);
                }
            },
            () = slot.drained.notified() => {}
        }
        if slot.retired.get() && slot.waiting.borrow().is_empty() {
            return;
        }
    }
}

/// Removes its query's entry when the query ends, however it ends
/// (answered, timed out, or dropped at shutdown).
pub(crate) struct Registration {
    slot: Rc<Slot>,
    id: u16,
    seq: u64,
    /// Where the answer arrives.
    pub(crate) reply: oneshot::Receiver<Reply>,
}

impl Registration {
    /// Sends the query (its id already set to ours) on our socket.
    pub(crate) async fn send(&self, query: &[u8]) -> io::Result<()> {
        self.slot.socket.send(query, None).await
    }

    /// The id the query must carry.
    pub(crate) fn id(&self) -> u16 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        drop(self.slot.take(self.id, self.seq));
    }
}

/// A [`Waiting`] query's deadline, in the pool's queue.
struct Timeout {
    at: tokio::time::Instant,
    slot: Rc<Slot>,
    id: u16,
    seq: u64,
}

/// The deadlines of [`Waiting`] queries, in sending order. Every query of
/// a pool gets the same timeout, so that order is also deadline order and
/// a queue is all the timer needs; answered queries leave their entry
/// behind, to be skipped when it comes due.
#[derive(Default)]
struct Timeouts {
    queue: RefCell<VecDeque<Timeout>>,
    /// Wakes the timer when the queue gets its first entry, or closes.
    armed: Notify,
    /// Set when the pool is dropped: the timer ends.
    closed: Cell<bool>,
}

/// How late the timer may fail a query. Deadlines come as densely as
/// queries are sent, and most of them are of answered queries: waking once
/// per slack, not once per deadline, keeps a pool that just served a burst
/// from waking its thread every millisecond until the burst's deadlines
/// pass (measured: ~160 wake-ups/s in the 5 s after 100k queries).
const EXPIRY_SLACK: Duration = Duration::from_millis(10);

/// Fails the [`Waiting`] queries whose deadline passed, until the pool is
/// dropped.
async fn expire(timeouts: Rc<Timeouts>) {
    while !timeouts.closed.get() {
        let front = timeouts.queue.borrow().front().map(|t| t.at);
        match front {
            None => timeouts.armed.notified().await,
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at + EXPIRY_SLACK) => {}
                // The pool closing.
                () = timeouts.armed.notified() => {}
            },
        }
        let now = tokio::time::Instant::now();
        loop {
            let due = {
                let mut queue = timeouts.queue.borrow_mut();
                match queue.front() {
                    Some(t) if t.at <= now => queue.pop_front(),
                    _ => None,
                }
            };
            let Some(t) = due else { break };
            if let Some(waiter) = t.slot.take(t.id, t.seq) {
                waiter.then.reply(Reply::TimedOut);
            }
        }
    }
    // Lets go of the sockets the entries hold.
    timeouts.queue.borrow_mut().clear();
}

/// The sockets of one worker to one upstream.
pub(crate) struct Pool {
    server: SocketAddr,
    slots: RefCell<Vec<Rc<Slot>>>,
    next: Cell<usize>,
    seq: Cell<u64>,
    /// Shared with the timer task, which ends when the pool is dropped.
    timeouts: Rc<Timeouts>,
    timer_started: Cell<bool>,
}

impl Pool {
    /// An empty pool; sockets are opened on first use.
    pub(crate) fn new(server: SocketAddr) -> Pool {
        Pool {
            server,
            slots: RefCell::new(Vec::with_capacity(POOL_SOCKETS)),
            next: Cell::new(0),
            seq: Cell::new(0),
            timeouts: Rc::default(),
            timer_started: Cell::new(false),
        }
    }

    /// The upstream's address.
    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    /// A socket and a fresh random id on it for `query` (sent with that
    /// id by [`Registration::send`]).
    pub(crate) fn register(&self, query: &[u8]) -> io::Result<Registration> {
        let (slot, id) = self.reserve()?;
        let (tx, reply) = oneshot::channel();
        let then = Then::Send {
            sent: query.to_vec(),
            tx,
        };
        let seq = self.wait(&slot, id, then);
        Ok(Registration {
            slot,
            id,
            seq,
            reply,
        })
    }

    /// Sends `query` with a fresh id and leaves it waiting: it completes
    /// with the answer, an error of its socket, or [`Reply::TimedOut`] at
    /// `deadline`; at once with [`Reply::Failed`] if it cannot be sent.
    pub(crate) fn send_waiting(&self, mut query: Box<dyn Waiting>, deadline: tokio::time::Instant) {
        let (slot, id) = match self.reserve() {
            Ok(reserved) => reserved,
            Err(e) => return query.complete(Reply::Failed(e.kind())),
        };
        wire::set_id(query.wire(), id);
        let deferred = outbox::deferring();
        if !deferred {
            if let Err(e) = slot.socket.try_send(query.wire(), None) {
                return query.complete(Reply::Failed(e.kind()));
            }
        }
        let seq = self.wait(&slot, id, Then::Call(query));
        if deferred {
            let mut queue = slot.outbox.borrow_mut();
            if queue.is_empty() {
                outbox::queued(slot.clone());
            }
            queue.push((id, seq));
        }
        let was_empty = {
            let mut queue = self.timeouts.queue.borrow_mut();
            queue.push_back(Timeout {
                at: deadline,
                slot,
                id,
                seq,
            });
            queue.len() == 1
        };
        if !self.timer_started.replace(true) {
            tokio::task::spawn_local(expire(self.timeouts.clone()));
        }
        if was_empty {
            self.timeouts.armed.notify_one();
        }
    }

    /// A socket and an id no query waiting on it has.
    fn reserve(&self) -> io::Result<(Rc<Slot>, u16)> {
        let slot = self.pick()?;
        let waiting = slot.waiting.borrow();
        if waiting.len() >= MAX_WAITING {
            return Err(io::Error::other(
                "too many queries waiting on one upstream socket",
            ));
        }
        // Ids are random; a collision with a waiting query just draws again.
        let id = loop {
            let id = rand::random::<u16>();
            if !waiting.contains_key(&id) {
                break id;
            }
        };
        drop(waiting);
        Ok((slot, id))
    }

    /// Enters a waiter under `id` (from [`Pool::reserve`], with nothing
    /// run in between); returns its sequence number.
    fn wait(&self, slot: &Slot, id: u16, then: Then) -> u64 {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        slot.waiting.borrow_mut().insert(id, Waiter { seq, then });
        slot.used.set(slot.used.get() + 1);
        seq
    }

    /// The next socket round-robin, opening or replacing it as needed.
    /// Nothing here awaits, so the slot list cannot change under it.
    fn pick(&self) -> io::Result<Rc<Slot>> {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let i = (n / SLOT_RUN) % POOL_SOCKETS;
        let current = self.slots.borrow().get(i).cloned();
        match current {
            Some(slot) if slot.used.get() < ROTATE_AFTER => Ok(slot),
            // A busy socket's table can fill (65536 ids); rotating also
            // makes room.
            _ => self.replace(i),
        }
    }

    fn replace(&self, i: usize) -> io::Result<Rc<Slot>> {
        let fresh = Slot::open(self.server)?;
        let mut slots = self.slots.borrow_mut();
        if let Some(old) = slots.get_mut(i) {
            old.retired.set(true);
            old.drained.notify_one();
            *old = fresh.clone();
        } else {
            slots.push(fresh.clone());
        }
        Ok(fresh)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.timeouts.closed.set(true);
        self.timeouts.armed.notify_one();
        for slot in self.slots.borrow().iter() {
            slot.retired.set(true);
            slot.drained.notify_one();
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
