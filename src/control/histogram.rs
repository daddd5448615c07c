//! Latency distribution with fixed log-spaced buckets: recording never allocates, percentiles
//! are exact to within a bucket (~4 % wide), the maximum is exact.

const BUCKETS: usize = 640;
/// Bucket i covers [MIN_NS·G^i, MIN_NS·G^(i+1)): 100 ns to ~2.2 h with G = 1.04.
const MIN_NS: f64 = 100.0;
const GROWTH: f64 = 1.04;

#[derive(Debug)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    max_ns: u64,
    sum_ns: u128,
}

impl Clone for Histogram {
    fn clone(&self) -> Self {
        Self {
            counts: self.counts.clone(),
            count: self.count,
            max_ns: self.max_ns,
            sum_ns: self.sum_ns,
        }
    }

    /// Copies in place: the control tick shares its histograms this way without allocating.
    fn clone_from(&mut self, source: &Self) {
        self.counts.copy_from_slice(&source.counts[..]);
        self.count = source.count;
        self.max_ns = source.max_ns;
        self.sum_ns = source.sum_ns;
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            max_ns: 0,
            sum_ns: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        let idx = if (ns as f64) < MIN_NS {
            0
        } else {
            ((ns as f64 / MIN_NS).ln() / GROWTH.ln()) as usize
        };
        self.counts[idx.min(BUCKETS - 1)] += 1;
        self.count += 1;
        self.max_ns = self.max_ns.max(ns);
        self.sum_ns += u128::from(ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64
        }
    }

    /// The upper edge of the bucket holding quantile `q` (0..=1), capped at the exact max.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper_edge_ns(i).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// The occupied buckets as (upper edge in ms, count), in order: enough to pool histograms
    /// recorded in several processes and take their percentiles as `quantile_ns` would (the
    /// edge capped at the pooled maximum). Allocates: for reports, not the hot path.
    pub fn buckets_ms(&self) -> Vec<(f64, u64)> {
        (self.counts.iter().enumerate())
            .filter(|&(_, &c)| c > 0)
            .map(|(i, &c)| (Self::upper_edge_ns(i) as f64 / 1e6, c))
            .collect()
    }

    fn upper_edge_ns(bucket: usize) -> u64 {
        (MIN_NS * GROWTH.powi(bucket as i32 + 1)) as u64
    }

    pub fn summary_ms(&self) -> LatencySummary {
        let ms = |ns: u64| ns as f64 / 1e6;
        LatencySummary {
            count: self.count,
            p50_ms: ms(self.quantile_ns(0.5)),
            p99_ms: ms(self.quantile_ns(0.99)),
            max_ms: ms(self.max_ns),
            mean_ms: self.mean_ns() / 1e6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        let p50 = h.quantile_ns(0.5) as f64;
        let p99 = h.quantile_ns(0.99) as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() < 0.05, "{p50}");
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.05, "{p99}");
        assert_eq!(h.max_ns(), 1_000_000);
        assert_eq!(h.count(), 1000);
        assert_eq!(Histogram::default().quantile_ns(0.5), 0);
    }

    #[test]
    fn buckets_give_back_the_percentiles() {
        let mut h = Histogram::default();
        for us in [900u64, 1000, 1000, 5000, 80_000] {
            h.record(us * 1000);
        }
        let buckets = h.buckets_ms();
        assert_eq!(buckets.iter().map(|&(_, c)| c).sum::<u64>(), 5);
        assert_eq!(buckets.len(), 4, "{buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
        // The rank rule of quantile_ns over the listed buckets: the 3rd of 5 for p50.
        assert_eq!(buckets[1].0, h.quantile_ns(0.5) as f64 / 1e6);
        assert!(Histogram::default().buckets_ms().is_empty());
    }

    #[test]
    fn minutes_long_latencies_keep_their_percentiles() {
        // A first plan that compiles a TensorRT engine, or a stalled thread.
        let mut h = Histogram::default();
        for s in [60u64, 120, 600, 3600] {
            h.record(s * 1_000_000_000);
        }
        let p50 = h.quantile_ns(0.5) as f64 / 1e9;
        assert!((p50 / 120.0 - 1.0).abs() < 0.05, "{p50}");
    }
}
