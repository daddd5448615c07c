//! One control tick, as pure logic over time given as an argument: choose the plan action
//! meant for now (or a PD controller's on it), check every input is fresh and every value
//! finite, fall back to hold or stop otherwise, and pass the result through the safety
//! filter. Every tick yields an action and a report of what it did. No allocation, no locks,
//! no I/O.

use crate::config::Fallback;
use crate::frames::clock_reset;
use crate::planner::Plan;

use super::execute::PdExecution;
use super::safety::{Safety, SafetyEvents};
use super::state::StateSample;

/// Why a tick could not publish the plan's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// No plan has arrived yet.
    NoPlan = 0,
    /// The plan's last action is in the past (the watchdog: no fresh plan in time).
    PlanExhausted = 1,
    /// The newest camera frame is older than the camera timeout.
    CameraStale = 2,
    /// The newest robot state is older than the state timeout.
    StateStale = 3,
    /// The plan's action has NaN or Inf.
    NonFinite = 4,
    /// The plan's first action is older than `safety.max_plan_age_s`: the planner has not
    /// delivered a newer plan in time (hung or failing), so the old one is not run open loop.
    PlanTooOld = 5,
    /// A plan is stamped ahead of the clock: the clock went back (a simulator reset, a clock
    /// step), so its times no longer say which action is due. It is dropped.
    ClockWentBack = 6,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::NoPlan,
        Fault::PlanExhausted,
        Fault::CameraStale,
        Fault::StateStale,
        Fault::NonFinite,
        Fault::PlanTooOld,
        Fault::ClockWentBack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::NoPlan => "no_plan",
            Fault::PlanExhausted => "plan_exhausted",
            Fault::CameraStale => "camera_stale",
            Fault::StateStale => "state_stale",
            Fault::NonFinite => "non_finite_action",
            Fault::PlanTooOld => "plan_too_old",
            Fault::ClockWentBack => "clock_went_back",
        }
    }
}

/// A set of faults (bit i = Fault with discriminant i).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults(u8);

impl Faults {
    pub fn insert(&mut self, f: Fault) {
        self.0 |= 1 << f as u8;
    }
    pub fn contains(self, f: Fault) -> bool {
        self.0 & (1 << f as u8) != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Fault> {
        Fault::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

/// Where the published action came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Plan,
    Hold,
    Stop,
    /// Nothing to publish: actions are position targets (`control.measured_action`) and no
    /// robot state has said where the robot is yet. Sinks publish nothing; the robot's own
    /// controller keeps it where it is.
    Waiting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub now_ns: i64,
    pub source: Source,
    pub faults: Faults,
    /// Index of the plan action used (Source::Plan only).
    pub plan_index: Option<usize>,
    pub safety: SafetyEvents,
    /// Plan actions skipped because their time had passed.
    pub late_dropped: u64,
    /// The action held the goal at rest (arrive-and-hold, `serve.hold_radius`).
    pub goal_held: bool,
}

/// What the tick knows about its inputs' freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickInputs {
    pub now_ns: i64,
    /// Stamp of the camera frames: the stalest camera's newest (`CameraStats::stalest_stamp_ns`).
    pub frame_ns: Option<i64>,
    /// Stamp of the newest robot state, if any.
    pub state_ns: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlParams {
    pub fallback: Fallback,
    pub stop_action: Vec<f64>,
    pub camera_required: bool,
    pub camera_timeout_ns: i64,
    pub state_timeout_ns: i64,
    /// A plan whose first action is older than this is not executed (None: until its end).
    pub max_plan_age_ns: Option<i64>,
    /// Holding longer than this without a plan action publishes the stop action instead.
    pub hold_timeout_ns: Option<i64>,
    /// For position-target actions, the state position measuring each action dimension:
    /// the held action starts where the robot is, and fallbacks are rate-limited too. Empty:
    /// actions are not positions (forces, velocities).
    pub measured_action: Vec<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub ticks: u64,
    pub faults: [u64; Fault::ALL.len()],
    pub hold: u64,
    pub stop: u64,
    pub waiting: u64,
    pub clipped: u64,
    pub rate_limited: u64,
    pub late_dropped: u64,
    pub plans_installed: u64,
    /// Ticks whose action held the goal at rest (arrive-and-hold, `serve.hold_radius`).
    pub goal_held: u64,
}

pub struct ControlCore {
    params: ControlParams,
    safety: Safety,
    current: Option<Box<Plan>>,
    pending: Option<Box<Plan>>,
    /// Last plan index a tick reached in `current` (published or not).
    last_index: Option<usize>,
    last_output: Vec<f64>,
    /// Whether `last_output` says where the robot should be: always for actions that are not
    /// positions (it starts as the stop action); for position targets, from the first fresh
    /// state, and again after the clock goes back (a simulator reset moves the robot).
    seeded: bool,
    /// Position targets: the latest state's positions as an action, and its stamp.
    measured: Option<Vec<f64>>,
    measured_ns: Option<i64>,
    /// After the clock went back: the newest state stamp then, on the old clock. That state is
    /// the robot before the reset and must not seed, while the new clock is short of it.
    pre_reset_stamp_ns: Option<i64>,
    /// When the previous tick ran: the rate limit allows as much change as time has passed.
    last_tick_ns: Option<i64>,
    /// Since when the ticks have held without a plan action (for `hold_timeout_ns`).
    holding_since_ns: Option<i64>,
    /// A PD controller in the loop (`with_execution`), with the latest state as an observation
    /// and scratch for its target and action.
    pd: Option<PdLoop>,
    counters: Counters,
}

struct PdLoop {
    execution: PdExecution,
    /// The latest state as an observation, and its stamp.
    observation: Vec<f64>,
    observed_ns: Option<i64>,
    /// That state carried forward to the tick's time: what the controller acts on.
    predicted: Vec<f64>,
    target: Vec<f64>,
    action: Vec<f64>,
}

/// What a tick at plan step `index` would send: the PD controller's action (computed for this
/// tick) where one acts on the plan, else the plan's own.
fn executed<'a>(pd: Option<&'a PdLoop>, plan: &'a Plan, index: usize) -> &'a [f64] {
    pd.map_or(plan.action(index), |pd| &pd.action)
}

/// Whether an input stamped `stamp_ns` (None: none yet) is stale at `now_ns`. A stamp further
/// in the future than the timeout is as untrustworthy as an old one (a clock ahead of ours, a
/// reset sim time): it must not keep a dead input looking fresh.
pub fn input_stale(now_ns: i64, stamp_ns: Option<i64>, timeout_ns: i64) -> bool {
    stamp_ns.is_none_or(|s| (now_ns - s).abs() > timeout_ns)
}

/// Plans a tick no longer needs, for recycling: at most a replaced current plan and a
/// dropped pending one.
pub type Retired = [Option<Box<Plan>>; 2];

impl ControlCore {
    pub fn new(params: ControlParams, safety: Safety) -> Self {
        let mut last_output = params.stop_action.clone();
        safety.clip(&params.stop_action, &mut last_output);
        let positions = !params.measured_action.is_empty();
        Self {
            seeded: !positions,
            measured: positions.then(|| vec![0.0; last_output.len()]),
            measured_ns: None,
            pre_reset_stamp_ns: None,
            params,
            safety,
            current: None,
            pending: None,
            last_index: None,
            last_output,
            last_tick_ns: None,
            holding_since_ns: None,
            pd: None,
            counters: Counters::default(),
        }
    }

    /// Run the plans through a PD controller (`serve.execute: pd_controller`, or arrive-and-
    /// hold with `serve.hold_radius`) on the latest state, an observation of
    /// `observation_dim` values (`observe_state`), carried forward to each tick's time at its
    /// velocities.
    pub fn with_execution(mut self, execution: PdExecution, observation_dim: usize) -> Self {
        self.pd = Some(PdLoop {
            execution,
            observation: vec![0.0; observation_dim],
            observed_ns: None,
            predicted: vec![0.0; observation_dim],
            target: vec![0.0; observation_dim],
            action: vec![0.0; self.last_output.len()],
        });
        self
    }

    /// The latest robot state: seeds position targets (`observe_positions`) and is what a PD
    /// controller in the loop acts on.
    pub fn observe_state(&mut self, state: &StateSample) {
        self.observe_positions(state.stamp_ns, &state.position[..state.joints]);
        if let Some(pd) = &mut self.pd {
            state.observation(&mut pd.observation);
            pd.observed_ns = Some(state.stamp_ns);
        }
    }

    /// The robot's latest positions (its state's, in `topics.state_joints` order), stamped
    /// `stamp_ns`. For position targets, the first fresh one seeds the held action, so that the
    /// robot stays where it is until a plan moves it, and the plan's first action is
    /// rate-limited from there. Ignored otherwise, and while seeded.
    pub fn observe_positions(&mut self, stamp_ns: i64, positions: &[f64]) {
        if self.seeded || self.measured_ns == Some(stamp_ns) {
            return;
        }
        let Some(measured) = self.measured.as_mut() else { return };
        if self.params.measured_action.iter().any(|&j| j >= positions.len()) {
            return;
        }
        for (m, &j) in measured.iter_mut().zip(&self.params.measured_action) {
            *m = positions[j];
        }
        self.measured_ns = Some(stamp_ns);
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn current_plan(&self) -> Option<&Plan> {
        self.current.as_deref()
    }

    /// Queue a new plan; it takes over once its first action is due. Returns a plan that is
    /// no longer needed, for recycling.
    pub fn install(&mut self, plan: Box<Plan>) -> Option<Box<Plan>> {
        self.counters.plans_installed += 1;
        self.pending.replace(plan)
    }

    /// One tick: writes the action to publish into `out` (action_dim values). Returns the
    /// plans retired this tick, for recycling.
    pub fn tick(&mut self, inputs: TickInputs, out: &mut [f64]) -> (TickReport, Retired) {
        let now = inputs.now_ns;
        let mut retired: Retired = [None, None];
        let mut faults = Faults::default();
        // Plans are stamped when planning starts, so never after the clock's now; one a step
        // ahead of it was made before the clock went back.
        let ahead = |p: &Plan| p.t0_ns > now + p.dt_ns;
        if self.current.as_deref().is_some_and(ahead) {
            retired[0] = self.current.take();
            faults.insert(Fault::ClockWentBack);
        }
        if self.pending.as_deref().is_some_and(ahead) {
            retired[1] = self.pending.take();
            faults.insert(Fault::ClockWentBack);
        }
        // A plan from before, or a tick a clock reset ago (the state intake's measure).
        let went_back = faults.contains(Fault::ClockWentBack) || self.last_tick_ns.is_some_and(|t| clock_reset(t, now));
        if went_back && self.measured.is_some() {
            // A reset simulator puts the robot elsewhere: hold where its next state says.
            (self.seeded, self.measured_ns) = (false, None);
            self.pre_reset_stamp_ns = self.pre_reset_stamp_ns.or(inputs.state_ns);
        }
        if self.pending.as_ref().is_some_and(|p| p.t0_ns <= now) {
            // The slot is empty when the current plan was just dropped.
            if let Some(old) = std::mem::replace(&mut self.current, self.pending.take()) {
                retired[0] = Some(old);
            }
            self.last_index = None;
        }
        let mut late_dropped = 0;
        let mut chosen = None;
        let mut holds_goal = false;
        match self.current.as_deref() {
            None if faults.is_empty() => faults.insert(Fault::NoPlan),
            None => {}
            Some(plan) => {
                let age = now - plan.t0_ns;
                let index = (age.max(0) / plan.dt_ns) as usize;
                if self.params.max_plan_age_ns.is_some_and(|max| age > max) {
                    faults.insert(Fault::PlanTooOld);
                } else if !self
                    .pd
                    .as_ref()
                    .map_or(index < plan.len(), |pd| pd.execution.covers(plan.len(), index))
                {
                    faults.insert(Fault::PlanExhausted);
                } else {
                    let next_unused = self.last_index.map_or(0, |i| i + 1);
                    late_dropped = index.saturating_sub(next_unused) as u64;
                    self.last_index = Some(index);
                    if let Some(pd) = &mut self.pd {
                        // No further than a state stays fresh; a stamp ahead of the clock is
                        // used as it is.
                        let age_ns = pd
                            .observed_ns
                            .map_or(0, |t| (now - t).clamp(0, self.params.state_timeout_ns));
                        pd.execution
                            .predict(&pd.observation, age_ns as f64 / 1e9, &mut pd.predicted);
                        holds_goal = pd
                            .execution
                            .action(plan, index, &pd.predicted, &mut pd.target, &mut pd.action);
                    }
                    if executed(self.pd.as_ref(), plan, index).iter().all(|v| v.is_finite()) {
                        chosen = Some(index);
                    } else {
                        faults.insert(Fault::NonFinite);
                    }
                }
            }
        }
        let stale = |stamp: Option<i64>, timeout: i64| input_stale(now, stamp, timeout);
        let before_reset = |t: i64| self.pre_reset_stamp_ns.is_some_and(|r| t >= r && now < r);
        if !self.seeded
            && !stale(self.measured_ns, self.params.state_timeout_ns)
            && self.measured_ns.is_some_and(|t| !before_reset(t))
        {
            let measured = self.measured.as_deref().expect("unseeded only for position targets");
            self.safety.clip(measured, &mut self.last_output);
            self.seeded = true;
            self.pre_reset_stamp_ns = None;
        }
        if self.params.camera_required && stale(inputs.frame_ns, self.params.camera_timeout_ns) {
            faults.insert(Fault::CameraStale);
        }
        if stale(inputs.state_ns, self.params.state_timeout_ns) {
            faults.insert(Fault::StateStale);
        }

        let mut safety = SafetyEvents::default();
        let elapsed_s = self
            .last_tick_ns
            .map_or(self.safety.period_s(), |t| (now - t) as f64 / 1e9);
        let source = match chosen {
            // Position targets with no state yet: no action is known to be safe.
            _ if !self.seeded => {
                out.copy_from_slice(&self.last_output);
                Source::Waiting
            }
            Some(index) if faults.is_empty() => {
                let plan = self.current.as_deref().expect("chosen implies a plan");
                let action = executed(self.pd.as_ref(), plan, index);
                safety = self.safety.filter(action, &self.last_output, elapsed_s, out);
                Source::Plan
            }
            _ => {
                // A hold that began after now began before the clock went back: it starts now.
                let since = match self.holding_since_ns {
                    Some(since) if since <= now => since,
                    _ => *self.holding_since_ns.insert(now),
                };
                let held_too_long = self.params.hold_timeout_ns.is_some_and(|t| now - since > t);
                match self.params.fallback {
                    Fallback::Hold if !held_too_long => {
                        out.copy_from_slice(&self.last_output);
                        Source::Hold
                    }
                    // A position target moves the robot: it goes to the stop action no faster
                    // than any other.
                    _ if self.measured.is_some() => {
                        safety = self
                            .safety
                            .filter(&self.params.stop_action, &self.last_output, elapsed_s, out);
                        Source::Stop
                    }
                    _ => {
                        self.safety.clip(&self.params.stop_action, out);
                        Source::Stop
                    }
                }
            }
        };
        if source == Source::Plan {
            self.holding_since_ns = None;
        }
        self.last_output.copy_from_slice(out);
        self.last_tick_ns = Some(now);

        let c = &mut self.counters;
        c.ticks += 1;
        for f in faults.iter() {
            c.faults[f as usize] += 1;
        }
        c.hold += u64::from(source == Source::Hold);
        c.stop += u64::from(source == Source::Stop);
        c.waiting += u64::from(source == Source::Waiting);
        c.clipped += u64::from(safety.clipped);
        c.rate_limited += u64::from(safety.rate_limited);
        let goal_held = holds_goal && source == Source::Plan;
        c.goal_held += u64::from(goal_held);
        c.late_dropped += late_dropped;
        let report = TickReport {
            now_ns: now,
            source,
            faults,
            plan_index: chosen.filter(|_| source == Source::Plan),
            safety,
            late_dropped,
            goal_held,
        };
        (report, retired)
    }

    /// The action when the node stops, so that the robot's controller is not left with the
    /// last plan's command: forces and velocities go to the stop action at once; position
    /// targets hold where they are (Waiting, nothing to send, before a state seeded them).
    pub fn shutdown(&mut self, now_ns: i64, out: &mut [f64]) -> TickReport {
        let source = if !self.seeded {
            out.copy_from_slice(&self.last_output);
            Source::Waiting
        } else if self.measured.is_some() {
            out.copy_from_slice(&self.last_output);
            Source::Hold
        } else {
            self.safety.clip(&self.params.stop_action, out);
            Source::Stop
        };
        self.last_output.copy_from_slice(out);
        TickReport {
            now_ns,
            source,
            faults: Default::default(),
            plan_index: None,
            safety: Default::default(),
            late_dropped: 0,
            goal_held: false,
        }
    }
}
