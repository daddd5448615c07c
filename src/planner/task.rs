//! The planner as a periodic task: once per model step it records a history frame (the
//! action executed during the step, the observation now) and every `replan_every` steps it
//! samples a new plan stamped for now. A new goal, or a scheduled plan that failed, gets one
//! plan at the next step besides; the schedule keeps its phase, since models trained on
//! episode-aligned tokens plan at token boundaries. Camera models also take the cameras'
//! newest frames with each history frame, guided toward the node's goal when it has one. The
//! live planner thread and the offline (replay, bridge) loop both drive this same task.

use std::time::Instant;

use super::df::{DfPlanner, PlanError};
use super::goal::{GoalMessage, GoalStatus, NodeGoal};
use super::plan::{Plan, PlanHold};
use crate::control::{input_stale, Histogram, StateSample};
use crate::frames::CameraFrames;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// No robot state yet: nothing recorded.
    NoState,
    /// The robot state is older than the state timeout: nothing recorded or planned (a plan
    /// from it would run once the state is back); the step after it returns plans, cold.
    StaleState,
    /// A camera's newest frame is older than the camera timeout (or stamped from before a
    /// clock reset): as for a stale state, so that the memory never takes an old image as
    /// this step's.
    StaleImages,
    /// A camera model before every camera has sent an image: nothing recorded, so that its
    /// memory starts with a frame that has them (a history token without images would fail
    /// every plan for as long as it stays in the window).
    NoImages,
    /// A history frame was recorded; no plan this step.
    Recorded,
    /// A new plan was written.
    Planned,
}

pub struct PlannerTask {
    planner: DfPlanner,
    replan_every: usize,
    step_ns: i64,
    steps: usize,
    /// Plan at the next step, off the schedule (a new goal, or a retry).
    plan_next: bool,
    /// A state older than this is stale (`safety.state_timeout_s`), as the control tick says.
    state_timeout_ns: i64,
    /// A camera frame older than this is stale (`safety.camera_timeout_s`).
    camera_timeout_ns: i64,
    /// The previous step found the state stale; a camera stale.
    state_was_stale: bool,
    images_were_stale: bool,
    seq: u64,
    observation: Vec<f64>,
    latency: Histogram,
    goal: Option<NodeGoal>,
    /// Arrive-and-hold (`serve.hold_radius`, `serve.position_dims`): each plan marks where it
    /// comes within the radius of the goal.
    hold: Option<(f64, [usize; 2])>,
    failures: FailureLog,
}

impl PlannerTask {
    pub fn new(planner: DfPlanner, replan_every: usize, step_ns: i64) -> Self {
        let obs_dim = planner.contract().layout.observation_dim;
        Self {
            planner,
            replan_every,
            step_ns,
            steps: 0,
            plan_next: false,
            state_timeout_ns: i64::MAX,
            camera_timeout_ns: i64::MAX,
            state_was_stale: false,
            images_were_stale: false,
            seq: 0,
            observation: vec![0.0; obs_dim],
            latency: Histogram::default(),
            goal: None,
            hold: None,
            failures: FailureLog::default(),
        }
    }

    /// Treat a state older than `timeout_ns` as stale (default: never).
    pub fn with_state_timeout(mut self, timeout_ns: i64) -> Self {
        self.state_timeout_ns = timeout_ns;
        self
    }

    /// Treat a camera frame older than `timeout_ns` as stale (default: never).
    pub fn with_camera_timeout(mut self, timeout_ns: i64) -> Self {
        self.camera_timeout_ns = timeout_ns;
        self
    }

    /// Plan toward `goal` (unguided while it has no target).
    pub fn with_goal(mut self, goal: Option<NodeGoal>) -> Self {
        self.goal = goal;
        self
    }

    /// Mark in each plan the first step within `radius` of the goal (at the
    /// observation's `position_dims`), from which the control tick holds the goal at rest.
    pub fn with_hold(mut self, hold: Option<(f64, [usize; 2])>) -> Self {
        self.hold = hold;
        self
    }

    /// A goal message (`topics.goal`). A goal that moves the guided plans is planned for at
    /// the next step, cold (the previous plan aimed elsewhere), and the schedule goes on; the
    /// same goal again (a publisher repeating it) changes nothing; a refused one leaves the
    /// goal before it. Logged (a repeat at debug).
    pub fn receive_goal(&mut self, message: &GoalMessage) -> Result<(), String> {
        let result = match &mut self.goal {
            Some(goal) => goal.receive(message),
            None => Err(format!(
                "{:?}: the config has no planner.goal, so no goal reward to aim",
                message.position
            )),
        };
        match result {
            Ok(true) => {
                self.plan_next = true;
                self.planner.start_cold();
                tracing::info!(goal = ?message.position, "new goal: planning toward it at the next step");
                Ok(())
            }
            Ok(false) => {
                tracing::debug!(goal = ?message.position, "goal unchanged, or unguided: plans go on as scheduled");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "goal refused; the goal before it stays");
                Err(e)
            }
        }
    }

    /// Goal messages dropped before `receive_goal` (a full hand-off queue), in all.
    pub fn goals_dropped(&mut self, dropped: u64) {
        if let Some(goal) = &mut self.goal {
            goal.set_dropped(dropped);
        }
    }

    /// None: the node has no goal reward.
    pub fn goal_status(&self) -> Option<GoalStatus> {
        self.goal.as_ref().map(NodeGoal::status)
    }

    pub fn into_planner(self) -> DfPlanner {
        self.planner
    }

    pub fn planner(&self) -> &DfPlanner {
        &self.planner
    }

    /// Steps were skipped (the thread fell behind): the history has a gap and the previous
    /// plan no longer lines up with a warm start's shift, so the next plan starts cold.
    pub fn steps_skipped(&mut self) {
        self.planner.start_cold();
    }

    /// The node's clock went back (a simulator reset): a new episode, its memory empty.
    pub fn clock_reset(&mut self) {
        self.planner.reset();
        self.steps = 0;
        self.plan_next = false;
    }

    /// The error of the latest step that failed, recovered or not.
    pub fn last_error(&self) -> Option<&str> {
        self.failures.last_error.as_deref()
    }

    pub fn replan_every(&self) -> usize {
        self.replan_every
    }

    /// How far behind its clock the planner may run a step as of the step's own time: a
    /// replan interval (a backlog beyond that would only grow), and no more than an input
    /// timeout, beyond which the step's inputs would read as stale against it (the camera
    /// frames are the newest). Further behind, the missed steps are skipped.
    pub fn max_lateness_ns(&self) -> i64 {
        let timeouts = if self.planner.has_cameras() {
            self.state_timeout_ns.min(self.camera_timeout_ns)
        } else {
            self.state_timeout_ns
        };
        (self.step_ns * self.replan_every as i64).min(timeouts)
    }

    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// A plan buffer sized for this planner.
    pub fn new_plan(&self) -> Plan {
        let l = &self.planner.contract().layout;
        Plan::with_capacity(self.planner.plan_len(), l.action_dim, l.observation_dim, l.token_dim)
    }

    pub fn step(
        &mut self,
        now_ns: i64,
        state: Option<&StateSample>,
        executed_action: &[f64],
        images: Option<CameraFrames<'_>>,
        plan: &mut Plan,
    ) -> Result<StepOutcome, PlanError> {
        let outcome = self.attempt_step(now_ns, state, executed_action, images, Some(plan));
        self.told(outcome)
    }

    /// A step that runs too late to plan from (the planner was busy for longer than
    /// `max_lateness_ns`): its frame still goes into the memory, as of its own time, so that a
    /// planner slower than its replan interval keeps every step of its history; a plan it was
    /// due for is made at the first step on time instead. State models only: a camera's ring
    /// holds its newest frames, not this step's.
    pub fn record_late(
        &mut self,
        now_ns: i64,
        state: Option<&StateSample>,
        executed_action: &[f64],
    ) -> Result<StepOutcome, PlanError> {
        let outcome = self.attempt_step(now_ns, state, executed_action, None, None);
        self.told(outcome)
    }

    /// A step's outcome, its failure or recovery logged when it is news.
    fn told(&mut self, outcome: Result<StepOutcome, PlanError>) -> Result<StepOutcome, PlanError> {
        match &outcome {
            Ok(StepOutcome::Planned) => {
                if self.failures.planned() {
                    tracing::info!("planning recovered");
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(msg) = self.failures.failed(e.to_string()) {
                    tracing::warn!(error = %msg, "planning failed; the ticks run the current plan while it is due, else fall back");
                }
            }
        }
        outcome
    }

    /// `plan`: None records the step without planning (`record_late`).
    fn attempt_step(
        &mut self,
        now_ns: i64,
        state: Option<&StateSample>,
        executed_action: &[f64],
        images: Option<CameraFrames<'_>>,
        plan: Option<&mut Plan>,
    ) -> Result<StepOutcome, PlanError> {
        let Some(state) = state else {
            return Ok(StepOutcome::NoState);
        };
        // As the control tick judges them.
        let stale_camera = images.filter(|_| self.planner.has_cameras()).and_then(|frames| {
            let stale = |&stamp_ns: &i64| input_stale(now_ns, Some(stamp_ns), self.camera_timeout_ns);
            frames
                .stamps_ns
                .iter()
                .position(stale)
                .map(|i| (i, frames.stamps_ns[i]))
        });
        let state_stale = input_stale(now_ns, Some(state.stamp_ns), self.state_timeout_ns);
        let was_stale = self.state_was_stale || self.images_were_stale;
        if state_stale != std::mem::replace(&mut self.state_was_stale, state_stale) {
            match state_stale {
                true => tracing::warn!(stamp_ns = state.stamp_ns, now_ns, "robot state stale: planning pauses"),
                false => tracing::info!("robot state fresh again"),
            }
        }
        if stale_camera.is_some() != std::mem::replace(&mut self.images_were_stale, stale_camera.is_some()) {
            match stale_camera {
                Some((camera, stamp_ns)) => {
                    tracing::warn!(camera, stamp_ns, now_ns, "camera frame stale: planning pauses")
                }
                None => tracing::info!("camera frames fresh again"),
            }
        }
        if state_stale {
            return Ok(StepOutcome::StaleState);
        }
        if stale_camera.is_some() {
            return Ok(StepOutcome::StaleImages);
        }
        if was_stale {
            tracing::info!("inputs fresh: planning at once, cold");
            // The history skipped the stale steps: the previous plan's shift no longer fits.
            self.planner.start_cold();
            self.plan_next = true;
        }
        match self.record(state, executed_action, images) {
            Ok(true) => {}
            Ok(false) => return Ok(StepOutcome::NoImages),
            Err(e) => {
                // A step the history lacks: the previous plan's shift no longer matches, so
                // the next plan starts cold (as after a failed plan).
                self.planner.start_cold();
                return Err(e);
            }
        }
        let scheduled = self.steps.is_multiple_of(self.replan_every);
        self.steps += 1;
        let Some(plan) = plan else {
            self.plan_next |= scheduled;
            return Ok(StepOutcome::Recorded);
        };
        // A scheduled plan serves as the extra one too.
        let extra = std::mem::take(&mut self.plan_next);
        if !(scheduled || extra) {
            return Ok(StepOutcome::Recorded);
        }
        let start = Instant::now();
        let planned = self.planner.plan(self.goal.as_ref().and_then(NodeGoal::guidance), plan);
        match (&planned, scheduled) {
            // The control loop runs a stale plan or its fallback until a plan lands: retry
            // once at the next step rather than a replan interval later (once: a model that
            // keeps failing costs no more than twice its scheduled planning).
            (Err(_), true) => self.plan_next = true,
            // The next scheduled plan is not one replan interval after this one, as a warm
            // start's shift assumes.
            (Ok(()), false) => self.planner.start_cold(),
            _ => {}
        }
        planned?;
        let latency_ns = start.elapsed().as_nanos() as u64;
        self.latency.record(latency_ns);
        self.seq += 1;
        plan.seq = self.seq;
        plan.t0_ns = now_ns;
        plan.dt_ns = self.step_ns;
        plan.latency_ns = latency_ns;
        // As serve: the goal is held whether or not the plans are guided toward it.
        let goal = self.goal.as_ref().and_then(NodeGoal::target);
        plan.hold = self
            .hold
            .zip(goal)
            .and_then(|((radius, dims), goal)| PlanHold::at_arrival(plan, dims, goal, radius));
        Ok(StepOutcome::Planned)
    }

    /// Enter this step's frame (and images) into the planner's history; false when a camera
    /// model has no images yet.
    fn record(
        &mut self,
        state: &StateSample,
        executed_action: &[f64],
        images: Option<CameraFrames<'_>>,
    ) -> Result<bool, PlanError> {
        let obs = self.observation.len();
        if 2 * state.joints != obs && state.joints != obs {
            return Err(PlanError::Invalid {
                field: "robot state",
                expected: format!(
                    "{} joints (observation_dim / 2: positions then velocities) or {obs} (positions only)",
                    obs / 2
                ),
                got: format!("{} joints", state.joints),
            });
        }
        state.observation(&mut self.observation);
        if let Some(goal) = &mut self.goal {
            goal.observe(&self.observation);
        }
        if self.planner.has_cameras() && images.is_none() {
            return Ok(false);
        }
        self.planner.push_frame(executed_action, &self.observation)?;
        if let (Some(images), true) = (images, self.planner.has_cameras()) {
            self.planner.push_images(images.rgb)?;
        }
        Ok(true)
    }
}

/// Which plan failures the log tells: a failure when it starts or its message changes, and the
/// recovery once (a model failing every step would flood the log).
#[derive(Default)]
struct FailureLog {
    /// The latest step that failed, recovered or not.
    last_error: Option<String>,
    failing: bool,
}

impl FailureLog {
    /// A step failed with `error`: the error when it is news.
    fn failed(&mut self, error: String) -> Option<&str> {
        let news = !self.failing || self.last_error.as_deref() != Some(error.as_str());
        self.failing = true;
        self.last_error = Some(error);
        news.then_some(self.last_error.as_deref().expect("just set"))
    }

    /// A step planned: whether that ends a failure.
    fn planned(&mut self) -> bool {
        std::mem::take(&mut self.failing)
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;
    use crate::planner::df::tests::{planner, warm_planner, Seen};

    /// One step of `task` at `state`: the model calls it made (0 when it only recorded).
    fn model_calls(
        task: &mut PlannerTask,
        seen: &Mutex<Seen>,
        state: &StateSample,
        plan: &mut Plan,
    ) -> Result<usize, PlanError> {
        let before = seen.lock().calls;
        task.step(0, Some(state), &[0.0, 0.0], None, plan)?;
        Ok(seen.lock().calls - before)
    }

    #[test]
    fn a_camera_model_records_nothing_until_every_camera_has_sent_an_image() {
        let (p, _) = planner(true, 3);
        let mut task = PlannerTask::new(p, 1, 100_000_000);
        let mut plan = task.new_plan();
        let state = StateSample::new(0, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
        for _ in 0..3 {
            let outcome = task.step(0, Some(&state), &[0.0, 0.0], None, &mut plan).unwrap();
            assert_eq!(outcome, StepOutcome::NoImages);
        }
        // The first step with images starts the memory: it plans, with no imageless token.
        let image: &[u8] = &[128; 6];
        let frames = CameraFrames {
            rgb: &[image],
            stamps_ns: &[0],
        };
        let outcome = task.step(0, Some(&state), &[0.0, 0.0], Some(frames), &mut plan);
        assert_eq!(outcome.unwrap(), StepOutcome::Planned);
    }

    #[test]
    fn a_stale_camera_frame_pauses_planning_and_its_return_plans_at_once_cold() {
        let (p, seen) = planner(true, 3);
        let ms = 1_000_000;
        let mut task = PlannerTask::new(p, 2, 100 * ms).with_camera_timeout(300 * ms);
        let mut plan = task.new_plan();
        let image: &[u8] = &[128; 6];
        let mut step = |task: &mut PlannerTask, now_ns: i64, frame_ns: i64| {
            let state = StateSample::new(now_ns, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
            let frames = CameraFrames {
                rgb: &[image],
                stamps_ns: &[frame_ns],
            };
            let before = seen.lock().calls;
            let outcome = task
                .step(now_ns, Some(&state), &[0.0, 0.0], Some(frames), &mut plan)
                .unwrap();
            (outcome, seen.lock().calls - before)
        };
        let (outcome, cold) = step(&mut task, 0, 0);
        assert_eq!(outcome, StepOutcome::Planned);
        assert_eq!(step(&mut task, 100 * ms, 100 * ms), (StepOutcome::Recorded, 0));
        // The camera stops at 100 ms: its frame serves until 300 ms old, then goes stale, and
        // nothing is recorded.
        assert_eq!(step(&mut task, 400 * ms, 100 * ms).0, StepOutcome::Planned);
        assert_eq!(step(&mut task, 500 * ms, 100 * ms), (StepOutcome::StaleImages, 0));
        // A frame from before a clock reset (stamped far ahead) is no fresher.
        assert_eq!(step(&mut task, 600 * ms, 90_000 * ms), (StepOutcome::StaleImages, 0));
        // Back: the next step (step 4, off the replan schedule) plans at once, cold.
        assert_eq!(step(&mut task, 700 * ms, 690 * ms), (StepOutcome::Planned, cold));
        assert_eq!(
            step(&mut task, 800 * ms, 790 * ms),
            (StepOutcome::Planned, cold),
            "scheduled"
        );
    }

    #[test]
    fn a_step_the_task_refuses_makes_the_next_plan_start_cold() {
        let (p, seen) = warm_planner(false);
        let mut task = PlannerTask::new(p, 2, 100_000_000);
        let mut plan = task.new_plan();
        let state = StateSample::new(0, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
        let mut step = |task: &mut PlannerTask, state: &StateSample| model_calls(task, &seen, state, &mut plan);
        let cold = step(&mut task, &state).unwrap();
        assert_eq!(step(&mut task, &state).unwrap(), 0);
        let warm = step(&mut task, &state).unwrap();
        assert!(0 < warm && warm < cold, "warm {warm}, cold {cold}");
        assert_eq!(step(&mut task, &state).unwrap(), 0);
        // Three joints for an observation of four: refused before the frame is recorded.
        let wrong = StateSample::new(0, &[0.5, 0.5, 0.5], &[]).unwrap();
        assert!(step(&mut task, &wrong).is_err());
        // The refused step is not counted: the next one makes the due plan, cold.
        assert_eq!(step(&mut task, &state).unwrap(), cold);
    }

    #[test]
    fn a_failed_scheduled_plan_is_retried_once_at_the_next_step_and_the_schedule_keeps_its_phase() {
        use StepOutcome::{Planned, Recorded};

        let (p, seen) = planner(false, 1);
        let mut task = PlannerTask::new(p, 3, 100_000_000);
        let mut plan = task.new_plan();
        let state = StateSample::new(0, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
        let mut step = |task: &mut PlannerTask| task.step(0, Some(&state), &[0.0, 0.0], None, &mut plan);
        for expected in [Planned, Recorded, Recorded] {
            assert_eq!(step(&mut task).unwrap(), expected);
        }
        // The model's predictions turn NaN: the scheduled plan (step 3) fails, its retry
        // (step 4) too, and then nothing until the next scheduled plan (step 6).
        seen.lock().nan = true;
        let error = step(&mut task).unwrap_err().to_string();
        assert!(error.contains("not finite"), "{error}");
        assert!(step(&mut task).is_err(), "retried at the next step");
        assert_eq!(step(&mut task).unwrap(), Recorded, "retried once");
        assert!(step(&mut task).is_err(), "scheduled");
        // Recovered: the retry (step 7) lands, and the schedule goes on at steps 9, 12.
        seen.lock().nan = false;
        for expected in [Planned, Recorded, Planned, Recorded, Recorded, Planned] {
            assert_eq!(step(&mut task).unwrap(), expected);
        }
    }

    #[test]
    fn a_late_step_enters_the_memory_without_planning_and_its_due_plan_waits_for_a_step_on_time() {
        use StepOutcome::{Planned, Recorded};

        // frame_stack 2, 3 context tokens, a plan every 4 steps.
        let (p, seen) = planner(false, 3);
        let mut task = PlannerTask::new(p, 4, 100_000_000);
        let mut plan = task.new_plan();
        let state = |k: usize| StateSample::new(k as i64 * 100_000_000, &[0.1 * k as f64, 0.5], &[0.0, 0.0]).unwrap();
        assert!(model_calls(&mut task, &seen, &state(0), &mut plan).unwrap() > 0);
        // Steps 1-4 run late: recorded, no model call, though step 4 was due for a plan.
        for k in 1..5 {
            let before = seen.lock().calls;
            let outcome = task.record_late(k as i64 * 100_000_000, Some(&state(k)), &[0.0, 0.0]);
            assert_eq!((outcome.unwrap(), seen.lock().calls), (Recorded, before), "step {k}");
        }
        // The first step on time makes the plan, from all six frames: three whole tokens of
        // context (two frames each) before the two planned ones; with the late steps lost it
        // would have had one.
        seen.lock().x_t = None;
        assert_eq!(
            task.step(500_000_000, Some(&state(5)), &[0.0, 0.0], None, &mut plan)
                .unwrap(),
            Planned
        );
        assert_eq!(seen.lock().x_t.as_ref().unwrap().dim(), (1, 5, 12));
        // The schedule keeps its phase: the next plan is step 8's.
        for (k, expected) in [(6, Recorded), (7, Recorded), (8, Planned)] {
            let outcome = task.step(k * 100_000_000, Some(&state(k as usize)), &[0.0, 0.0], None, &mut plan);
            assert_eq!(outcome.unwrap(), expected, "step {k}");
        }
    }

    #[test]
    fn a_failure_is_told_when_it_starts_or_changes_and_the_recovery_once() {
        let mut log = FailureLog::default();
        let nan = || "the model's x0 is not finite".to_string();
        let joints = || "robot state: expected 2 joints".to_string();
        assert!(!log.planned(), "nothing to recover from");
        assert!(log.failed(nan()).is_some());
        assert!(log.failed(nan()).is_none(), "a model failing every step is told once");
        assert_eq!(log.failed(joints()), Some(joints().as_str()), "another error");
        assert!(log.planned());
        assert!(!log.planned(), "the recovery once");
        assert_eq!(
            log.last_error.as_deref(),
            Some(joints().as_str()),
            "kept after the recovery"
        );
        assert!(
            log.failed(joints()).is_some(),
            "the same error after a recovery is news"
        );
    }

    #[test]
    fn the_task_keeps_its_last_error_after_a_recovery() {
        let (p, seen) = planner(false, 1);
        let mut task = PlannerTask::new(p, 1, 100_000_000);
        let mut plan = task.new_plan();
        let state = StateSample::new(0, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
        let mut step = |task: &mut PlannerTask| task.step(0, Some(&state), &[0.0, 0.0], None, &mut plan).is_ok();
        assert!(step(&mut task) && task.last_error().is_none());
        seen.lock().nan = true;
        assert!(!step(&mut task));
        seen.lock().nan = false;
        assert!(step(&mut task));
        assert!(
            task.last_error().unwrap().contains("not finite"),
            "{:?}",
            task.last_error()
        );
    }

    #[test]
    fn a_stale_state_pauses_planning_and_its_return_plans_at_once_cold() {
        let (p, seen) = warm_planner(false);
        let mut task = PlannerTask::new(p, 2, 100_000_000).with_state_timeout(300_000_000);
        let mut plan = task.new_plan();
        let mut step = |task: &mut PlannerTask, now_ns: i64, stamp_ns: i64| {
            let state = StateSample::new(stamp_ns, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
            let before = seen.lock().calls;
            let outcome = task.step(now_ns, Some(&state), &[0.0, 0.0], None, &mut plan).unwrap();
            (outcome, seen.lock().calls - before)
        };
        let (_, cold) = step(&mut task, 0, 0);
        assert_eq!(step(&mut task, 100, 100), (StepOutcome::Recorded, 0));
        let (_, warm) = step(&mut task, 200, 200);
        assert!(0 < warm && warm < cold, "warm {warm}, cold {cold}");
        assert_eq!(step(&mut task, 300, 300), (StepOutcome::Recorded, 0));
        assert_eq!(step(&mut task, 400, 400), (StepOutcome::Planned, warm));
        // The state stops: 0.3 s later planning pauses, recording nothing.
        let ms = 1_000_000;
        assert_eq!(step(&mut task, 301 * ms, 400), (StepOutcome::StaleState, 0));
        assert_eq!(step(&mut task, 400 * ms, 400), (StepOutcome::StaleState, 0));
        // A state stamped far ahead of the clock is no fresher.
        assert_eq!(step(&mut task, 500 * ms, 900 * ms), (StepOutcome::StaleState, 0));
        // Back: the next step (step 5, off the replan schedule) plans at once, cold.
        assert_eq!(step(&mut task, 600 * ms, 600 * ms), (StepOutcome::Planned, cold));
        assert_eq!(
            step(&mut task, 700 * ms, 700 * ms),
            (StepOutcome::Planned, cold),
            "scheduled after an extra plan: cold"
        );
    }

    #[test]
    fn the_scheduled_plan_after_a_retry_starts_cold() {
        let (p, seen) = warm_planner(false);
        let mut task = PlannerTask::new(p, 2, 100_000_000);
        let mut plan = task.new_plan();
        let state = StateSample::new(0, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
        // None when the step failed.
        let mut step = |task: &mut PlannerTask| model_calls(task, &seen, &state, &mut plan).ok();
        let cold = step(&mut task).unwrap();
        assert_eq!(step(&mut task), Some(0));
        let warm = step(&mut task).unwrap();
        assert!(0 < warm && warm < cold, "warm {warm}, cold {cold}");
        assert_eq!(step(&mut task), Some(0));
        seen.lock().nan = true;
        assert_eq!(step(&mut task), None);
        seen.lock().nan = false;
        assert_eq!(step(&mut task), Some(cold), "the retry, cold after a failed plan");
        assert_eq!(step(&mut task), Some(cold), "one step after the retry, not two: cold");
        assert_eq!(step(&mut task), Some(0));
        assert_eq!(step(&mut task), Some(warm));
    }

    #[test]
    fn a_new_goal_is_planned_for_at_the_next_step_cold_and_a_refused_or_repeated_one_changes_nothing() {
        use crate::planner::goal::GoalRegion;
        use crate::planner::reward::tests::config as reward_config;
        use crate::planner::{Aggregate, GoalReward, Squash};

        let (p, seen) = warm_planner(false);
        let cfg = reward_config(Squash::Linear, Aggregate::Mean);
        let reward = GoalReward::new(cfg, p.contract(), [0.0, 0.0]).unwrap();
        let region = GoalRegion {
            bounds: Some([[-1.0, -1.0], [1.0, 1.0]]),
            keepout: Vec::new(),
        };
        let goal = NodeGoal::new(reward, region, "map".into(), true);
        let mut task = PlannerTask::new(p, 2, 100_000_000).with_goal(Some(goal));
        let mut plan = task.new_plan();
        let state = StateSample::new(0, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
        let mut step = |task: &mut PlannerTask| model_calls(task, &seen, &state, &mut plan).unwrap();
        let message = |x| GoalMessage {
            position: [x, 0.0],
            frame_id: String::new(),
        };
        let cold = step(&mut task);
        assert_eq!(step(&mut task), 0);
        let warm = step(&mut task);
        assert!(0 < warm && warm < cold, "warm {warm}, cold {cold}");
        assert!(task.receive_goal(&message(5.0)).is_err(), "outside the bounds");
        assert_eq!(step(&mut task), 0, "a refused goal changes nothing:");
        assert_eq!(step(&mut task), warm, "the schedule and the warm start go on");
        task.receive_goal(&message(0.5)).unwrap();
        assert_eq!(step(&mut task), cold, "a new goal: a plan at once, cold");
        assert_eq!(
            step(&mut task),
            cold,
            "the schedule keeps its phase, cold after the extra plan"
        );
        // The same goal again changes nothing: warm again, every 2 steps.
        task.receive_goal(&message(0.5)).unwrap();
        assert_eq!(step(&mut task), 0);
        assert_eq!(step(&mut task), warm);
        assert_eq!(step(&mut task), 0);
        // A new goal just before a scheduled step: that plan is the goal's, and no extra one.
        task.receive_goal(&message(0.7)).unwrap();
        assert_eq!(step(&mut task), cold);
        assert_eq!(step(&mut task), 0);
        assert_eq!(step(&mut task), warm);
    }

    #[test]
    fn a_plan_marks_where_it_arrives_at_the_goal_for_the_hold() {
        use crate::planner::goal::GoalRegion;
        use crate::planner::reward::tests::config as reward_config;
        use crate::planner::{Aggregate, GoalReward, Squash};

        let state = StateSample::new(0, &[0.5, 0.5], &[0.0, 0.0]).unwrap();
        let hold_after = |radius: f64, guided: bool| {
            let (p, _) = warm_planner(false);
            let reward = GoalReward::new(reward_config(Squash::Linear, Aggregate::Mean), p.contract(), [0.0, 0.0]);
            let mut goal = NodeGoal::new(reward.unwrap(), GoalRegion::default(), "map".into(), guided);
            goal.set([0.25, -0.5]).unwrap();
            let mut task = PlannerTask::new(p, 2, 100_000_000)
                .with_goal(Some(goal))
                .with_hold(Some((radius, [0, 1])));
            let mut plan = task.new_plan();
            plan.hold = Some(PlanHold {
                from: 7,
                goal: [9.0, 9.0],
            }); // a recycled plan's
            task.step(0, Some(&state), &[0.0, 0.0], None, &mut plan).unwrap();
            plan.hold
        };
        // Every planned position lies within a huge radius: the hold starts at step 0, guided
        // or not (as serve holds in its no-guidance ablation).
        let all = Some(PlanHold {
            from: 0,
            goal: [0.25, -0.5],
        });
        assert_eq!(hold_after(1e9, true), all);
        assert_eq!(hold_after(1e9, false), all);
        assert_eq!(hold_after(1e-12, true), None, "never within");
    }
}
