//! How a plan step becomes an action when a PD controller is in the loop (config `serve`:
//! `execute: pd_controller`, `tempo`, `hold_radius`): tracking the planned state (Diffuser's
//! way), as planned or faster, and arrive-and-hold, where from the plan's first step within
//! `hold_radius` of the goal the controller holds the goal at rest. The control tick and
//! `serve` both execute plans here, so the node on a robot does what the evaluation measured.

use crate::planner::Plan;

/// A PD controller on the observation's position dims.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PdExecution {
    pub position_dims: [usize; 2],
    /// A position's velocity sits this far after it: the observation is positions then as
    /// many velocities (half its size), as the node makes it from a JointState.
    pub velocity_offset: usize,
    pub kp: f64,
    pub kd: f64,
    /// Track the planned state at every step (`execute: pd_controller`); otherwise the plan's
    /// own actions run until it holds the goal.
    pub track_plan: bool,
    /// How many times faster than planned a tracked plan runs (`serve.tempo`, 1: as planned):
    /// step k tracks the planned state at plan time tempo·(k + 1), its velocity scaled alike.
    pub tempo: f64,
}

impl PdExecution {
    /// The action (unclipped) for plan step `index` from the observed state `obs`, into `out`:
    /// toward the goal at rest once the plan has arrived (`plan.hold`), toward the planned
    /// state when tracking it, else the plan's own action. `target` is scratch of the
    /// observation's size. Returns whether it holds the goal.
    pub fn action(&self, plan: &Plan, index: usize, obs: &[f64], target: &mut [f64], out: &mut [f64]) -> bool {
        let step = self.plan_step(index);
        match plan.hold.filter(|h| step >= h.from as f64) {
            Some(hold) => {
                target.fill(0.0);
                for (&d, g) in self.position_dims.iter().zip(hold.goal) {
                    target[d] = g;
                }
                self.toward(target, obs, out);
                true
            }
            None if self.track_plan => {
                self.planned_state(plan, step, target);
                self.toward(target, obs, out);
                false
            }
            None => {
                out.copy_from_slice(plan.action(index));
                false
            }
        }
    }

    /// Whether a plan of `len` steps still says what executed step `index` does: tracked
    /// faster than planned, it runs out sooner (as planned, while `index < len`).
    pub fn covers(&self, len: usize, index: usize) -> bool {
        // The tolerance keeps a tempo such as 1.2 from losing a step to rounding.
        self.plan_step(index) <= len as f64 - 1.0 + 1e-9
    }

    /// A plan must last until the next one is due: `replan_every` executed steps of a plan of
    /// `plan_len` steps, at this tempo.
    pub fn check_lasts(&self, plan_len: usize, replan_every: usize) -> Result<(), String> {
        if replan_every == 0 || self.covers(plan_len, replan_every - 1) {
            return Ok(());
        }
        Err(format!(
            "serve.tempo: a plan of {plan_len} steps tracked {} times faster than planned lasts {} steps, \
             expected at least planner.replan_every ({replan_every}): a tempo <= {} (or replan sooner)",
            self.tempo,
            (0..plan_len).take_while(|&k| self.covers(plan_len, k)).count(),
            plan_len as f64 / replan_every as f64,
        ))
    }

    /// The plan step (fractional) that executed step `index` tracks: `index` itself as
    /// planned, further on when the plan runs faster.
    fn plan_step(&self, index: usize) -> f64 {
        if self.track_plan {
            self.tempo * (index + 1) as f64 - 1.0
        } else {
            index as f64
        }
    }

    /// The planned state at plan step `step` into `target`: interpolated between the planned
    /// states around it (the last one past the plan's end), velocities times `tempo`.
    fn planned_state(&self, plan: &Plan, step: f64, target: &mut [f64]) {
        let step = step.clamp(0.0, plan.len().saturating_sub(1) as f64);
        let (before, frac) = (step.floor() as usize, step.fract());
        target.copy_from_slice(plan.observation(before));
        if frac > 0.0 {
            for (t, &after) in target.iter_mut().zip(plan.observation(before + 1)) {
                *t += frac * (after - *t);
            }
        }
        for &d in &self.position_dims {
            target[d + self.velocity_offset] *= self.tempo;
        }
    }

    /// `obs` carried `age_s` seconds forward at its own velocities, into `out`: a state that
    /// arrives slower than the ticks, or late, would otherwise have the PD act on where the
    /// robot was. Velocities are kept.
    pub fn predict(&self, obs: &[f64], age_s: f64, out: &mut [f64]) {
        out.copy_from_slice(obs);
        for &d in &self.position_dims {
            out[d] += obs[d + self.velocity_offset] * age_s;
        }
    }

    /// action = kp·(p* − p) + kd·(v* − v) per position dim, toward the observation `target`.
    fn toward(&self, target: &[f64], obs: &[f64], out: &mut [f64]) {
        for (a, &d) in out.iter_mut().zip(&self.position_dims) {
            let v = d + self.velocity_offset;
            *a = self.kp * (target[d] - obs[d]) + self.kd * (target[v] - obs[v]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::PlanHold;

    /// A 3-step plan on [x, y, vx, vy] moving along x at speed 1, actions [k, -k].
    fn plan() -> Plan {
        let mut p = Plan::with_capacity(3, 2, 4, 6);
        p.set_len(3);
        for k in 0..3 {
            p.action_mut(k).copy_from_slice(&[k as f64, -(k as f64)]);
            p.observation_mut(k).copy_from_slice(&[k as f64 + 1.0, 0.0, 1.0, 0.0]);
        }
        p
    }

    /// D4RL's gains on [x, y, vx, vy].
    fn pd(track_plan: bool) -> PdExecution {
        PdExecution {
            position_dims: [0, 1],
            velocity_offset: 2,
            kp: 10.0,
            kd: 4.0,
            track_plan,
            tempo: 1.0,
        }
    }

    #[test]
    fn the_plan_runs_until_it_arrives_then_the_goal_is_held_at_rest() {
        let pd = pd(false);
        let mut p = plan();
        let goal = [3.0, 0.0];
        p.hold = PlanHold::at_arrival(&p, [0, 1], goal, 0.5);
        assert_eq!(p.hold, Some(PlanHold { from: 2, goal }));
        assert_eq!(PlanHold::at_arrival(&p, [0, 1], [9.0, 9.0], 0.5), None);
        let (mut target, mut out) = ([0.0; 4], [0.0; 2]);
        let obs = [2.5, 0.2, 0.5, -0.1];
        assert!(!pd.action(&p, 1, &obs, &mut target, &mut out));
        assert_eq!(out, [1.0, -1.0], "the plan's own action");
        assert!(pd.action(&p, 2, &obs, &mut target, &mut out));
        let expected = [10.0 * 0.5 - 4.0 * 0.5, 10.0 * -0.2 + 4.0 * 0.1];
        assert!(out.iter().zip(expected).all(|(a, e)| (a - e).abs() < 1e-12), "{out:?}");
    }

    #[test]
    fn tracking_follows_the_planned_state() {
        let pd = pd(true);
        let (mut target, mut out) = ([0.0; 4], [0.0; 2]);
        assert!(!pd.action(&plan(), 0, &[0.5, 0.1, 0.0, 0.0], &mut target, &mut out));
        let expected = [10.0 * 0.5 + 4.0 * 1.0, 10.0 * -0.1];
        assert!(out.iter().zip(expected).all(|(a, e)| (a - e).abs() < 1e-12), "{out:?}");
    }

    #[test]
    fn a_faster_tempo_tracks_a_later_planned_state_at_a_scaled_velocity() {
        let pd = PdExecution { tempo: 1.5, ..pd(true) };
        let (mut target, mut out) = ([0.0; 4], [0.0; 2]);
        let obs = [0.5, 0.1, 0.0, 0.0];
        // Step 0 tracks plan time 1.5: halfway between planned states 0 and 1 (x 1.5), at 1.5× their speed.
        assert!(!pd.action(&plan(), 0, &obs, &mut target, &mut out));
        let expected = [10.0 * 1.0 + 4.0 * 1.5, 10.0 * -0.1];
        assert!(out.iter().zip(expected).all(|(a, e)| (a - e).abs() < 1e-12), "{out:?}");
        // Step 3 would be plan time 6, past the 3-step plan: its last state.
        pd.action(&plan(), 3, &obs, &mut target, &mut out);
        assert_eq!(target, [3.0, 0.0, 1.5, 0.0]);
    }

    #[test]
    fn a_faster_tempo_runs_out_of_plan_sooner() {
        let as_planned = pd(true);
        assert!((0..3).all(|k| as_planned.covers(3, k)) && !as_planned.covers(3, 3));
        assert!(!pd(false).covers(3, 3), "the plan's own actions run out as planned");
        // 1.5 times faster: steps 0 and 1 track plan times 0.5 and 2; step 2 would be 3.5.
        let faster = PdExecution {
            tempo: 1.5,
            ..as_planned
        };
        assert!(faster.covers(3, 1) && !faster.covers(3, 2));
        assert!(!faster.covers(0, 0), "an empty plan covers nothing");
        // Half as fast, it lasts twice as long: step 5 tracks plan time 2.
        let slower = PdExecution {
            tempo: 0.5,
            ..as_planned
        };
        assert!(slower.covers(3, 5) && !slower.covers(3, 6));
        // Rounding does not cost a step: 1.2 × 500 is the plan's 600th step.
        let tempo_1_2 = PdExecution {
            tempo: 1.2,
            ..as_planned
        };
        assert!(tempo_1_2.covers(600, 499) && !tempo_1_2.covers(600, 500));
        assert_eq!(faster.check_lasts(3, 2), Ok(()));
        assert_eq!(
            faster.check_lasts(3, 3).unwrap_err(),
            "serve.tempo: a plan of 3 steps tracked 1.5 times faster than planned lasts 2 steps, \
             expected at least planner.replan_every (3): a tempo <= 1 (or replan sooner)"
        );
    }

    #[test]
    fn a_faster_tempo_reaches_the_hold_sooner() {
        let as_planned = pd(true);
        let faster = PdExecution {
            tempo: 2.0,
            ..as_planned
        };
        let mut p = plan();
        p.hold = Some(PlanHold {
            from: 2,
            goal: [3.0, 0.0],
        });
        let (mut target, mut out) = ([0.0; 4], [0.0; 2]);
        let obs = [2.5, 0.0, 0.0, 0.0];
        assert!(
            !faster.action(&p, 0, &obs, &mut target, &mut out),
            "plan time 1 is before the hold"
        );
        assert!(
            faster.action(&p, 1, &obs, &mut target, &mut out),
            "plan time 3 is past it"
        );
        assert!(
            !as_planned.action(&p, 1, &obs, &mut target, &mut out),
            "as planned, step 1 is before it"
        );
    }

    #[test]
    fn a_state_is_carried_forward_at_its_velocity() {
        let mut out = [0.0; 4];
        pd(false).predict(&[1.0, 2.0, 0.5, -1.0], 0.1, &mut out);
        assert_eq!(out, [1.05, 1.9, 0.5, -1.0]);
        pd(false).predict(&[1.0, 2.0, 0.5, -1.0], 0.0, &mut out);
        assert_eq!(out, [1.0, 2.0, 0.5, -1.0], "a fresh state is used as it is");
    }

    #[test]
    fn velocities_are_read_half_an_observation_after_their_positions() {
        // [x, y, z, vx, vy, vz]: a 3-joint state's observation; the PD acts on x and y.
        let pd = PdExecution {
            velocity_offset: 3,
            ..pd(false)
        };
        let mut p = Plan::with_capacity(1, 2, 6, 8);
        p.set_len(1);
        p.hold = Some(PlanHold {
            from: 0,
            goal: [1.0, 1.0],
        });
        let (mut target, mut out) = ([0.0; 6], [0.0; 2]);
        assert!(pd.action(&p, 0, &[1.0, 1.0, 5.0, 0.5, -0.5, 9.0], &mut target, &mut out));
        assert_eq!(out, [-4.0 * 0.5, 4.0 * 0.5], "damps vx and vy, not z and vx");
    }
}
