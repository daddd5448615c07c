//! How long a plan takes on the offline loop's virtual clock (`OfflineLoop::with_plan_time`):
//! one fixed time, or each plan a time drawn from measured plan latencies, so that a real-time
//! evaluation meets the spread and the tail the live planner thread meets on a machine, not
//! only its median. The measured latencies are a latency histogram's occupied buckets, as
//! `df_planner bench --config C` prints them (`plan_latency_buckets`: each bucket's upper edge
//! in ms and its count; a bucket is about 4 % wide).

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

/// The ChaCha stream the draws take, apart from the planner noise's streams of the same seed.
const DRAW_STREAM: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq)]
pub enum PlanTimes {
    /// Every plan takes this many ns.
    Fixed(i64),
    /// Each plan takes a time drawn from measured plan latencies.
    Measured(MeasuredPlanTimes),
}

/// Measured plan latencies to draw from: (cumulative count, time in ns) per bucket, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasuredPlanTimes {
    cumulative: Arc<[(u64, i64)]>,
}

impl MeasuredPlanTimes {
    /// From a histogram's occupied buckets, (upper edge in ms, count): every edge finite and
    /// > 0, every count > 0, edges increasing; `what` names the field in the messages.
    pub fn from_buckets_ms(buckets: &[(f64, u64)], what: &str) -> Result<Self, String> {
        if buckets.is_empty() {
            return Err(format!("{what}: expected at least one [ms, count] bucket, got none"));
        }
        let mut cumulative = Vec::with_capacity(buckets.len());
        let (mut total, mut last_ms) = (0u64, 0.0);
        for (i, &(ms, count)) in buckets.iter().enumerate() {
            if !(ms.is_finite() && ms > last_ms) {
                return Err(format!(
                    "{what}[{i}]: expected a finite time in ms above the bucket before ({last_ms}), got {ms}"
                ));
            }
            if count == 0 {
                return Err(format!("{what}[{i}]: expected a count > 0, got 0"));
            }
            total += count;
            last_ms = ms;
            cumulative.push((total, (ms * 1e6).round() as i64));
        }
        Ok(Self {
            cumulative: cumulative.into(),
        })
    }

    /// The buckets of `bench --config`'s JSON report (`plan_latency_buckets`).
    pub fn from_bench_report(report: &serde_json::Value) -> Result<Self, String> {
        const FIELD: &str = "plan_latency_buckets";
        let buckets = report
            .get(FIELD)
            .ok_or_else(|| format!("{FIELD}: missing; expected the JSON line `df_planner bench --config C` prints"))?;
        let buckets = Vec::<(f64, u64)>::deserialize(buckets)
            .map_err(|e| format!("{FIELD}: expected [[ms, count], ...], {e}"))?;
        Self::from_buckets_ms(&buckets, FIELD)
    }

    fn draw_ns(&self, rng: &mut ChaCha8Rng) -> i64 {
        let total = self.cumulative.last().expect("checked non-empty").0;
        let rank = rng.random_range(0..total);
        let i = self.cumulative.partition_point(|&(cum, _)| cum <= rank);
        self.cumulative[i].1
    }
}

/// The plan times of one episode: fixed, or drawn by a generator seeded with the episode's seed.
pub(super) struct PlanClock {
    times: PlanTimes,
    rng: ChaCha8Rng,
}

impl PlanClock {
    pub(super) fn new(times: PlanTimes, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(DRAW_STREAM);
        Self { times, rng }
    }

    /// How long the plan starting now takes, in ns.
    pub(super) fn next_plan_ns(&mut self) -> i64 {
        match &self.times {
            PlanTimes::Fixed(ns) => *ns,
            PlanTimes::Measured(m) => m.draw_ns(&mut self.rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn draws_follow_the_measured_counts_and_repeat_with_the_seed() {
        let m = MeasuredPlanTimes::from_buckets_ms(&[(200.0, 90), (250.0, 9), (400.0, 1)], "b").unwrap();
        let mut clock = PlanClock::new(PlanTimes::Measured(m.clone()), 7);
        let draws: Vec<i64> = (0..20_000).map(|_| clock.next_plan_ns()).collect();
        let share = |ns: i64| draws.iter().filter(|&&d| d == ns).count() as f64 / draws.len() as f64;
        assert!((share(200_000_000) - 0.90).abs() < 0.01, "{}", share(200_000_000));
        assert!((share(250_000_000) - 0.09).abs() < 0.01, "{}", share(250_000_000));
        assert!((share(400_000_000) - 0.01).abs() < 0.004, "{}", share(400_000_000));
        let mut again = PlanClock::new(PlanTimes::Measured(m.clone()), 7);
        assert!(draws.iter().all(|&d| d == again.next_plan_ns()));
        let mut other = PlanClock::new(PlanTimes::Measured(m), 8);
        assert!(draws[..100].iter().any(|&d| d != other.next_plan_ns()));
    }

    #[test]
    fn a_fixed_time_is_every_plans() {
        let mut clock = PlanClock::new(PlanTimes::Fixed(5), 0);
        assert_eq!([clock.next_plan_ns(), clock.next_plan_ns()], [5, 5]);
    }

    #[test]
    fn bad_buckets_are_refused_by_field_and_index() {
        let err = |v: serde_json::Value| MeasuredPlanTimes::from_bench_report(&v).unwrap_err();
        assert_eq!(
            err(json!({"plan_latency": {}})),
            "plan_latency_buckets: missing; expected the JSON line `df_planner bench --config C` prints"
        );
        assert_eq!(
            err(json!({"plan_latency_buckets": []})),
            "plan_latency_buckets: expected at least one [ms, count] bucket, got none"
        );
        assert_eq!(
            err(json!({"plan_latency_buckets": [[200.0, 3], [150.0, 1]]})),
            "plan_latency_buckets[1]: expected a finite time in ms above the bucket before (200), got 150"
        );
        assert_eq!(
            err(json!({"plan_latency_buckets": [[200.0, 0]]})),
            "plan_latency_buckets[0]: expected a count > 0, got 0"
        );
        assert!(err(json!({"plan_latency_buckets": [[200.0, -1]]}))
            .starts_with("plan_latency_buckets: expected [[ms, count], ...]"));
    }
}
