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
//! - ICMP errors still arrive (a connected socket reports them), and fail
//!   the queries waiting on that socket at once instead of at the timeout.
//!
//! The pool is per worker thread (`Rc`, `RefCell`): no locks, no wake-ups
//! across threads.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use hickory_proto::op::Query;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};
use tracing::debug;

use super::{accept, Answer, MAX_UDP_ANSWER};
use crate::wire;

/// Sockets per upstream per worker. More sockets mean more ports for a
/// spoofer to guess and fewer id collisions to retry; each costs a
/// descriptor and a receive task.
pub(crate) const POOL_SOCKETS: usize = 8;
/// Queries a socket carries before a fresh one (with a fresh random port)
/// takes its place.
pub(crate) const ROTATE_AFTER: u32 = 8192;
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
}

/// A query waiting for its answer.
struct Waiter {
    /// Tells a waiter's guard from a later query's that got the same id.
    seq: u64,
    question: Query,
    tx: oneshot::Sender<Reply>,
}

/// One connected socket and the queries waiting on it.
struct Slot {
    socket: UdpSocket,
    waiting: RefCell<HashMap<u16, Waiter>>,
    /// Queries sent on it so far.
    used: Cell<u32>,
    /// Replaced in the pool: its receive task ends once nobody waits.
    retired: Cell<bool>,
    drained: Notify,
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
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(socket)?;
        let slot = Rc::new(Slot {
            socket,
            waiting: RefCell::new(HashMap::new()),
            used: Cell::new(0),
            retired: Cell::new(false),
            drained: Notify::new(),
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
            match accept(buf, id, &waiter.question) {
                Some(msg) if msg.truncation => Reply::Truncated,
                Some(msg) => Reply::Answer(Answer {
                    msg,
                    bytes: buf.to_vec(),
                    received,
                }),
                None => {
                    debug!("ignoring a datagram that does not answer its query");
                    return;
                }
            }
        };
        if let Some(waiter) = waiting.remove(&id) {
            let _ = waiter.tx.send(reply);
        }
    }

    /// The socket reported `err`: every query waiting on it fails now.
    fn fail_all(&self, err: &io::Error) {
        for (_, waiter) in self.waiting.borrow_mut().drain() {
            let _ = waiter.tx.send(Reply::Failed(err.kind()));
        }
    }

    fn forget(&self, id: u16, seq: u64) {
        let mut waiting = self.waiting.borrow_mut();
        if waiting.get(&id).is_some_and(|w| w.seq == seq) {
            waiting.remove(&id);
        }
        if waiting.is_empty() && self.retired.get() {
            self.drained.notify_one();
        }
    }
}

/// Reads answers until the socket is retired and nobody waits on it.
async fn receive(slot: Rc<Slot>, server: SocketAddr) {
    let mut buf = vec![0u8; MAX_UDP_ANSWER];
    loop {
        tokio::select! {
            read = slot.socket.recv(&mut buf) => match read {
                Ok(n) => slot.deliver(&buf[..n], Instant::now()),
                Err(e) => {
                    debug!(%server, error = %e, "upstream socket error");
                    slot.fail_all(&e);
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
        self.slot.socket.send(query).await.map(drop)
    }

    /// The id the query must carry.
    pub(crate) fn id(&self) -> u16 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slot.forget(self.id, self.seq);
    }
}

/// The sockets of one worker to one upstream.
pub(crate) struct Pool {
    server: SocketAddr,
    slots: RefCell<Vec<Rc<Slot>>>,
    next: Cell<usize>,
    seq: Cell<u64>,
}

impl Pool {
    /// An empty pool; sockets are opened on first use.
    pub(crate) fn new(server: SocketAddr) -> Pool {
        Pool {
            server,
            slots: RefCell::new(Vec::with_capacity(POOL_SOCKETS)),
            next: Cell::new(0),
            seq: Cell::new(0),
        }
    }

    /// The upstream's address.
    pub(crate) fn server(&self) -> SocketAddr {
        self.server
    }

    /// A socket and a fresh random id on it for `question`.
    pub(crate) fn register(&self, question: &Query) -> io::Result<Registration> {
        let slot = self.pick()?;
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let (tx, reply) = oneshot::channel();
        let mut waiting = slot.waiting.borrow_mut();
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
        waiting.insert(
            id,
            Waiter {
                seq,
                question: question.clone(),
                tx,
            },
        );
        drop(waiting);
        slot.used.set(slot.used.get() + 1);
        Ok(Registration {
            slot,
            id,
            seq,
            reply,
        })
    }

    /// The next socket round-robin, opening or replacing it as needed.
    /// Nothing here awaits, so the slot list cannot change under it.
    fn pick(&self) -> io::Result<Rc<Slot>> {
        let i = self.next.get();
        self.next.set((i + 1) % POOL_SOCKETS);
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
        for slot in self.slots.borrow().iter() {
            slot.retired.set(true);
            slot.drained.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use tokio::task::LocalSet;

    use super::*;

    fn question(name: &str) -> Query {
        Query::query(Name::from_ascii(name).unwrap(), RecordType::A)
    }

    /// A response to `id` for `q`, as an upstream would send it.
    fn response(id: u16, q: &Query) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Response, OpCode::Query);
        m.add_query(q.clone());
        m.to_vec().unwrap()
    }

    /// Runs `f` on a current-thread runtime inside a LocalSet, as workers do.
    fn local<F: std::future::Future<Output = ()>>(f: F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        LocalSet::new().block_on(&rt, f);
    }

    #[test]
    fn answers_reach_their_waiter_and_others_are_ignored() {
        local(async {
            let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let pool = Pool::new(upstream.local_addr().unwrap());
            let q = question("a.example.");
            let mut reg = pool.register(&q).unwrap();
            let mut query = response(0, &q);
            wire::set_id(&mut query, reg.id());
            reg.send(&query).await.unwrap();
            let mut buf = [0u8; 512];
            let (_, from) = upstream.recv_from(&mut buf).unwrap();
            // Wrong id, then the right id with another question: ignored.
            upstream.send_to(&response(reg.id() ^ 1, &q), from).unwrap();
            let other = question("b.example.");
            upstream.send_to(&response(reg.id(), &other), from).unwrap();
            upstream.send_to(&response(reg.id(), &q), from).unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(3), &mut reg.reply)
                .await
                .unwrap()
                .unwrap();
            let Reply::Answer(answer) = reply else {
                panic!("expected an answer, got {reply:?}");
            };
            assert_eq!(answer.msg.queries, vec![q]);
        });
    }

    #[test]
    fn sockets_rotate_to_fresh_ports_and_old_ones_close_when_idle() {
        local(async {
            let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let pool = Pool::new(upstream.local_addr().unwrap());
            let q = question("a.example.");
            let first = pool.register(&q).unwrap();
            let old = first.slot.clone();
            let old_port = old.socket.local_addr().unwrap().port();
            // Wear the socket out; its next turn gets a fresh one.
            old.used.set(ROTATE_AFTER);
            for _ in 1..POOL_SOCKETS {
                drop(pool.register(&q).unwrap());
            }
            let second = pool.register(&q).unwrap();
            assert!(!Rc::ptr_eq(&second.slot, &old));
            assert_ne!(second.slot.socket.local_addr().unwrap().port(), old_port);
            assert!(old.retired.get());
            // The old socket's receive task holds it until its last waiter
            // is gone, then ends and lets it close.
            assert!(Rc::strong_count(&old) > 2);
            drop(first);
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert_eq!(Rc::strong_count(&old), 1);
        });
    }

    #[test]
    fn a_socket_error_fails_its_waiters_at_once() {
        local(async {
            // Nothing listens there: ICMP port unreachable on loopback.
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let pool = Pool::new(port);
            let q = question("a.example.");
            let mut reg = pool.register(&q).unwrap();
            reg.send(&response(reg.id(), &q)).await.unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(3), &mut reg.reply)
                .await
                .unwrap()
                .unwrap();
            assert!(
                matches!(reply, Reply::Failed(io::ErrorKind::ConnectionRefused)),
                "{reply:?}"
            );
        });
    }
}
