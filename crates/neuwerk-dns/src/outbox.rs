//! Sends deferred to the end of a batch. While a [`Scope`] is open on a
//! worker's thread (a receive loop handling what one `recvmmsg` read),
//! replies and upstream queries queue on their sockets, and closing the
//! scope sends each socket's queue with `sendmmsg`: one syscall per socket
//! and batch instead of one per datagram. Outside a scope every send goes
//! out at once, so nothing can be left queued.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A socket with queued datagrams.
pub(crate) trait Flush {
    /// Sends everything queued.
    fn flush(self: Rc<Self>);
}

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static QUEUED: RefCell<Vec<Rc<dyn Flush>>> = const { RefCell::new(Vec::new()) };
}

/// Open: sends queue. Not `Send`: it belongs to the thread it counts on.
pub(crate) struct Scope(std::marker::PhantomData<Rc<()>>);

/// Opens a scope; the outermost one sends everything when dropped.
pub(crate) fn scope() -> Scope {
    DEPTH.with(|d| d.set(d.get() + 1));
    Scope(std::marker::PhantomData)
}

/// Whether sends queue now (a scope is open).
pub(crate) fn deferring() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

/// Registers a socket whose queue just became non-empty.
pub(crate) fn queued(socket: Rc<dyn Flush>) {
    QUEUED.with(|q| q.borrow_mut().push(socket));
}

impl Drop for Scope {
    fn drop(&mut self) {
        if DEPTH.with(|d| d.get()) == 1 {
            // Still open while flushing: a send a flush causes queues and
            // goes out in the next round.
            while let Some(sockets) = QUEUED.with(|q| {
                let mut q = q.borrow_mut();
                (!q.is_empty()).then(|| std::mem::take(&mut *q))
            }) {
                sockets.into_iter().for_each(Flush::flush);
            }
        }
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        queue: RefCell<Vec<u32>>,
        sent: RefCell<Vec<u32>>,
    }

    impl Counter {
        fn send(self: &Rc<Self>, v: u32) {
            if !deferring() {
                self.sent.borrow_mut().push(v);
                return;
            }
            let mut q = self.queue.borrow_mut();
            if q.is_empty() {
                queued(self.clone());
            }
            q.push(v);
        }
    }

    impl Flush for Counter {
        fn flush(self: Rc<Self>) {
            let q = std::mem::take(&mut *self.queue.borrow_mut());
            self.sent.borrow_mut().extend(q);
        }
    }

    #[test]
    fn sends_wait_for_the_outermost_scope() {
        let c = Rc::new(Counter {
            queue: RefCell::default(),
            sent: RefCell::default(),
        });
        c.send(1);
        assert_eq!(*c.sent.borrow(), [1]);
        {
            let _outer = scope();
            c.send(2);
            {
                let _inner = scope();
                c.send(3);
            }
            assert_eq!(*c.sent.borrow(), [1]);
        }
        assert_eq!(*c.sent.borrow(), [1, 2, 3]);
        assert!(!deferring());
    }
}
