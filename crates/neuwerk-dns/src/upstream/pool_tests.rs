//! Tests of the upstream socket pool (`pool.rs`).

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

/// A query for `q` with `id`, as the proxy sends upstream.
fn query(id: u16, q: &Query) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
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
        let mut reg = pool.register(&query(0, &q)).unwrap();
        let mut query = response(0, &q);
        wire::set_id(&mut query, reg.id());
        reg.send(&query).await.unwrap();
        let mut buf = [0u8; 512];
        let (_, from) = upstream.recv_from(&mut buf).unwrap();
        // Wrong id, then the right id with another question: ignored.
        upstream.send_to(&response(reg.id() ^ 1, &q), from).unwrap();
        let other = question("b.example.");
        upstream.send_to(&response(reg.id(), &other), from).unwrap();
        // Ours, its name in another case (RFC 4343): accepted.
        let shouted = question("A.EXAMPLE.");
        upstream
            .send_to(&response(reg.id(), &shouted), from)
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(3), &mut reg.reply)
            .await
            .unwrap()
            .unwrap();
        let Reply::Answer(answer) = reply else {
            panic!("expected an answer, got {reply:?}");
        };
        let msg = Message::from_vec(&answer.bytes).unwrap();
        assert_eq!(msg.queries, vec![q]);
    });
}

#[test]
fn sockets_rotate_to_fresh_ports_and_old_ones_close_when_idle() {
    local(async {
        let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let pool = Pool::new(upstream.local_addr().unwrap());
        let q = question("a.example.");
        let first = pool.register(&query(0, &q)).unwrap();
        let old = first.slot.clone();
        let old_port = old.socket.socket().local_addr().unwrap().port();
        // Wear the socket out; its next turn gets a fresh one.
        old.used.set(ROTATE_AFTER);
        for _ in 1..POOL_SOCKETS * SLOT_RUN {
            drop(pool.register(&query(0, &q)).unwrap());
        }
        let second = pool.register(&query(0, &q)).unwrap();
        assert!(!Rc::ptr_eq(&second.slot, &old));
        assert_ne!(
            second.slot.socket.socket().local_addr().unwrap().port(),
            old_port
        );
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
        let pool = Pool::new(closed_port("127.0.0.1"));
        let q = question("a.example.");
        let mut reg = pool.register(&query(0, &q)).unwrap();
        sent_and_refused(&mut reg, &q).await;
    });
}

/// Sends `reg`'s query where nothing listens: it fails at once, with the
/// error the ICMP port unreachable stands for.
async fn sent_and_refused(reg: &mut Registration, q: &Query) {
    reg.send(&query(reg.id(), q)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(3), &mut reg.reply)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(reply, Reply::Failed(io::ErrorKind::ConnectionRefused)),
        "{reply:?}"
    );
}

/// An address where nothing listens (ICMP port unreachable on loopback).
fn closed_port(ip: &str) -> std::net::SocketAddr {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `reg`'s query still waits once the socket's receive task has read what
/// the kernel queued, and, once an upstream listens at `at`, is sent, read
/// there and answered.
async fn still_waits_then_answered(at: std::net::SocketAddr, reg: &mut Registration, q: &Query) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        reg.reply.try_recv().is_err(),
        "another query's error failed it"
    );
    let upstream = std::net::UdpSocket::bind(at).unwrap();
    upstream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    reg.send(&query(reg.id(), q)).await.unwrap();
    let mut buf = [0u8; 512];
    let (_, from) = upstream.recv_from(&mut buf).unwrap();
    upstream.send_to(&response(reg.id(), q), from).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(3), &mut reg.reply)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(reply, Reply::Answer(_)), "{reply:?}");
}

#[test]
fn an_icmp_error_fails_only_the_query_it_quotes() {
    for ip in ["127.0.0.1", "::1"] {
        local(async move {
            let closed = closed_port(ip);
            let pool = Pool::new(closed);
            let (qa, qb) = (question("a.example."), question("b.example."));
            let mut a = pool.register(&query(0, &qa)).unwrap();
            let mut b = pool.register(&query(0, &qb)).unwrap();
            assert!(Rc::ptr_eq(&a.slot, &b.slot), "both wait on one socket");
            // Only `a` is sent, so only `a` draws (and is quoted by) an error.
            sent_and_refused(&mut a, &qa).await;
            still_waits_then_answered(closed, &mut b, &qb).await;
        });
    }
}

#[test]
fn an_icmp_error_for_no_waiting_query_fails_nothing() {
    local(async {
        let closed = closed_port("127.0.0.1");
        let pool = Pool::new(closed);
        let (qa, qb) = (question("a.example."), question("b.example."));
        let a = pool.register(&query(0, &qa)).unwrap();
        a.send(&query(a.id(), &qa)).await.unwrap();
        // Gone before its error is read (answered or timed out, say): the
        // error comes too late, or was forged, and names nobody waiting.
        drop(a);
        let mut b = pool.register(&query(0, &qb)).unwrap();
        still_waits_then_answered(closed, &mut b, &qb).await;
    });
}

/// Each socket gets the larger receive buffer (the kernel reports twice
/// what was set, capped at twice net.core.rmem_max).
#[test]
fn sockets_get_the_larger_receive_buffer() {
    local(async {
        let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let slot = Slot::open(upstream.local_addr().unwrap()).unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let got = socket2::SockRef::from(slot.socket.socket())
            .recv_buffer_size()
            .unwrap();
        assert_eq!(got, 2 * ANSWER_RECV_BUFFER.min(rmem_max));
        slot.retired.set(true);
        slot.drained.notify_one();
    });
}
