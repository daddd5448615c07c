//! The last filter before an action leaves the node: clip to limits, limit the rate of change.

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SafetyEvents {
    pub clipped: bool,
    pub rate_limited: bool,
}

#[derive(Debug, Clone)]
pub struct Safety {
    min: Vec<f64>,
    max: Vec<f64>,
    max_rate_per_s: Vec<f64>,
    /// The control period: the longest interval one step may cover.
    period_s: f64,
}

impl Safety {
    pub fn new(min: Vec<f64>, max: Vec<f64>, max_rate_per_s: &[f64], period_s: f64) -> Self {
        Self {
            min,
            max,
            max_rate_per_s: max_rate_per_s.to_vec(),
            period_s,
        }
    }

    pub fn period_s(&self) -> f64 {
        self.period_s
    }

    /// A tick's filter: `over` with the time since the previous tick capped at two periods, so
    /// that after a stall the action moves two steps at most, not the whole stall's worth,
    /// ticks that run back to back (elapsed ≈ 0) barely move, and a tick up to a period late
    /// still gets the time that passed.
    pub fn filter(&self, proposed: &[f64], previous: &[f64], elapsed_s: f64, out: &mut [f64]) -> SafetyEvents {
        self.over(proposed, previous, elapsed_s.min(2.0 * self.period_s), out)
    }

    /// Clip `proposed` to the limits and to within max_rate · `dt_s` of `previous` (reached
    /// `dt_s` earlier; negative counts as 0), into `out`.
    pub fn over(&self, proposed: &[f64], previous: &[f64], dt_s: f64, out: &mut [f64]) -> SafetyEvents {
        let dt = dt_s.max(0.0);
        let mut ev = SafetyEvents::default();
        for i in 0..out.len() {
            let clipped = proposed[i].clamp(self.min[i], self.max[i]);
            ev.clipped |= clipped != proposed[i];
            // No time, no movement, also for an unlimited (infinite) rate: inf · 0 is NaN.
            let step = if dt > 0.0 { self.max_rate_per_s[i] * dt } else { 0.0 };
            let limited = clipped.clamp(previous[i] - step, previous[i] + step);
            ev.rate_limited |= limited != clipped;
            out[i] = limited;
        }
        ev
    }

    /// Clip only (used for the stop action, which must not be slowed down).
    pub fn clip(&self, proposed: &[f64], out: &mut [f64]) {
        for i in 0..out.len() {
            out[i] = proposed[i].clamp(self.min[i], self.max[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_then_rate_limits() {
        let s = Safety::new(vec![-1.0, -1.0], vec![1.0, 1.0], &[10.0, 10.0], 0.01);
        let mut out = [0.0; 2];
        let ev = s.filter(&[5.0, 0.05], &[0.0, 0.0], 0.01, &mut out);
        assert_eq!(out, [0.1, 0.05]);
        assert_eq!(
            ev,
            SafetyEvents {
                clipped: true,
                rate_limited: true
            }
        );
        let ev = s.filter(&[0.95, 0.0], &[0.9, 0.0], 0.01, &mut out);
        assert_eq!(out, [0.95, 0.0]);
        assert_eq!(ev, SafetyEvents::default());
    }

    #[test]
    fn the_rate_limit_follows_the_time_elapsed_capped_at_two_periods() {
        let s = Safety::new(vec![-1.0], vec![1.0], &[10.0], 0.01);
        let mut out = [0.0];
        // Half a period: half a step; a tick a period late: two; a stall of ten periods: two.
        s.filter(&[1.0], &[0.0], 0.005, &mut out);
        assert!((out[0] - 0.05).abs() < 1e-12);
        s.filter(&[1.0], &[0.0], 0.02, &mut out);
        assert!((out[0] - 0.2).abs() < 1e-12);
        s.filter(&[1.0], &[0.0], 0.1, &mut out);
        assert!((out[0] - 0.2).abs() < 1e-12);
        // Ticks back to back (or a clock that went backwards) do not move the action.
        assert!(s.filter(&[1.0], &[0.0], 0.0, &mut out).rate_limited && out[0] == 0.0);
        assert!(s.filter(&[1.0], &[0.0], -1.0, &mut out).rate_limited && out[0] == 0.0);
        // An unlimited rate moves freely, but not in no time.
        let free = Safety::new(vec![-1.0], vec![1.0], &[f64::INFINITY], 0.01);
        free.filter(&[1.0], &[0.0], 0.01, &mut out);
        assert_eq!(out[0], 1.0);
        free.filter(&[1.0], &[0.0], 0.0, &mut out);
        assert_eq!(out[0], 0.0);
    }
}
