//! Planned against recorded: each action the robot recorded against the action replay
//! published at the latest tick at or before it, accumulated as the replay goes, so memory
//! does not grow with the bag's length.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ActionError {
    pub compared: usize,
    pub rmse: f64,
    pub max_abs: f64,
    /// RMSE of each action dimension (a gripper's open/close differs in scale from positions).
    pub rmse_per_dim: Vec<f64>,
}

#[derive(Debug, Default)]
pub(crate) struct ActionComparison {
    /// The latest published action and its tick time.
    published: Option<(i64, Vec<f64>)>,
    /// Recorded actions that a tick at their own time, still to run, may answer: the loop runs
    /// the ticks before a message, and one at the message's time after it.
    waiting: Vec<(i64, Vec<f64>)>,
    sum_sq: Vec<f64>,
    max_abs: f64,
    compared: usize,
}

impl ActionComparison {
    /// The action published at the tick at `t_ns`; ticks come in time order.
    pub(crate) fn published(&mut self, t_ns: i64, action: &[f64]) {
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.retain(|(t, recorded)| {
            let answered = *t < t_ns;
            if answered {
                self.add(recorded);
            }
            !answered
        });
        self.waiting = waiting;
        match self.published.as_mut() {
            Some((t, ours)) if ours.len() == action.len() => {
                *t = t_ns;
                ours.copy_from_slice(action);
            }
            _ => self.published = Some((t_ns, action.to_vec())),
        }
    }

    /// An action the robot recorded at `t_ns`, after the ticks before `t_ns` were published.
    pub(crate) fn recorded(&mut self, t_ns: i64, action: Vec<f64>) {
        debug_assert!(
            self.published.as_ref().is_none_or(|(t, _)| *t < t_ns),
            "a recorded action comes after the ticks before it"
        );
        self.waiting.push((t_ns, action));
    }

    /// Against the latest published action; one recorded before the first tick is not compared.
    fn add(&mut self, recorded: &[f64]) {
        let Some((_, ours)) = &self.published else { return };
        self.sum_sq.resize(self.sum_sq.len().max(recorded.len()), 0.0);
        for (i, (a, b)) in ours.iter().zip(recorded).enumerate() {
            let d = a - b;
            self.sum_sq[i] += d * d;
            self.max_abs = self.max_abs.max(d.abs());
        }
        self.compared += 1;
    }

    /// The error over every recorded action; None when none could be compared.
    pub(crate) fn finish(mut self) -> Option<ActionError> {
        for (_, recorded) in std::mem::take(&mut self.waiting) {
            self.add(&recorded);
        }
        let count = self.compared;
        (count > 0).then(|| ActionError {
            compared: count,
            rmse: (self.sum_sq.iter().sum::<f64>() / (count * self.sum_sq.len()) as f64).sqrt(),
            max_abs: self.max_abs,
            rmse_per_dim: self.sum_sq.iter().map(|s| (s / count as f64).sqrt()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_recorded_action_meets_the_latest_tick_at_or_before_it() {
        let mut c = ActionComparison::default();
        c.recorded(-5, vec![9.0]); // before any tick: not compared
        c.published(0, &[1.0]);
        c.recorded(10, vec![3.0]); // the loop has run the ticks before 10; the one at 10 comes next
        c.published(10, &[2.0]);
        c.recorded(15, vec![2.0]);
        c.published(20, &[7.0]);
        c.recorded(25, vec![8.0]); // after the last tick
        let e = c.finish().unwrap();
        // Answered by the ticks at 10 (2.0, twice) and 20 (7.0): errors 1, 0, 1.
        assert_eq!(e.compared, 3);
        assert!((e.rmse - (2.0_f64 / 3.0).sqrt()).abs() < 1e-12, "{e:?}");
        assert_eq!(e.max_abs, 1.0);
    }

    #[test]
    fn nothing_recorded_compares_nothing() {
        let mut c = ActionComparison::default();
        c.published(10, &[1.0]);
        assert!(c.finish().is_none());
    }
}
