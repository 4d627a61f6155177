//! Work deferred to the end of a batch. While a [`Scope`] is open on a
//! worker's thread (a receive loop handling what one `recvmmsg` read, and
//! for upstream answers what the other sockets' loops read in the same
//! pass of the worker, see `upstream::pool`),
//! answers wait to be learned together and replies and upstream queries
//! queue on their sockets. Closing the scope first learns (one store lock
//! and one kernel write for the batch), which queues the replies, then
//! sends each socket's queue with `sendmmsg`: one syscall per socket and
//! batch instead of one per datagram, and no reply before its grants.
//! Outside a scope everything happens at once, so nothing can be left
//! queued.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Something with datagrams to send.
pub(crate) trait Flush {
    /// Sends everything queued.
    fn flush(self: Rc<Self>);
}

/// Something with answers to learn.
pub(crate) trait Learn {
    /// Learns the answers held back, which queues their replies.
    fn learn(self: Rc<Self>);
}

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Reads [`before_read`] let through inside the open batch.
    static NESTED: Cell<usize> = const { Cell::new(0) };
    /// Run first: learning queues replies.
    static LEARNING: RefCell<Vec<Rc<dyn Learn>>> = const { RefCell::new(Vec::new()) };
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

/// Full reads the receive loops may make, together, inside a batch another
/// task holds open across a yield (see `upstream::pool`). Reading on
/// under load makes bigger batches (measured: 2-7% more queries/s at the
/// maximum than one read per loop); the bound keeps a busy listener from
/// holding that batch's replies back for thousands of queries (up to its
/// in-flight cap, about 12 ms).
const NESTED_READS: usize = 8;

/// Called by a receive loop whose last read filled its buffers, before it
/// reads again (after a read that did not, the next one waits for the
/// reactor anyway): returns at once if no batch is open or the open one
/// may take another read, else once it has closed.
pub(crate) async fn before_read() {
    if !deferring() {
        return;
    }
    let allowed = NESTED.with(|n| {
        n.set(n.get() + 1);
        n.get() <= NESTED_READS
    });
    if allowed {
        return;
    }
    while deferring() {
        tokio::task::yield_now().await;
    }
}

/// Registers a socket whose queue just became non-empty.
pub(crate) fn queued(socket: Rc<dyn Flush>) {
    QUEUED.with(|q| q.borrow_mut().push(socket));
}

/// Registers something whose answers-to-learn just became non-empty.
pub(crate) fn learning(learner: Rc<dyn Learn>) {
    LEARNING.with(|q| q.borrow_mut().push(learner));
}

/// Puts a queue's buffer, emptied, back in `slot` for the next batch
/// (unless the slot got entries of its own meanwhile): a batch's
/// bookkeeping allocates nothing once the first batches have sized it.
pub(crate) fn give_back<T>(slot: &RefCell<Vec<T>>, mut buf: Vec<T>) {
    buf.clear();
    let mut slot = slot.borrow_mut();
    if slot.is_empty() {
        *slot = buf;
    }
}

/// Runs `each` on every entry of the registered `list` (entries registered
/// meanwhile wait for the next call), then hands the emptied buffer back.
/// Returns whether there was any entry.
fn run_each<T: ?Sized>(
    list: &'static std::thread::LocalKey<RefCell<Vec<Rc<T>>>>,
    each: impl Fn(Rc<T>),
) -> bool {
    let mut taken = list.with(|q| std::mem::take(&mut *q.borrow_mut()));
    if taken.is_empty() {
        return false;
    }
    taken.drain(..).for_each(each);
    list.with(|q| give_back(q, taken));
    true
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
                run_each(&LEARNING, Learn::learn);
                if !run_each(&QUEUED, Flush::flush) {
                    break;
                }
            }
            NESTED.with(|n| n.set(0));
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

    #[test]
    fn reads_inside_a_batch_held_open_are_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let c = Rc::new(Counter {
            queue: RefCell::default(),
            sent: RefCell::default(),
        });
        let seen = Rc::new(RefCell::new(None));
        tokio::task::LocalSet::new().block_on(&rt, async {
            let holder = {
                let c = c.clone();
                tokio::task::spawn_local(async move {
                    let scope = scope();
                    c.send(1);
                    tokio::task::yield_now().await;
                    drop(scope);
                })
            };
            let reader = {
                let (c, seen) = (c.clone(), seen.clone());
                tokio::task::spawn_local(async move {
                    for _ in 0..NESTED_READS {
                        before_read().await;
                    }
                    let inside = c.sent.borrow().clone();
                    before_read().await;
                    *seen.borrow_mut() = Some((inside, c.sent.borrow().clone()));
                })
            };
            holder.await.unwrap();
            reader.await.unwrap();
        });
        // The allowed reads went on inside the holder's batch, the next
        // one only once that batch was sent.
        assert_eq!(*seen.borrow(), Some((vec![], vec![1])));
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
