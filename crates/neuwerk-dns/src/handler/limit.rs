//! A bound on log lines that clients can cause: a name answering
//! special-use addresses, queried in a loop, must not flood the log.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Length of a window, in nanoseconds.
const WINDOW_NS: u64 = 1_000_000_000;

/// Lines let through per window, over all workers.
pub(crate) const LINES_PER_WINDOW: u32 = 5;

/// What [`LogLimit::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admit {
    /// Log this line.
    pub log: bool,
    /// Lines suppressed in earlier windows, to be reported now (once).
    pub suppressed: u64,
}

/// At most [`LINES_PER_WINDOW`] lines a second; what is held back is
/// counted and handed to the first caller of a later window, which logs
/// the count. Lock-free: a few atomics, no allocation.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// The current window, as `now_ns / WINDOW_NS`.
    window: AtomicU64,
    /// Lines admitted in the current window.
    used: AtomicU32,
    /// Lines held back since the count was last handed out.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// Whether a line at `now_ns` (CLOCK_MONOTONIC) may be logged.
    pub(crate) fn admit(&self, now_ns: u64) -> Admit {
        let window = now_ns / WINDOW_NS;
        let current = self.window.load(Ordering::Relaxed);
        let mut suppressed = 0;
        // One caller wins the new window and resets it; counts racing with
        // the reset may land in either window, which is close enough.
        if window > current
            && self
                .window
                .compare_exchange(current, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
            suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        }
        let log = self.used.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW;
        if !log {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        Admit { log, suppressed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_a_second_and_the_rest_counted_once() {
        let limit = LogLimit::default();
        let t0 = 10 * WINDOW_NS;
        let logged = (0..100)
            .map(|i| limit.admit(t0 + i))
            .filter(|a| a.log)
            .count();
        assert_eq!(logged, LINES_PER_WINDOW as usize);
        // The next window hands the count out once, and logs again.
        let first = limit.admit(t0 + WINDOW_NS);
        assert_eq!(
            first,
            Admit {
                log: true,
                suppressed: 100 - u64::from(LINES_PER_WINDOW)
            }
        );
        assert_eq!(limit.admit(t0 + WINDOW_NS + 1).suppressed, 0);
        // A quiet window between: nothing was held back meanwhile.
        assert_eq!(
            limit.admit(t0 + 5 * WINDOW_NS),
            Admit {
                log: true,
                suppressed: 0
            }
        );
    }

    #[test]
    fn shared_by_threads() {
        let limit = std::sync::Arc::new(LogLimit::default());
        let t0 = 3 * WINDOW_NS;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || (0..50).filter(|&i| limit.admit(t0 + i).log).count())
            })
            .collect();
        let logged: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(logged, LINES_PER_WINDOW as usize);
        assert_eq!(limit.admit(t0 + WINDOW_NS).suppressed, 195);
    }
}
