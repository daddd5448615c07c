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
    /// Largest change per tick (max_rate · period).
    max_step: Vec<f64>,
}

impl Safety {
    pub fn new(min: Vec<f64>, max: Vec<f64>, max_rate_per_s: &[f64], period_s: f64) -> Self {
        let max_step = max_rate_per_s.iter().map(|r| r * period_s).collect();
        Self { min, max, max_step }
    }

    /// Clip `proposed` to the limits and to within max_step of `previous`, into `out`.
    pub fn filter(&self, proposed: &[f64], previous: &[f64], out: &mut [f64]) -> SafetyEvents {
        let mut ev = SafetyEvents::default();
        for i in 0..out.len() {
            let clipped = proposed[i].clamp(self.min[i], self.max[i]);
            ev.clipped |= clipped != proposed[i];
            let limited = clipped.clamp(previous[i] - self.max_step[i], previous[i] + self.max_step[i]);
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
        let ev = s.filter(&[5.0, 0.05], &[0.0, 0.0], &mut out);
        assert_eq!(out, [0.1, 0.05]);
        assert_eq!(
            ev,
            SafetyEvents {
                clipped: true,
                rate_limited: true
            }
        );
        let ev = s.filter(&[0.95, 0.0], &[0.9, 0.0], &mut out);
        assert_eq!(out, [0.95, 0.0]);
        assert_eq!(ev, SafetyEvents::default());
    }
}
