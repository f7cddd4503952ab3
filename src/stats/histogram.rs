//! Fixed-size log-linear latency histograms (HdrHistogram-like): exact below 16 ns, then 16 sub-buckets per
//! power of two, so any percentile is reported within 6.25 % of the true value, up to 2^40 ns (about 18
//! minutes). Recording is one relaxed atomic add; snapshots are copied into caller-owned buffers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Largest exponent tracked; larger values land in the last bucket.
const MAX_EXP: u32 = 40;
/// Number of buckets of a [`LatencyHistogram`].
pub const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS + 1) as usize * SUB;

/// Bucket index of a value in nanoseconds.
pub(super) const fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = ((ns >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// Largest value (inclusive) that falls into bucket `index`.
pub(super) const fn bucket_upper(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let exp = (index - SUB) / SUB + SUB_BITS as usize;
    let sub = ((index - SUB) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS as usize);
    (1u64 << exp) + (sub + 1) * width - 1
}

/// A fixed-size latency histogram with a single writer and any number of readers.
///
/// `record` is wait-free (relaxed atomics only); a reader takes a [`HistogramSnapshot`] whenever it likes.
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    /// Records one value in nanoseconds. Never allocates.
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    /// Records a [`Duration`] (saturating at `u64::MAX` ns).
    pub fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Copies the current counts into `out` (overwriting it). Never allocates.
    pub fn snapshot_into(&self, out: &mut HistogramSnapshot) {
        for (o, b) in out.buckets.iter_mut().zip(self.buckets.iter()) {
            *o = b.load(Relaxed);
        }
        out.count = self.count.load(Relaxed);
        out.sum_ns = self.sum_ns.load(Relaxed);
        out.max_ns = self.max_ns.load(Relaxed);
    }
}

/// A plain copy of a [`LatencyHistogram`], to compute percentiles and differences from.
#[derive(Clone)]
pub struct HistogramSnapshot {
    buckets: [u64; BUCKETS],
    /// Number of values recorded.
    pub count: u64,
    /// Sum of the values, in nanoseconds.
    pub sum_ns: u64,
    /// Largest value recorded (over the histogram's whole life, also in a difference).
    pub max_ns: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            buckets: [0; BUCKETS],
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl std::fmt::Debug for HistogramSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramSnapshot")
            .field("count", &self.count)
            .field("p50_ns", &self.percentile(0.5))
            .field("max_ns", &self.max_ns)
            .finish()
    }
}

impl HistogramSnapshot {
    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding it, capped at the maximum.
    /// Zero when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = bucket_upper(i);
                return if self.max_ns > 0 {
                    upper.min(self.max_ns)
                } else {
                    upper
                };
            }
        }
        self.max_ns
    }

    /// Mean in nanoseconds; zero when empty.
    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64
        }
    }

    /// Adds `other`'s counts into `self` (to aggregate cameras).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// `self = later - earlier`: the values recorded between two snapshots of the same histogram.
    /// The maximum stays the later one's (a histogram does not keep a windowed maximum).
    pub fn set_difference(&mut self, later: &HistogramSnapshot, earlier: &HistogramSnapshot) {
        for ((d, l), e) in self
            .buckets
            .iter_mut()
            .zip(later.buckets.iter())
            .zip(earlier.buckets.iter())
        {
            *d = l.saturating_sub(*e);
        }
        self.count = later.count.saturating_sub(earlier.count);
        self.sum_ns = later.sum_ns.saturating_sub(earlier.sum_ns);
        self.max_ns = later.max_ns;
    }

    /// The non-empty buckets in increasing order, each as (lowest value, highest value, count), in
    /// nanoseconds: the histogram's shape, for plots. Allocates nothing (an iterator over the snapshot).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| {
                let lowest = if i == 0 { 0 } else { bucket_upper(i - 1) + 1 };
                (lowest, bucket_upper(i), n)
            })
    }

    /// Resets to empty.
    pub fn clear(&mut self) {
        self.buckets.fill(0);
        self.count = 0;
        self.sum_ns = 0;
        self.max_ns = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contain_their_values() {
        let mut last_upper = None;
        for i in 0..BUCKETS {
            let upper = bucket_upper(i);
            if let Some(prev) = last_upper {
                assert!(upper > prev, "bucket {i}: {upper} <= {prev}");
                assert_eq!(bucket_of(prev + 1), i, "first value of bucket {i}");
            }
            assert_eq!(bucket_of(upper), i, "upper edge of bucket {i}");
            last_upper = Some(upper);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_bounded() {
        let mut v = 17u64;
        while v < (1 << 39) {
            let upper = bucket_upper(bucket_of(v));
            assert!(upper >= v);
            assert!(
                (upper - v) as f64 / v as f64 <= 1.0 / SUB as f64,
                "value {v} reported as {upper}"
            );
            v = v * 13 / 10 + 1;
        }
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let h = LatencyHistogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let mut s = HistogramSnapshot::default();
        h.snapshot_into(&mut s);
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max_ns, 10_000_000);
        for (q, expect) in [(0.5, 5e6), (0.9, 9e6), (0.99, 9.9e6), (0.999, 9.99e6)] {
            let got = s.percentile(q) as f64;
            assert!(
                got >= expect && got <= expect * 1.0625 + 1000.0,
                "p{q}: {got} vs {expect}"
            );
        }
        assert_eq!(s.percentile(1.0), 10_000_000);
        assert!((s.mean_ns() - 5_000_500.0).abs() < 1.0);
    }

    #[test]
    fn buckets_list_the_shape() {
        let h = LatencyHistogram::new();
        for v in [3u64, 3, 1_000, 1_010, 5_000_000] {
            h.record(v);
        }
        let mut s = HistogramSnapshot::default();
        h.snapshot_into(&mut s);
        let b: Vec<_> = s.buckets().collect();
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!(b[0], (3, 3, 2));
        assert_eq!(b[1].2, 2);
        assert!(b[1].0 <= 1_000 && b[1].1 >= 1_010, "{b:?}");
        assert!(
            b[2].0 <= 5_000_000 && b[2].1 >= 5_000_000 && b[2].2 == 1,
            "{b:?}"
        );
        assert!(b.windows(2).all(|w| w[0].1 < w[1].0));
        assert_eq!(b.iter().map(|x| x.2).sum::<u64>(), s.count);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let s = HistogramSnapshot::default();
        assert_eq!(s.percentile(0.99), 0);
        assert_eq!(s.mean_ns(), 0.0);
    }

    #[test]
    fn difference_isolates_a_window() {
        let h = LatencyHistogram::new();
        for _ in 0..100 {
            h.record(1_000);
        }
        let mut before = HistogramSnapshot::default();
        h.snapshot_into(&mut before);
        for _ in 0..10 {
            h.record(1_000_000);
        }
        let mut after = HistogramSnapshot::default();
        h.snapshot_into(&mut after);
        let mut window = HistogramSnapshot::default();
        window.set_difference(&after, &before);
        assert_eq!(window.count, 10);
        assert_eq!(window.percentile(0.5), 1_000_000);
        assert_eq!(after.percentile(0.5), bucket_upper(bucket_of(1_000)));
    }
}
