//! The loop on a virtual clock, single-threaded and deterministic: the planner task runs at
//! every model step and the control tick at every control period, in time order, between
//! the inputs fed in. Replay and the simulator bridge drive the robot's code through this.
//! A plan lands at once, unless `with_plan_time` says how long planning takes (one fixed time
//! or times drawn from measured ones, `plan_time`): then the loop
//! times the planner as the live planner thread runs it (`live::spawn`): busy while it plans,
//! the steps it missed run late as of their own time, further behind (a replan interval, or
//! an input timeout) they only enter the memory, further than the memory reaches
//! (`live::memory_reach_ns`) they are skipped and the next plan starts cold, and each plan
//! reaches the tick when done.
//! A plan whose sampling failed costs the planner a plan's time too.

use std::collections::VecDeque;
use std::time::Instant;

use thiserror::Error;

use crate::frames::{camera_rings, CameraRing, CameraStats, Cameras, FrameError, FrameWriter, ImageView, MAX_CAMERAS};
use crate::planner::{GoalMessage, Plan, PlannerTask, StepOutcome};

use super::core::{ControlCore, TickInputs};
use super::diagnostics::{ActionSink, DiagnosticInputs, Diagnostics};
use super::histogram::Histogram;
use super::live::memory_reach_ns;
use super::plan_time::{PlanClock, PlanTimes};
use super::state::StateSample;

#[derive(Debug, Error)]
pub enum OfflineError {
    #[error("input at {t_ns} ns is before the loop's time {now_ns} ns")]
    TimeWentBack { t_ns: i64, now_ns: i64 },
}

pub struct OfflineLoop {
    task: PlannerTask,
    core: ControlCore,
    frames_in: Vec<FrameWriter>,
    frames: Cameras,
    frame_stats: CameraStats,
    state: Option<StateSample>,
    tick_ns: i64,
    step_ns: i64,
    now_ns: Option<i64>,
    next_tick_ns: i64,
    next_step_ns: i64,
    next_diag_ns: i64,
    /// The action executed during the current step: our own output, or what the robot was
    /// recorded doing (replay).
    executed: Vec<f64>,
    executed_override: Option<Vec<f64>>,
    out: Vec<f64>,
    spare: Option<Box<Plan>>,
    plan_errors: u64,
    states_rejected: u64,
    tick_latency: Histogram,
    plan_time: Option<PlanTime>,
}

/// How long each plan takes on the virtual clock, and where the planner is in its work.
struct PlanTime {
    clock: PlanClock,
    /// How far behind the planner runs late steps; further, they only enter the memory (the
    /// live slack).
    slack_ns: i64,
    /// How far behind a step still enters the memory; further, it is skipped.
    reach_ns: i64,
    busy_until_ns: i64,
    /// Steps before this are skipped; the step at it runs, cold.
    skip_until_ns: Option<i64>,
    /// Plans done at these times, in order, not yet with the tick: a plan made by a late step
    /// is done before the tick has taken the one before it.
    in_flight: VecDeque<(i64, Box<Plan>)>,
    steps_skipped: u64,
    steps_recorded_late: u64,
}

/// What the planner does with a step (`with_plan_time`).
enum Turn {
    /// Runs it, from this time on: it may plan.
    Run(i64),
    /// Enters it into the memory without planning (`PlannerTask::record_late`).
    Late,
    Skip,
}

impl OfflineLoop {
    /// `cameras`: one frame ring each, fed by `ingest_image(i, ..)` in this order.
    pub fn new(task: PlannerTask, core: ControlCore, tick_ns: i64, step_ns: i64, cameras: &[CameraRing]) -> Self {
        let (frames_in, frames) = camera_rings(cameras);
        let frame_stats = frames.stats();
        let action_dim = task.planner().contract().layout.action_dim;
        let spare = Some(Box::new(task.new_plan()));
        Self {
            task,
            core,
            frames_in,
            frames,
            frame_stats,
            state: None,
            tick_ns,
            step_ns,
            now_ns: None,
            next_tick_ns: 0,
            next_step_ns: 0,
            next_diag_ns: 0,
            executed: vec![0.0; action_dim],
            executed_override: None,
            out: vec![0.0; action_dim],
            spare,
            plan_errors: 0,
            states_rejected: 0,
            tick_latency: Histogram::default(),
            plan_time: None,
        }
    }

    /// Each plan takes `times` of the virtual clock (see the module's doc; None: a plan lands
    /// at the step that made it), drawn by a generator seeded with `seed` where measured;
    /// further behind than `PlannerTask::max_lateness_ns` the planner only records steps, and
    /// further than `live::memory_reach_ns` it skips them, as the live thread.
    pub fn with_plan_time(mut self, times: Option<PlanTimes>, seed: u64) -> Self {
        let slack_ns = self.task.max_lateness_ns();
        let reach_ns = memory_reach_ns(&self.task, self.tick_ns);
        self.plan_time = times.map(|times| PlanTime {
            clock: PlanClock::new(times, seed),
            slack_ns,
            reach_ns,
            busy_until_ns: i64::MIN,
            skip_until_ns: None,
            in_flight: VecDeque::new(),
            steps_skipped: 0,
            steps_recorded_late: 0,
        });
        self
    }

    /// Planner steps skipped because the planner was too far behind (`with_plan_time`).
    pub fn steps_skipped(&self) -> u64 {
        self.plan_time.as_ref().map_or(0, |p| p.steps_skipped)
    }

    /// Planner steps entered into the memory without planning, run too late to plan from
    /// (`with_plan_time`).
    pub fn steps_recorded_late(&self) -> u64 {
        self.plan_time.as_ref().map_or(0, |p| p.steps_recorded_late)
    }

    /// The planner task back, the loop's other state dropped (a new episode reuses the model).
    pub fn into_task(self) -> PlannerTask {
        self.task
    }

    pub fn contract(&self) -> &crate::model::ModelContract {
        self.task.planner().contract()
    }

    pub fn has_cameras(&self) -> bool {
        self.task.planner().has_cameras()
    }

    pub fn plan_errors(&self) -> (u64, Option<&str>) {
        (self.plan_errors, self.task.last_error())
    }

    fn start_at(&mut self, t_ns: i64) {
        if self.now_ns.is_none() {
            self.jump_to(t_ns);
        }
    }

    /// Move the clock to `t_ns` without running the ticks and planner steps between: across a
    /// gap in a recording far longer than any input timeout, where they would only fall back.
    /// The inputs keep their stamps, so they read stale until new ones arrive.
    pub fn jump_to(&mut self, t_ns: i64) {
        self.now_ns = Some(t_ns);
        self.next_tick_ns = t_ns;
        self.next_step_ns = t_ns;
        self.next_diag_ns = t_ns.saturating_add(1_000_000_000);
    }

    /// Run every planner step and tick due strictly before `t_ns`, then hold the clock at it.
    pub fn advance_to(&mut self, t_ns: i64, sink: &mut dyn ActionSink) -> Result<(), OfflineError> {
        self.start_at(t_ns);
        let now = self.now_ns.expect("started");
        if t_ns < now {
            return Err(OfflineError::TimeWentBack { t_ns, now_ns: now });
        }
        loop {
            let next = self.next_step_ns.min(self.next_tick_ns);
            if next >= t_ns {
                break;
            }
            // At equal times the planner step goes first, so a plan for now is used now.
            if self.next_step_ns <= self.next_tick_ns {
                self.planner_step(self.next_step_ns, sink);
                self.next_step_ns += self.step_ns;
            } else {
                self.tick(self.next_tick_ns, sink);
                self.next_tick_ns += self.tick_ns;
            }
        }
        self.now_ns = Some(t_ns);
        Ok(())
    }

    /// A frame of camera `camera` (the index in the rings given to `new`).
    pub fn ingest_image(&mut self, camera: usize, img: &ImageView) -> Result<(), FrameError> {
        self.start_at(img.stamp_ns);
        self.frames_in[camera].write(img)
    }

    pub fn ingest_state(&mut self, sample: StateSample) {
        self.start_at(sample.stamp_ns);
        self.core.observe_state(&sample);
        self.state = Some(sample);
    }

    /// A robot state message the intake refused (counted in the diagnostics).
    pub fn state_rejected(&mut self) {
        self.states_rejected += 1;
    }

    /// Replay: use the robot's recorded action as the executed action in the history.
    pub fn ingest_executed_action(&mut self, action: &[f64]) {
        match &mut self.executed_override {
            Some(v) if v.len() == action.len() => v.copy_from_slice(action),
            slot => *slot = Some(action.to_vec()),
        }
    }

    /// A goal message: the plans from the next step on go toward it, unless it is refused.
    pub fn receive_goal(&mut self, message: &GoalMessage) -> Result<(), String> {
        self.task.receive_goal(message)
    }

    /// The plans done by `t_ns` to the control core (`with_plan_time`).
    fn land_plan(&mut self, t_ns: i64, sink: &mut dyn ActionSink) {
        let Some(time) = &mut self.plan_time else { return };
        while time.in_flight.front().is_some_and(|(done, _)| *done <= t_ns) {
            let (_, plan) = time.in_flight.pop_front().expect("checked");
            sink.plan(&plan);
            self.spare = self.core.install(plan);
        }
    }

    /// What the planner does with the step at `t_ns`, as the live thread paces it, and when
    /// it gets to it.
    fn planner_turn(&mut self, t_ns: i64) -> Turn {
        let Some(time) = &mut self.plan_time else {
            return Turn::Run(t_ns);
        };
        match time.skip_until_ns {
            Some(until) if t_ns < until => return Turn::Skip,
            Some(_) => {
                time.skip_until_ns = None;
                self.task.steps_skipped();
            }
            None => {}
        }
        let lag = time.busy_until_ns.saturating_sub(t_ns);
        if lag > time.reach_ns {
            let skipped = lag / self.step_ns;
            time.steps_skipped += skipped as u64;
            time.skip_until_ns = Some(t_ns + skipped * self.step_ns);
            return Turn::Skip;
        }
        if lag > time.slack_ns {
            time.steps_recorded_late += 1;
            return Turn::Late;
        }
        let start = t_ns.max(time.busy_until_ns);
        time.busy_until_ns = start;
        Turn::Run(start)
    }

    fn planner_step(&mut self, t_ns: i64, sink: &mut dyn ActionSink) {
        let _span = tracing::trace_span!("plan", t_ns).entered();
        self.land_plan(t_ns, sink);
        let turn = self.planner_turn(t_ns);
        let executed = self.executed_override.as_deref().unwrap_or(&self.executed);
        let start_ns = match turn {
            Turn::Run(start_ns) => start_ns,
            Turn::Late => {
                if self.task.record_late(t_ns, self.state.as_ref(), executed).is_err() {
                    self.plan_errors += 1; // logged by the task
                }
                return;
            }
            Turn::Skip => return,
        };
        let (mut rgb, mut stamps) = ([&[][..]; MAX_CAMERAS], [0; MAX_CAMERAS]);
        let images = self.frames.latest(&mut rgb, &mut stamps);
        let mut plan = self.spare.take().unwrap_or_else(|| Box::new(self.task.new_plan()));
        match self.task.step(t_ns, self.state.as_ref(), executed, images, &mut plan) {
            Ok(StepOutcome::Planned) => match &mut self.plan_time {
                Some(time) => {
                    time.busy_until_ns = start_ns + time.clock.next_plan_ns();
                    time.in_flight.push_back((time.busy_until_ns, plan));
                }
                None => {
                    sink.plan(&plan);
                    self.spare = self.core.install(plan);
                }
            },
            Ok(_) => self.spare = Some(plan),
            Err(e) => {
                // Logged by the task.
                self.plan_errors += 1;
                self.spare = Some(plan);
                // On the robot a failed sampling held the planner thread too: charged a whole
                // plan's time, the most it can take (a failure found at an early row stops sooner).
                if let Some(time) = self.plan_time.as_mut().filter(|_| e.ran_the_model()) {
                    time.busy_until_ns = start_ns + time.clock.next_plan_ns();
                }
            }
        }
    }

    fn tick(&mut self, t_ns: i64, sink: &mut dyn ActionSink) {
        let _span = tracing::trace_span!("tick", t_ns).entered();
        self.land_plan(t_ns, sink);
        let start = Instant::now();
        let inputs = TickInputs {
            now_ns: t_ns,
            frame_ns: self.frame_stats.stalest_stamp_ns(t_ns),
            state_ns: self.state.map(|s| s.stamp_ns),
        };
        let (report, retired) = self.core.tick(inputs, &mut self.out);
        for plan in retired.into_iter().flatten() {
            self.spare.get_or_insert(plan);
        }
        self.executed.copy_from_slice(&self.out);
        self.tick_latency.record(start.elapsed().as_nanos() as u64);
        sink.action(&report, &self.out, self.core.current_plan());
        if t_ns >= self.next_diag_ns {
            sink.diagnostics(t_ns, &self.diagnostics());
            self.next_diag_ns += 1_000_000_000;
        }
    }

    pub fn diagnostics(&self) -> Diagnostics {
        Diagnostics::collect(DiagnosticInputs {
            counters: self.core.counters(),
            plan_errors: self.plan_errors,
            steps_recorded_late: self.steps_recorded_late(),
            steps_skipped: self.steps_skipped(),
            states_rejected: self.states_rejected,
            deadline_misses: 0,
            records_dropped: 0,
            tick_latency: self.tick_latency.summary_ms(),
            tick_jitter: Histogram::default().summary_ms(),
            plan_latency: self.task.latency().summary_ms(),
            frames: self.frame_stats.snapshot(),
            goal: self.task.goal_status(),
        })
    }
}
