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
        let first = pool.register(&q).unwrap();
        let old = first.slot.clone();
        let old_port = old.socket.socket().local_addr().unwrap().port();
        // Wear the socket out; its next turn gets a fresh one.
        old.used.set(ROTATE_AFTER);
        for _ in 1..POOL_SOCKETS * SLOT_RUN {
            drop(pool.register(&q).unwrap());
        }
        let second = pool.register(&q).unwrap();
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
