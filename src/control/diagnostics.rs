//! What the node reports, and the output port every adapter (ROS, replay, tests) implements.

use serde::Serialize;

use crate::frames::FrameStatsSnapshot;
use crate::planner::{GoalStatus, Plan};

use super::core::{Counters, Fault, TickReport};
use super::histogram::LatencySummary;

/// Where ticks, plans and diagnostics go: r2r publishers, an MCAP file, a test recorder.
pub trait ActionSink {
    /// One per tick: the action published and what the tick did. `plan` is the plan in force.
    fn action(&mut self, report: &TickReport, action: &[f64], plan: Option<&Plan>);
    /// Each new plan.
    fn plan(&mut self, plan: &Plan);
    /// Periodically (once per second of loop time).
    fn diagnostics(&mut self, now_ns: i64, diag: &Diagnostics);
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostics {
    pub ticks: u64,
    pub faults: Vec<(&'static str, u64)>,
    pub hold: u64,
    pub stop: u64,
    /// Ticks that published nothing: position targets before the first state.
    pub waiting: u64,
    pub clipped: u64,
    pub rate_limited: u64,
    pub late_actions_dropped: u64,
    /// Ticks that held the goal at rest (arrive-and-hold, `serve.hold_radius`).
    pub goal_held: u64,
    pub plans: u64,
    pub plan_errors: u64,
    /// Planner steps that ran more than a replan interval (or an input timeout) behind the
    /// clock: entered into the memory without planning.
    pub steps_recorded_late: u64,
    /// Planner steps further behind than the memory reaches: skipped, a gap in the memory
    /// (the next plan starts cold).
    pub steps_skipped: u64,
    /// Robot state messages refused (`StateIntake`: joints, non-finite values, stamps out of
    /// order); the state goes stale while they last.
    pub states_rejected: u64,
    pub deadline_misses: u64,
    /// Tick records the publisher could not take in time (its queue was full): those ticks'
    /// actions were computed but not published.
    pub records_dropped: u64,
    pub tick_latency: LatencySummary,
    pub tick_jitter: LatencySummary,
    pub plan_latency: LatencySummary,
    pub frames: FrameStatsSnapshot,
    /// The goal planned toward and the goal messages taken; None: the node has no goal reward.
    pub goal: Option<GoalStatus>,
}

pub(crate) struct DiagnosticInputs<'a> {
    pub counters: &'a Counters,
    pub plan_errors: u64,
    pub steps_recorded_late: u64,
    pub steps_skipped: u64,
    pub states_rejected: u64,
    pub deadline_misses: u64,
    pub records_dropped: u64,
    pub tick_latency: LatencySummary,
    pub tick_jitter: LatencySummary,
    pub plan_latency: LatencySummary,
    pub frames: FrameStatsSnapshot,
    pub goal: Option<GoalStatus>,
}

impl Diagnostics {
    pub(crate) fn collect(i: DiagnosticInputs) -> Self {
        let c = i.counters;
        Self {
            ticks: c.ticks,
            faults: Fault::ALL.iter().map(|f| (f.name(), c.faults[*f as usize])).collect(),
            hold: c.hold,
            stop: c.stop,
            waiting: c.waiting,
            clipped: c.clipped,
            rate_limited: c.rate_limited,
            late_actions_dropped: c.late_dropped,
            goal_held: c.goal_held,
            plans: c.plans_installed,
            plan_errors: i.plan_errors,
            steps_recorded_late: i.steps_recorded_late,
            steps_skipped: i.steps_skipped,
            states_rejected: i.states_rejected,
            deadline_misses: i.deadline_misses,
            records_dropped: i.records_dropped,
            tick_latency: i.tick_latency,
            tick_jitter: i.tick_jitter,
            plan_latency: i.plan_latency,
            frames: i.frames,
            goal: i.goal,
        }
    }
}
