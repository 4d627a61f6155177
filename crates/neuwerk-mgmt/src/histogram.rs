//! A histogram of durations that observers update with atomic adds alone.
//!
//! prometheus-client's `Histogram` takes a mutex per observation; the DNS
//! path observes up to three per query, from every worker thread. This one
//! keeps a count per bucket and the sum in nanoseconds as atomics, and is
//! encoded through prometheus-client like its own (same text, same type).
//! A scrape reads the atomics one by one, so it may see an observation in
//! its bucket and not yet in the sum: off by the observations in flight
//! during the read, never torn.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Durations in buckets with fixed upper bounds (seconds), plus +Inf.
/// Clones share the same counts, as prometheus-client's metrics do.
#[derive(Debug, Clone)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, as exported; the last is infinity, which
    /// prometheus-client writes as +Inf.
    bounds: Box<[f64]>,
    /// The same bounds in nanoseconds, compared per observation.
    bounds_ns: Box<[u64]>,
    /// Observations per bucket (not cumulative), one per bound.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// A histogram with the given upper bounds in seconds, ascending.
    pub fn new(bounds: &[f64]) -> DurationHistogram {
        let bounds: Box<[f64]> = bounds.iter().copied().chain([f64::INFINITY]).collect();
        let bounds_ns = bounds.iter().map(|&b| seconds_to_ns(b)).collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        DurationHistogram {
            inner: Arc::new(Inner {
                bounds,
                bounds_ns,
                counts,
                sum_ns: AtomicU64::new(0),
            }),
        }
    }

    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let inner = &self.inner;
        // The last bound is u64::MAX ns, so a bucket is always found.
        let i = inner.bounds_ns.partition_point(|&b| b < ns);
        inner.counts[i].fetch_add(1, Ordering::Relaxed);
        inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// `s` seconds in whole nanoseconds, saturating (+Inf is `u64::MAX`).
fn seconds_to_ns(s: f64) -> u64 {
    // `as` saturates float-to-int conversions.
    (s * 1e9).round() as u64
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .zip(inner.counts.iter())
            .map(|(&b, c)| (b, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|&(_, n)| n).sum();
        let sum = inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::{Registry, Unit};

    use super::*;

    /// The text of a registry holding only `metric`, as `name`.
    fn text(metric: impl EncodeMetric + Send + Sync + std::fmt::Debug + 'static) -> String {
        let mut r = Registry::default();
        r.register_with_unit("t", "help", Unit::Seconds, metric);
        let mut out = String::new();
        encode(&mut out, &r).unwrap();
        out
    }

    /// The same observations give the same text as prometheus-client's own
    /// histogram: bounds (a value on a bound falls in it), +Inf, counts, sum.
    #[test]
    fn encodes_as_prometheus_clients_histogram() {
        let bounds = [0.000_05, 0.001, 0.5];
        let ours = DurationHistogram::new(&bounds);
        let theirs = Histogram::new(bounds);
        for us in [10, 50, 51, 999, 1000, 250_000, 3_000_000] {
            let d = Duration::from_micros(us);
            ours.observe(d);
            theirs.observe(d.as_secs_f64());
        }
        assert_eq!(text(ours.clone()), text(theirs));
        let t = text(ours);
        assert!(t.contains(r#"t_seconds_bucket{le="0.00005"} 2"#), "{t}");
        assert!(t.contains(r#"t_seconds_bucket{le="+Inf"} 7"#), "{t}");
        assert!(t.contains("t_seconds_count 7"), "{t}");
    }

    #[test]
    fn clones_count_into_one_histogram_from_many_threads() {
        let h = DurationHistogram::new(&[0.001]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let h = h.clone();
                s.spawn(move || (0..1000).for_each(|_| h.observe(Duration::from_micros(5))));
            }
        });
        let t = text(h);
        assert!(t.contains(r#"t_seconds_bucket{le="0.001"} 4000"#), "{t}");
        assert!(t.contains("t_seconds_sum 0.02"), "{t}");
    }
}
