//! A plan as the control loop consumes it: actions stamped with the absolute time each is
//! meant for. Plans are preallocated and recycled between planner and control threads.

use crate::diffusion::McgReport;

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Time of `action(0)`, nanoseconds on the loop's clock.
    pub t0_ns: i64,
    /// Time between consecutive actions.
    pub dt_ns: i64,
    pub action_dim: usize,
    len: usize,
    actions: Vec<f64>,
    /// The observation each action is expected to lead to (physical units).
    pub observation_dim: usize,
    observations: Vec<f64>,
    /// The first planned token (normalized), for inspection and replay output.
    pub first_token: Vec<f32>,
    /// Planner sequence number.
    pub seq: u64,
    /// Wall time the planner took.
    pub latency_ns: u64,
    /// What Monte Carlo Guidance did to the executed tokens' guidance (`Sampler::mcg_report`).
    pub mcg: Option<McgReport>,
    /// Arrive-and-hold (`serve.hold_radius`): from which step the goal is held at rest.
    pub hold: Option<PlanHold>,
}

/// From step `from` on (the plan's first within the hold radius of the goal), the PD
/// controller holds `goal` at rest instead of executing the plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanHold {
    pub from: usize,
    pub goal: [f64; 2],
}

impl PlanHold {
    /// From the first step of `plan` whose planned position (at `position_dims`) lies within
    /// `radius` of `goal`; None when none does.
    pub fn at_arrival(plan: &Plan, position_dims: [usize; 2], goal: [f64; 2], radius: f64) -> Option<Self> {
        let [px, py] = position_dims;
        let from = (0..plan.len()).position(|k| {
            let o = plan.observation(k);
            (o[px] - goal[0]).hypot(o[py] - goal[1]) < radius
        })?;
        Some(Self { from, goal })
    }
}

impl Plan {
    pub fn with_capacity(max_actions: usize, action_dim: usize, observation_dim: usize, token_dim: usize) -> Self {
        Self {
            t0_ns: 0,
            dt_ns: 1,
            action_dim,
            len: 0,
            actions: vec![0.0; max_actions * action_dim],
            observation_dim,
            observations: vec![0.0; max_actions * observation_dim],
            first_token: vec![0.0; token_dim],
            seq: 0,
            latency_ns: 0,
            mcg: None,
            hold: None,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.actions.len() / self.action_dim
    }

    /// Set how many actions are valid (at most the capacity).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "plan of {len} actions exceeds its capacity {}",
            self.capacity()
        );
        self.len = len;
    }

    pub fn action(&self, i: usize) -> &[f64] {
        &self.actions[i * self.action_dim..(i + 1) * self.action_dim]
    }

    pub fn action_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.actions[i * self.action_dim..(i + 1) * self.action_dim]
    }

    /// The observation expected after `action(i)`.
    pub fn observation(&self, i: usize) -> &[f64] {
        &self.observations[i * self.observation_dim..(i + 1) * self.observation_dim]
    }

    pub fn observation_mut(&mut self, i: usize) -> &mut [f64] {
        &mut self.observations[i * self.observation_dim..(i + 1) * self.observation_dim]
    }

    /// The time `action(i)` is meant for.
    pub fn time_of(&self, i: usize) -> i64 {
        self.t0_ns + i as i64 * self.dt_ns
    }
}
