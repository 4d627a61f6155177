//! Latency percentiles for the latency report.

use std::fmt;
use std::time::Duration;

/// Summary of a set of latency samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`; panics when empty.
    pub fn of(samples: &[Duration]) -> Percentiles {
        assert!(!samples.is_empty(), "no latency samples");
        let mut s = samples.to_vec();
        s.sort_unstable();
        let at = |p: f64| {
            let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[rank.clamp(1, s.len()) - 1]
        };
        Percentiles {
            n: s.len(),
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: s[s.len() - 1],
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        write!(
            f,
            "n={:<5} p50={:>8.1}us p95={:>8.1}us p99={:>8.1}us max={:>8.1}us",
            self.n,
            us(self.p50),
            us(self.p95),
            us(self.p99),
            us(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let p = Percentiles::of(&v);
        assert_eq!(p.p50, Duration::from_micros(50));
        assert_eq!(p.p95, Duration::from_micros(95));
        assert_eq!(p.p99, Duration::from_micros(99));
        assert_eq!(p.max, Duration::from_micros(100));
    }
}
