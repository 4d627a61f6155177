//! Work deferred to the end of a batch. While a [`Scope`] is open on a
//! worker's thread (a receive loop handling what one `recvmmsg` read),
//! answers wait to be learned together and replies and upstream queries
//! queue on their sockets. Closing the scope first learns (one store lock
//! and one kernel write for the batch), which queues the replies, then
//! sends each socket's queue with `sendmmsg`: one syscall per socket and
//! batch instead of one per datagram, and no reply before its grants.
//! Outside a scope everything happens at once, so nothing can be left
//! queued.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Something with deferred work: answers to learn, or datagrams to send.
pub(crate) trait Flush {
    /// Does everything deferred.
    fn flush(self: Rc<Self>);
}

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Flushed first: their flush queues replies.
    static LEARNING: RefCell<Vec<Rc<dyn Flush>>> = const { RefCell::new(Vec::new()) };
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

/// Registers something whose answers-to-learn just became non-empty.
pub(crate) fn learning(learner: Rc<dyn Flush>) {
    LEARNING.with(|q| q.borrow_mut().push(learner));
}

/// Takes the registered list, if any.
fn take(list: &'static std::thread::LocalKey<RefCell<Vec<Rc<dyn Flush>>>>) -> Vec<Rc<dyn Flush>> {
    list.with(|q| std::mem::take(&mut *q.borrow_mut()))
}

/// Closes one level of scope when dropped, even if a flush panics (the
/// depth must not stay raised, or nothing would be sent again).
struct Close;

impl Drop for Close {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get() - 1));
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let _close = Close;
        if DEPTH.with(|d| d.get()) == 1 {
            // Still open while flushing: what a flush defers goes in the
            // next round. Learning first: it queues replies.
            loop {
                let learners = take(&LEARNING);
                learners.into_iter().for_each(Flush::flush);
                let sockets = take(&QUEUED);
                if sockets.is_empty() {
                    break;
                }
                sockets.into_iter().for_each(Flush::flush);
            }
        }
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

    struct Panics;

    impl Flush for Panics {
        fn flush(self: Rc<Self>) {
            panic!("a bug in a flush");
        }
    }

    #[test]
    fn a_panicking_flush_closes_the_scope() {
        let r = std::panic::catch_unwind(|| {
            let _s = scope();
            queued(Rc::new(Panics));
        });
        assert!(r.is_err());
        assert!(!deferring());
    }
}
