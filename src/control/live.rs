//! The loop on a real clock, in three threads:
//! - planner: every model step, record history and (every `replan_every` steps, and once more
//!   after a new goal or a failed scheduled plan) plan; it owns the ORT session and may take as
//!   long as inference takes;
//! - control: at the fixed rate, one tick (`ControlTick::run`): take a new plan if one arrived,
//!   choose and filter the action, hand the result to the publisher. Nothing in a tick
//!   allocates, blocks or logs per element (tests/realtime.rs counts allocations);
//! - publisher: the only thread that does I/O (ROS publishers, files) through the sink.
//!
//! Plans cycle planner → control → planner through bounded crossbeam channels (`PlanBuffers`
//! keeps the buffer a step did not send); tick records go control → publisher through a
//! preallocated SPSC ring.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::frames::{clock_reset, CameraStats, Cameras, MAX_CAMERAS};
use crate::planner::{GoalMessage, GoalStatus, Plan, PlannerTask, StepOutcome};

use super::core::{ControlCore, Counters, Fault, Source, TickInputs, TickReport};
use super::diagnostics::{ActionSink, DiagnosticInputs, Diagnostics};
use super::histogram::Histogram;
use super::state::{Recent, StateCell, StateSample};

/// The node's notion of now (ROS time, sim time, or the system clock), in nanoseconds.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64)
    }
}

/// Largest action dimension a tick record carries.
pub const MAX_ACTION_DIM: usize = 16;

/// The actions of the latest ticks, stamped with the tick's time.
pub type ExecutedLog = Recent<[f64; MAX_ACTION_DIM]>;

/// Ticks whose actions are kept for a planner step that runs late: 2.56 s at 100 Hz, so that a
/// planner slower than its replan interval still enters every missed step into its memory.
const TICKS_KEPT: usize = 256;

/// How far behind its clock the planner still enters a missed step into its memory, without
/// planning from it (`PlannerTask::record_late`): for a state model, as far back as the ticks'
/// executed actions are kept; a camera model's rings hold only the newest frames, so it goes no
/// further back than it may plan late (`PlannerTask::max_lateness_ns`). Steps further behind are
/// skipped, a gap in the memory. The offline loop keeps the same reach.
pub fn memory_reach_ns(task: &PlannerTask, tick_ns: i64) -> i64 {
    let lateness = task.max_lateness_ns();
    if task.planner().has_cameras() {
        return lateness;
    }
    lateness.max((TICKS_KEPT as i64 - 1) * tick_ns)
}

/// One tick's result on its way to the publisher.
#[derive(Debug, Clone, Copy)]
pub struct TickRecord {
    pub report: TickReport,
    pub action: [f64; MAX_ACTION_DIM],
    pub dim: usize,
    pub plan_seq: Option<u64>,
}

/// Statistics the control thread shares with the publisher (copied in, never allocated).
#[derive(Debug, Default)]
pub struct LiveStats {
    pub counters: Counters,
    pub tick_latency: Histogram,
    pub tick_jitter: Histogram,
    pub deadline_misses: u64,
    pub records_dropped: u64,
}

impl Clone for LiveStats {
    fn clone(&self) -> Self {
        let mut copy = Self::default();
        copy.clone_from(self);
        copy
    }

    fn clone_from(&mut self, s: &Self) {
        self.counters.clone_from(&s.counters);
        self.tick_latency.clone_from(&s.tick_latency);
        self.tick_jitter.clone_from(&s.tick_jitter);
        self.deadline_misses = s.deadline_misses;
        self.records_dropped = s.records_dropped;
    }
}

/// Says in the log when the published actions stop or start coming from the plan: at once,
/// then at most once a second while the source keeps changing (the changes in between
/// counted), so that a flapping fault cannot flood the log and the last change is still said.
#[derive(Default)]
struct SourceLog {
    said: Option<Source>,
    said_at: Option<Instant>,
    changes: u64,
    last: Option<Source>,
}

impl SourceLog {
    /// A published tick at `now`; the number of source changes it said, if it said one.
    fn record(&mut self, r: &TickReport, now: Instant) -> Option<u64> {
        if self.last != Some(r.source) {
            self.last = Some(r.source);
            self.changes += 1;
        }
        let due = self.said_at.is_none_or(|t| now - t >= Duration::from_secs(1));
        if self.said == self.last || !due {
            return None;
        }
        let changes = std::mem::take(&mut self.changes);
        match r.source {
            Source::Plan => tracing::info!(changes, "actions come from the plan"),
            source => {
                let faults: Vec<&str> = r.faults.iter().map(Fault::name).collect();
                tracing::warn!(?source, ?faults, changes, "actions fall back");
            }
        }
        self.said = self.last;
        self.said_at = Some(now);
        Some(changes)
    }
}

/// When the planner's steps are due: at slots one model step apart on the node's clock, so
/// that under sim time a paused, slow or fast simulator gives the memory one frame per step of
/// its clock, as the model was trained. After a slow plan the due steps run back to back, each
/// as of its slot (the state and executed action then: `StateCell::read_at`, `ExecutedLog`):
/// those within the slack may plan, those further behind only enter the memory (`late`); a
/// clock further behind than the memory's reach skips whole steps (a gap in the memory), keeping
/// the cadence; a clock gone back by a clock reset (`CLOCK_RESET_NS`, as the state intake and
/// the frame rings count one: a simulator reset) starts it again; back by less, steps wait.
struct StepPacer {
    step_ns: i64,
    slack_ns: i64,
    reach_ns: i64,
    /// The node's time the next step is due.
    slot_ns: Option<i64>,
    last_reading_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Not yet: this many ns of the node's clock to go (0: its clock has not started).
    Wait(i64),
    /// The step due at `slot_ns` (at most the clock's reading), after `skipped` missed ones;
    /// `late` when it runs further behind than the slack (record it, do not plan); `reset`
    /// when the clock went back.
    Step {
        slot_ns: i64,
        skipped: u64,
        late: bool,
        reset: bool,
    },
}

impl StepPacer {
    /// `slack`: how late a step may still plan; `reach`: how late it still enters the memory
    /// (at least the slack: `memory_reach_ns`).
    fn new(step: Duration, slack: Duration, reach: Duration) -> Self {
        Self {
            step_ns: step.as_nanos() as i64,
            slack_ns: slack.as_nanos() as i64,
            reach_ns: reach.as_nanos() as i64,
            slot_ns: None,
            last_reading_ns: 0,
        }
    }

    fn due(&mut self, clock_ns: i64) -> Due {
        let went_back = clock_reset(self.last_reading_ns, clock_ns);
        self.last_reading_ns = self.last_reading_ns.max(clock_ns);
        let slot = match self.slot_ns {
            // ROS time reads 0 until the first /clock message.
            None if clock_ns == 0 => return Due::Wait(0),
            Some(slot) if !went_back => slot,
            _ => {
                self.last_reading_ns = clock_ns;
                self.slot_ns = Some(clock_ns + self.step_ns);
                return Due::Step {
                    slot_ns: clock_ns,
                    skipped: 0,
                    late: false,
                    reset: went_back,
                };
            }
        };
        let lag = clock_ns - slot;
        if lag < 0 {
            return Due::Wait(-lag);
        }
        let skipped = if lag > self.reach_ns { lag / self.step_ns } else { 0 };
        let slot_ns = slot + skipped * self.step_ns;
        self.slot_ns = Some(slot_ns + self.step_ns);
        Due::Step {
            slot_ns,
            skipped: skipped as u64,
            late: clock_ns - slot_ns > self.slack_ns,
            reset: false,
        }
    }
}

/// How long the planner thread sleeps before it looks at the node's clock again, in the wall's
/// time. The node's clock may run faster than the wall's (a simulator at several times real
/// time): its rate, measured over windows of wall time, turns the node time still to go into
/// wall time, since a nap of the node time would oversleep the slot by most of a step, and the
/// steps after it would then run back to back, their history frames bunched in the node's time.
struct Napper {
    /// The longest nap, in wall time.
    poll: Duration,
    /// Node ns per wall ns over the latest window (None before the first, and after a
    /// standstill until a whole window has seen the clock run).
    rate: Option<f64>,
    /// Where the current rate window started.
    window_start: Option<(Instant, i64)>,
}

impl Napper {
    /// A rate window: long enough that a sim clock's quantum hardly shows in it.
    const WINDOW: Duration = Duration::from_millis(10);
    /// The shortest nap: a sim clock read a few ns short of a slot is not worth a spin.
    const MIN_NAP: Duration = Duration::from_micros(50);
    /// A look at a clock whose rate is not known, or zero: a clock read, a thousand a second.
    const LOOK: Duration = Duration::from_millis(1);

    fn new(step: Duration) -> Self {
        Self {
            poll: step / 4,
            rate: None,
            window_start: None,
        }
    }

    /// The nap after a look at `wall`, the clock reading `clock_ns`, with `wait_ns` of it to go
    /// (0: the clock has not started).
    fn nap(&mut self, wall: Instant, clock_ns: i64, wait_ns: i64) -> Duration {
        match self.window_start {
            Some((start, start_ns)) => {
                let elapsed = wall.saturating_duration_since(start);
                if elapsed >= Self::WINDOW {
                    let moved_ns = clock_ns - start_ns;
                    let was_still = self.rate.is_some_and(|r| r <= 0.0);
                    // A clock gone back (a reset) keeps the rate it had. The first window after
                    // a standstill holds some of it and reads the rate low, by any factor:
                    // short looks until a whole window has seen the clock run.
                    if moved_ns > 0 && was_still {
                        self.rate = None;
                    } else if moved_ns >= 0 {
                        self.rate = Some(moved_ns as f64 / elapsed.as_nanos() as f64);
                    }
                    self.window_start = Some((wall, clock_ns));
                }
            }
            None => self.window_start = Some((wall, clock_ns)),
        }
        match self.rate {
            // Not started (no /clock yet): nothing to catch.
            _ if wait_ns == 0 => self.poll,
            // Half the wall time to go, so that a rate measured up to twice too low (a clock
            // read in coarse quanta) does not oversleep; a slower clock than the wall's only
            // makes the thread look early and sleep again.
            Some(rate) if rate > 0.0 => {
                let wall_to_go = wait_ns as f64 / rate.max(1.0);
                Duration::from_nanos((wall_to_go / 2.0) as u64).clamp(Self::MIN_NAP, self.poll)
            }
            // Stood still for a window (a paused simulator), or no rate yet: short looks, so
            // that a clock that starts or resumes fast is caught within a millisecond of wall
            // time (a nap of a full poll would oversleep it by steps).
            _ => Self::LOOK.min(self.poll),
        }
    }
}

/// The control thread's state: everything one tick touches, allocated up front.
pub struct ControlTick {
    core: ControlCore,
    plans: Receiver<Box<Plan>>,
    recycle: Sender<Box<Plan>>,
    frame_stats: CameraStats,
    state: Arc<StateCell>,
    last_state: Option<StateSample>,
    executed: Arc<Mutex<ExecutedLog>>,
    records: HeapProd<TickRecord>,
    clock: Arc<dyn Clock>,
    out: Vec<f64>,
    stats: LiveStats,
    shared: Arc<Mutex<LiveStats>>,
}

impl ControlTick {
    /// Ticks the loop skipped after a stall: each missed its deadline.
    pub fn count_skipped(&mut self, ticks: u32) {
        self.stats.deadline_misses += u64::from(ticks);
    }

    /// One tick. `late_by` is how far past its deadline the thread woke.
    pub fn run(&mut self, late_by: Duration, period: Duration) {
        let start = Instant::now();
        while let Ok(plan) = self.plans.try_recv() {
            if let Some(old) = self.core.install(plan) {
                let _ = self.recycle.try_send(old);
            }
        }
        if let Some(sample) = self.state.try_read() {
            self.last_state = sample;
        }
        if let Some(s) = &self.last_state {
            self.core.observe_state(s);
        }
        let now_ns = self.clock.now_ns();
        let inputs = TickInputs {
            now_ns,
            frame_ns: self.frame_stats.stalest_stamp_ns(now_ns),
            state_ns: self.last_state.map(|s| s.stamp_ns),
        };
        let (report, retired) = self.core.tick(inputs, &mut self.out);
        for old in retired.into_iter().flatten() {
            let _ = self.recycle.try_send(old);
        }
        self.hand_over(report);
        let took = start.elapsed();
        self.stats.tick_latency.record(took.as_nanos() as u64);
        self.stats.tick_jitter.record(late_by.as_nanos() as u64);
        if took + late_by > period {
            self.stats.deadline_misses += 1;
        }
        self.stats.counters.clone_from(self.core.counters());
        if let Some(mut shared) = self.shared.try_lock() {
            shared.clone_from(&self.stats);
        }
    }

    /// The last tick, when the node stops: `ControlCore::shutdown`'s action, published after
    /// every tick before it.
    pub fn finish(&mut self) {
        let report = self.core.shutdown(self.clock.now_ns(), &mut self.out);
        tracing::info!(source = ?report.source, action = ?self.out, "stopping: the last action");
        self.hand_over(report);
        // Off the tick path: wait for the lock, so that the final stats hold this record too.
        self.shared.lock().clone_from(&self.stats);
    }

    /// The tick's record to the publisher, its action to the planner's history.
    fn hand_over(&mut self, report: TickReport) {
        let mut record = TickRecord {
            report,
            action: [0.0; MAX_ACTION_DIM],
            dim: self.out.len(),
            plan_seq: self.core.current_plan().map(|p| p.seq),
        };
        record.action[..self.out.len()].copy_from_slice(&self.out);
        if self.records.try_push(record).is_err() {
            self.stats.records_dropped += 1;
        }
        if let Some(mut executed) = self.executed.try_lock() {
            executed.push(record.report.now_ns, record.action);
        }
    }
}

pub struct LiveNode {
    stop: Arc<AtomicBool>,
    /// Stopped last, after the other threads, so that every tick record is published.
    stop_publisher: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    publisher: Option<JoinHandle<()>>,
    shared: Arc<Mutex<LiveStats>>,
    plan_latency: Arc<Mutex<Histogram>>,
}

impl LiveNode {
    /// The name of a thread of the node that has ended while it runs: they end only when
    /// stopped, so this one panicked, and the node no longer publishes a safe action per tick.
    pub fn ended_thread(&self) -> Option<String> {
        self.threads
            .iter()
            .chain(&self.publisher)
            .find(|t| t.is_finished())
            .map(|t| t.thread().name().unwrap_or("unnamed").to_owned())
    }

    /// Control statistics so far (tick latency, jitter, misses, counters) and plan latency.
    pub fn stats(&self) -> (LiveStats, Histogram) {
        (self.shared.lock().clone(), self.plan_latency.lock().clone())
    }

    /// Stop every thread (the control thread's last tick publishes `ControlCore::shutdown`'s
    /// action), wait for them, and log the latency summary.
    pub fn stop(mut self) -> (LiveStats, Histogram) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.stop_publisher.store(true, Ordering::Release);
        if let Some(p) = self.publisher.take() {
            let _ = p.join();
        }
        let (stats, plan) = self.stats();
        let (tick, jitter, plan_ms) = (
            stats.tick_latency.summary_ms(),
            stats.tick_jitter.summary_ms(),
            plan.summary_ms(),
        );
        tracing::info!(
            ticks = stats.counters.ticks,
            deadline_misses = stats.deadline_misses,
            tick_p50_ms = tick.p50_ms,
            tick_p99_ms = tick.p99_ms,
            tick_max_ms = tick.max_ms,
            jitter_p99_ms = jitter.p99_ms,
            plan_p50_ms = plan_ms.p50_ms,
            plan_p99_ms = plan_ms.p99_ms,
            "control loop stopped"
        );
        (stats, plan)
    }
}

pub struct LiveParts {
    pub task: PlannerTask,
    pub core: ControlCore,
    pub frames: Cameras,
    pub state: Arc<StateCell>,
    pub sink: Box<dyn ActionSink + Send>,
    pub clock: Arc<dyn Clock>,
    /// Goal messages (`topics.goal`); the planner thread takes them in order at its next step.
    pub goals: Arc<GoalInbox>,
    pub tick: Duration,
    pub step: Duration,
}

/// Goal messages queued between the subscriber and the planner thread.
const GOAL_QUEUE: usize = 16;

/// Goal messages from the subscriber's thread to the planner's, in order: a bounded queue the
/// planner drains at each step; a message that finds it full is dropped and counted.
pub struct GoalInbox {
    tx: Sender<GoalMessage>,
    rx: Receiver<GoalMessage>,
    dropped: AtomicU64,
}

impl Default for GoalInbox {
    fn default() -> Self {
        let (tx, rx) = bounded(GOAL_QUEUE);
        Self {
            tx,
            rx,
            dropped: AtomicU64::new(0),
        }
    }
}

impl GoalInbox {
    pub fn post(&self, message: GoalMessage) {
        if self.tx.try_send(message).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The oldest message not taken yet.
    pub fn take(&self) -> Option<GoalMessage> {
        self.rx.try_recv().ok()
    }

    /// Messages dropped so far (the queue was full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Sleep until `deadline`; returns how late the wake-up was.
fn sleep_until(deadline: Instant) -> Duration {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
    Instant::now().saturating_duration_since(deadline)
}

/// The other ends of a control tick's channels.
pub struct ControlPorts {
    /// Planner → control: new plans.
    pub plans: Sender<Box<Plan>>,
    /// Control → planner: plans no longer needed.
    pub recycled: Receiver<Box<Plan>>,
    /// Control → publisher: one record per tick.
    pub records: HeapCons<TickRecord>,
    /// The actions of the latest ticks, stamped (the planner's history reads them).
    pub executed: Arc<Mutex<ExecutedLog>>,
    /// The tick's statistics, copied in every tick when uncontended.
    pub stats: Arc<Mutex<LiveStats>>,
}

impl ControlTick {
    pub fn new(
        core: ControlCore,
        frame_stats: CameraStats,
        state: Arc<StateCell>,
        clock: Arc<dyn Clock>,
        action_dim: usize,
    ) -> (Self, ControlPorts) {
        let (plan_tx, plan_rx) = bounded::<Box<Plan>>(4);
        let (recycle_tx, recycle_rx) = bounded::<Box<Plan>>(8);
        let (records_tx, records_rx) = HeapRb::<TickRecord>::new(1024).split();
        let executed = Arc::new(Mutex::new(Recent::new(TICKS_KEPT, [0.0; MAX_ACTION_DIM])));
        let shared = Arc::new(Mutex::new(LiveStats::default()));
        let tick = Self {
            core,
            plans: plan_rx,
            recycle: recycle_tx,
            frame_stats,
            state,
            last_state: None,
            executed: executed.clone(),
            records: records_tx,
            clock,
            out: vec![0.0; action_dim],
            stats: LiveStats::default(),
            shared: shared.clone(),
        };
        let ports = ControlPorts {
            plans: plan_tx,
            recycled: recycle_rx,
            records: records_rx,
            executed,
            stats: shared,
        };
        (tick, ports)
    }
}

pub fn spawn(p: LiveParts) -> std::io::Result<LiveNode> {
    let stop = Arc::new(AtomicBool::new(false));
    let (copy_tx, copy_rx) = bounded::<Box<Plan>>(4);
    let plan_latency = Arc::new(Mutex::new(Histogram::default()));
    let planner_counts = Arc::new(PlannerCounts::default());
    let goal_status = Arc::new(Mutex::new(p.task.goal_status()));
    let state_counts = p.state.clone();
    let action_dim = p.task.planner().contract().layout.action_dim;
    let frame_stats = p.frames.stats();
    let control_clock = p.clock.clone();
    let (mut control, ports) = ControlTick::new(
        p.core,
        frame_stats.clone(),
        p.state.clone(),
        p.clock.clone(),
        action_dim,
    );
    let ControlPorts {
        plans: plan_tx,
        recycled: recycle_rx,
        records: records_rx,
        executed,
        stats: shared,
    } = ports;
    let mut threads = Vec::new();
    let (tick, step) = (p.tick, p.step);

    let s = stop.clone();
    threads.push(std::thread::Builder::new().name("df_control".into()).spawn(move || {
        let mut deadline = Instant::now() + tick;
        while !s.load(Ordering::Acquire) {
            let late = {
                let _wait = tracing::trace_span!("wait").entered();
                sleep_until(deadline)
            };
            let _tick = tracing::trace_span!("tick").entered();
            control.run(late, tick);
            deadline += tick;
            let skipped = skip_missed(&mut deadline, tick, tick);
            if skipped > 0 {
                control.count_skipped(skipped);
            }
        }
        control.finish();
    })?);

    let s = stop.clone();
    let (mut task, mut frames, state, clock) = (p.task, p.frames, p.state, p.clock);
    let (latency, counts) = (plan_latency.clone(), planner_counts.clone());
    let (goals, goal_out) = (p.goals, goal_status.clone());
    // A plan may take several steps (the steps after it catch up): those no more than
    // `max_lateness_ns` behind may plan, those further behind only enter the memory, as far
    // back as it reaches.
    let plan_slack = Duration::from_nanos(task.max_lateness_ns() as u64);
    let memory_reach = Duration::from_nanos(memory_reach_ns(&task, tick.as_nanos() as i64) as u64);
    threads.push(std::thread::Builder::new().name("df_planner".into()).spawn(move || {
        let mut buffers = PlanBuffers::new(recycle_rx);
        let mut executed_now = vec![0.0; action_dim];
        let (mut skipped_said, mut late_said) = (EverySecond::default(), EverySecond::default());
        let mut pacer = StepPacer::new(step, plan_slack, memory_reach);
        let mut napper = Napper::new(step);
        while !s.load(Ordering::Acquire) {
            let now_ns = clock.now_ns();
            let (slot_ns, skipped, late, reset) = match pacer.due(now_ns) {
                Due::Wait(ns) => {
                    std::thread::sleep(napper.nap(Instant::now(), now_ns, ns));
                    continue;
                }
                Due::Step {
                    slot_ns,
                    skipped,
                    late,
                    reset,
                } => (slot_ns, skipped, late, reset),
            };
            if reset {
                tracing::info!("the node's clock went back (a simulator reset?): the planner's memory starts anew");
                task.clock_reset();
            }
            // A state stream faster than the ticks may keep less than the reach.
            let unreachable = late && !state.reaches(slot_ns);
            let skipped = skipped + u64::from(unreachable);
            if skipped > 0 {
                // A planner much slower than its replan interval falls behind at every plan:
                // say so at most once a second, with what was skipped since.
                if let Some(skipped) = skipped_said.add(skipped) {
                    tracing::warn!(
                        skipped,
                        "the planner fell further behind than its memory reaches; skipping the missed steps"
                    );
                }
                task.steps_skipped();
                counts.steps_skipped.fetch_add(skipped, Ordering::Relaxed);
            }
            if unreachable {
                continue;
            }
            if late {
                counts.steps_recorded_late.fetch_add(1, Ordering::Relaxed);
                if let Some(late) = late_said.add(1) {
                    tracing::info!(
                        late,
                        "the planner fell more than a replan interval or an input timeout behind; \
                         the missed steps enter its memory without planning"
                    );
                }
            }
            while let Some(message) = goals.take() {
                let _ = task.receive_goal(&message); // logged there, counted in its status
            }
            task.goals_dropped(goals.dropped());
            let _plan = tracing::trace_span!("plan").entered();
            let (mut rgb, mut stamps) = ([&[][..]; MAX_CAMERAS], [0; MAX_CAMERAS]);
            let images = frames.latest(&mut rgb, &mut stamps);
            // The step is its slot's, however late it runs: the state then, and the action the
            // ticks before it executed, as a planner on time would have seen them.
            let executed_then = executed.lock().at(slot_ns - 1);
            executed_now.copy_from_slice(&executed_then.unwrap_or_default()[..action_dim]);
            let mut plan = buffers.take(|| task.new_plan());
            let sample = state.read_at(slot_ns);
            let outcome = match late {
                true => task.record_late(slot_ns, sample.as_ref(), &executed_now),
                false => task.step(slot_ns, sample.as_ref(), &executed_now, images, &mut plan),
            };
            match outcome {
                Ok(StepOutcome::Planned) => {
                    latency.lock().clone_from(task.latency());
                    let _ = copy_tx.try_send(plan.clone());
                    if let Err(unsent) = plan_tx.try_send(plan) {
                        buffers.keep(unsent.into_inner());
                    }
                }
                Ok(_) => buffers.keep(plan),
                Err(_) => {
                    // Logged by the task.
                    buffers.keep(plan);
                    counts.plan_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The goal and the distance to it, for the diagnostics (the next step retries a
            // moment the publisher holds it).
            if let Some(mut out) = goal_out.try_lock() {
                *out = task.goal_status();
            }
        }
    })?);

    let stop_publisher = Arc::new(AtomicBool::new(false));
    let s = stop_publisher.clone();
    let (mut sink, stats, latency) = (p.sink, shared.clone(), plan_latency.clone());
    let publish_clock = control_clock;
    let publisher_thread = std::thread::Builder::new().name("df_publish".into()).spawn(move || {
        let sources = StatSources {
            stats: &stats,
            plan_latency: &latency,
            planner: &planner_counts,
            frames: &frame_stats,
            goal: &goal_status,
            state: &state_counts,
        };
        publisher(records_rx, copy_rx, &mut *sink, &s, &sources, &*publish_clock)
    })?;
    Ok(LiveNode {
        stop,
        stop_publisher,
        threads,
        publisher: Some(publisher_thread),
        shared,
        plan_latency,
    })
}

/// A count said at most once a second: what accumulated since it was last said.
#[derive(Default)]
struct EverySecond {
    unsaid: u64,
    said_at: Option<Instant>,
}

impl EverySecond {
    fn add(&mut self, n: u64) -> Option<u64> {
        self.unsaid += n;
        if self.said_at.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        self.said_at = Some(Instant::now());
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// After a stall of `slack` or more past `deadline`, move it past the whole periods missed, so
/// that the loop does not run them back to back; returns how many were skipped.
fn skip_missed(deadline: &mut Instant, period: Duration, slack: Duration) -> u32 {
    let behind = Instant::now().saturating_duration_since(*deadline);
    if behind < slack {
        return 0;
    }
    let missed = (behind.as_nanos() / period.as_nanos()) as u32;
    *deadline += period * missed;
    missed
}

/// What the planner thread counts for the diagnostics.
#[derive(Default)]
struct PlannerCounts {
    plan_errors: AtomicU64,
    steps_recorded_late: AtomicU64,
    steps_skipped: AtomicU64,
}

struct StatSources<'a> {
    stats: &'a Mutex<LiveStats>,
    plan_latency: &'a Mutex<Histogram>,
    planner: &'a PlannerCounts,
    frames: &'a CameraStats,
    goal: &'a Mutex<Option<GoalStatus>>,
    state: &'a StateCell,
}

fn publisher(
    mut records: HeapCons<TickRecord>,
    plans: Receiver<Box<Plan>>,
    sink: &mut dyn ActionSink,
    stop: &AtomicBool,
    sources: &StatSources,
    clock: &dyn Clock,
) {
    let mut latest: Option<Box<Plan>> = None;
    let mut next_diag = Instant::now() + Duration::from_secs(1);
    let mut source_log = SourceLog::default();
    loop {
        // Read the flag first: once it is set no tick is left to come, so one more pass drains all.
        let stopping = stop.load(Ordering::Acquire);
        while let Ok(plan) = plans.try_recv() {
            sink.plan(&plan);
            latest = Some(plan);
        }
        let mut idle = true;
        while let Some(r) = records.try_pop() {
            let _publish = tracing::trace_span!("publish").entered();
            idle = false;
            let plan = latest.as_deref().filter(|p| Some(p.seq) == r.plan_seq);
            sink.action(&r.report, &r.action[..r.dim], plan);
            source_log.record(&r.report, Instant::now());
        }
        let now = Instant::now();
        // A last report when stopping: the counts to the end.
        if now >= next_diag || stopping {
            // 1 s from now, not from when this one was due: after a stall, a burst of reports a
            // few ms apart would each see no new tick.
            next_diag = now + Duration::from_secs(1);
            let s = sources.stats.lock().clone();
            let diag = Diagnostics::collect(DiagnosticInputs {
                counters: &s.counters,
                plan_errors: sources.planner.plan_errors.load(Ordering::Relaxed),
                steps_recorded_late: sources.planner.steps_recorded_late.load(Ordering::Relaxed),
                steps_skipped: sources.planner.steps_skipped.load(Ordering::Relaxed),
                states_rejected: sources.state.rejected(),
                deadline_misses: s.deadline_misses,
                records_dropped: s.records_dropped,
                tick_latency: s.tick_latency.summary_ms(),
                tick_jitter: s.tick_jitter.summary_ms(),
                plan_latency: sources.plan_latency.lock().summary_ms(),
                frames: sources.frames.snapshot(),
                goal: *sources.goal.lock(),
            });
            sink.diagnostics(clock.now_ns(), &diag);
        }
        if stopping {
            return;
        }
        if idle {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// The planner thread's plan buffers: the one a step did not send (it only recorded, or the
/// plan failed) and those the control thread is done with. A step plans into one of them, so
/// the planner allocates a plan only while none has come back yet.
struct PlanBuffers {
    spare: Option<Box<Plan>>,
    returned: Receiver<Box<Plan>>,
}

impl PlanBuffers {
    fn new(returned: Receiver<Box<Plan>>) -> Self {
        Self { spare: None, returned }
    }

    /// A buffer to plan into: a kept or returned one, else a `new` one. Empties the return
    /// channel, so the control thread always finds room in it: a plan it could not hand back
    /// would be freed inside a tick. Buffers beyond the one kept are freed here.
    fn take(&mut self, new: impl FnOnce() -> Plan) -> Box<Plan> {
        for plan in self.returned.try_iter() {
            self.spare.get_or_insert(plan);
        }
        self.spare.take().unwrap_or_else(|| Box::new(new()))
    }

    fn keep(&mut self, plan: Box<Plan>) {
        self.spare = Some(plan);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn planner_steps_are_due_at_slots_of_the_node_clock() {
        let ms = 1_000_000;
        let step = |slot_ms: i64, skipped| Due::Step {
            slot_ns: slot_ms * ms,
            skipped,
            late: false,
            reset: false,
        };
        // Steps of 100 ms, a slack of two, and a memory that reaches no further (a camera model).
        let pacer = || {
            StepPacer::new(
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_millis(200),
            )
        };
        let dues =
            |p: &mut StepPacer, clock_ms: &[i64]| -> Vec<Due> { clock_ms.iter().map(|&c| p.due(c * ms)).collect() };
        // ROS time before the first /clock reads 0: no step yet. Then a step at once.
        let mut p = pacer();
        assert_eq!(dues(&mut p, &[0, 0, 30]), [Due::Wait(0), Due::Wait(0), step(30, 0)]);
        // The next is due at 130: waits say how long; a plan that ends at 380 is followed by the
        // steps due at 230 and 330 back to back, each its own slot's, then a wait for 430.
        assert_eq!(dues(&mut p, &[60, 130]), [Due::Wait(70 * ms), step(130, 0)]);
        assert_eq!(
            dues(&mut p, &[380, 380, 380, 380]),
            [step(230, 0), step(330, 0), Due::Wait(50 * ms), Due::Wait(50 * ms)]
        );
        // A slow or paused simulator: one step per step of its clock however often it is asked.
        assert_eq!(
            dues(&mut p, &[400, 410, 420, 429, 430]),
            [
                Due::Wait(30 * ms),
                Due::Wait(20 * ms),
                Due::Wait(10 * ms),
                Due::Wait(ms),
                step(430, 0)
            ]
        );
        // Further behind than the slack (a plan of 560 ms): the 4 steps due at 530..830 are
        // skipped, this one is the 930 step's, and the cadence holds (next at 1030).
        assert_eq!(
            dues(&mut p, &[990, 1000, 1030]),
            [step(930, 4), Due::Wait(30 * ms), step(1030, 0)]
        );
        // Back by less than a clock reset (1 s): not a reset, just not due. Back by more: a new
        // start.
        assert_eq!(p.due(1100 * ms), Due::Wait(30 * ms));
        assert_eq!(p.due(500 * ms), Due::Wait(630 * ms));
        assert_eq!(
            p.due(5 * ms),
            Due::Step {
                slot_ns: 5 * ms,
                skipped: 0,
                late: false,
                reset: true
            }
        );
        assert_eq!(p.due(105 * ms), step(105, 0));
    }

    #[test]
    fn steps_too_late_to_plan_from_still_enter_the_memory_as_far_back_as_it_reaches() {
        let ms = 1_000_000;
        let step = |slot_ms: i64, skipped, late| Due::Step {
            slot_ns: slot_ms * ms,
            skipped,
            late,
            reset: false,
        };
        // Steps of 100 ms, a slack of two, a memory that reaches back 1 s.
        let mut p = StepPacer::new(
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_secs(1),
        );
        assert_eq!(p.due(30 * ms), step(30, 0, false));
        // A plan of 560 ms: the steps due at 130..330 are more than the slack behind, so they
        // only enter the memory; 430 and 530 may plan.
        let dues: Vec<Due> = (0..6).map(|_| p.due(590 * ms)).collect();
        assert_eq!(
            dues,
            [
                step(130, 0, true),
                step(230, 0, true),
                step(330, 0, true),
                step(430, 0, false),
                step(530, 0, false),
                Due::Wait(40 * ms)
            ]
        );
        // A stall of 1.5 s, beyond the reach: a gap, as without it.
        assert_eq!(p.due(2130 * ms), step(2130, 15, false));
    }

    /// The node clock's readings at each planner step, as the planner thread paces them with a
    /// clock running `speed` times the wall's, read in quanta of `quantum_ms` of its own, and
    /// steps (with their plans) that take `step_cost_ms` of wall time each.
    fn paced_steps(speed: i64, quantum_ms: i64, step_cost_ms: u64) -> Vec<i64> {
        let ms = 1_000_000;
        paced_steps_on(
            |wall| 1_000 * ms + (speed * wall.as_nanos() as i64) / (quantum_ms * ms) * (quantum_ms * ms),
            step_cost_ms,
        )
    }

    /// The node clock's readings at each planner step, as the planner thread paces them with
    /// the node clock `clock_at(wall time)` and steps that take `step_cost_ms` of wall time.
    fn paced_steps_on(clock_at: impl Fn(Duration) -> i64, step_cost_ms: u64) -> Vec<i64> {
        let step = Duration::from_millis(100);
        let (mut pacer, mut napper) = (StepPacer::new(step, 2 * step, 2 * step), Napper::new(step));
        let start = Instant::now();
        let mut wall = Duration::ZERO;
        let mut steps = Vec::new();
        while steps.len() < 50 {
            let clock_ns = clock_at(wall);
            match pacer.due(clock_ns) {
                Due::Wait(ns) => wall += napper.nap(start + wall, clock_ns, ns),
                Due::Step { .. } => {
                    steps.push(clock_ns);
                    wall += Duration::from_millis(step_cost_ms);
                }
            }
        }
        steps
    }

    #[test]
    fn a_clock_faster_than_the_wall_still_gets_one_step_per_step_of_it() {
        let ms = 1_000_000;
        for (speed, quantum_ms) in [(1, 1), (4, 1), (8, 4), (8, 20), (20, 10), (20, 50)] {
            let steps = paced_steps(speed, quantum_ms, 2);
            // Every step (after the first, at the start) within a clock quantum and a step's cost
            // of its slot, one step after the one before.
            let late = (quantum_ms + 2 * speed) * ms;
            for pair in steps[1..].windows(2) {
                let gap = pair[1] - pair[0];
                assert!(
                    (100 * ms - late..=100 * ms + late).contains(&gap),
                    "{speed}x real time, quantum {quantum_ms} ms: steps {} ms apart, in {:?}",
                    gap as f64 / 1e6,
                    steps.iter().map(|s| s / ms).collect::<Vec<_>>()
                );
            }
        }
        // A paused clock with a slot 30 ms ahead: looks a millisecond apart, not a spin.
        let mut napper = Napper::new(Duration::from_millis(100));
        let (start, mut wall, mut looks) = (Instant::now(), Duration::ZERO, 0);
        while wall < Duration::from_secs(1) {
            wall += napper.nap(start + wall, 5 * ms, 30 * ms);
            looks += 1;
        }
        assert!(looks <= 1_000, "{looks} looks at a paused clock in a second");
    }

    #[test]
    fn a_fast_clock_that_pauses_and_resumes_gets_no_steps_bunched() {
        // 8x real time, read in 1 ms quanta, paused from 0.3 s to 0.8 s of wall time.
        let ms = 1_000_000;
        let (pause, resume) = (Duration::from_millis(300), Duration::from_millis(800));
        let clock = |wall: Duration| {
            let running = wall.min(pause) + wall.saturating_sub(resume);
            1_000 * ms + 8 * running.as_nanos() as i64 / ms * ms
        };
        let steps = paced_steps_on(clock, 2);
        // Within a quantum and two steps' cost (16 ms of the clock) of one step after the other.
        for pair in steps[1..].windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                (83 * ms..=117 * ms).contains(&gap),
                "steps {} ms apart, in {:?}",
                gap as f64 / 1e6,
                steps.iter().map(|s| s / ms).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn fallbacks_are_said_at_once_then_at_most_once_a_second_and_the_last_change_too() {
        let report = |source| TickReport {
            now_ns: 0,
            source,
            faults: Default::default(),
            plan_index: None,
            safety: Default::default(),
            late_dropped: 0,
            goal_held: false,
        };
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut log = SourceLog::default();
        assert_eq!(
            log.record(&report(Source::Hold), at(0)),
            Some(1),
            "start-up: no plan yet"
        );
        assert_eq!(log.record(&report(Source::Hold), at(10)), None);
        // Flapping within the second: nothing said until a second has passed.
        assert_eq!(log.record(&report(Source::Plan), at(20)), None);
        assert_eq!(log.record(&report(Source::Hold), at(30)), None);
        assert_eq!(log.record(&report(Source::Plan), at(40)), None);
        assert_eq!(
            log.record(&report(Source::Plan), at(1000)),
            Some(3),
            "the last change, with the count"
        );
        assert_eq!(
            log.record(&report(Source::Plan), at(3000)),
            None,
            "no change: nothing said"
        );
        assert_eq!(log.record(&report(Source::Stop), at(3010)), Some(1));
    }
    use super::*;

    fn plan() -> Plan {
        Plan::with_capacity(4, 2, 4, 24)
    }

    #[test]
    fn plan_buffers_are_reused_and_the_return_channel_is_emptied() {
        let (returns, returned) = bounded::<Box<Plan>>(8);
        let mut buffers = PlanBuffers::new(returned);
        let mut made = 0;
        let mut take = |buffers: &mut PlanBuffers| {
            buffers.take(|| {
                made += 1;
                plan()
            })
        };
        let at = |p: &Plan| p as *const Plan;
        // Step 1 plans into a new buffer A and sends it to the control thread.
        let a = take(&mut buffers);
        let a_at = at(&a);
        // Step 2 only records, into a new buffer B, which it keeps.
        let b = take(&mut buffers);
        let b_at = at(&b);
        buffers.keep(b);
        // Step 3 plans into B; the control thread installs it and hands A back.
        let b = take(&mut buffers);
        assert_eq!(at(&b), b_at);
        returns.send(a).unwrap();
        // Step 4 takes A; returns beyond the one kept are emptied from the channel and freed.
        let a = take(&mut buffers);
        assert_eq!(at(&a), a_at);
        buffers.keep(a);
        returns.send(Box::new(plan())).unwrap();
        returns.send(Box::new(plan())).unwrap();
        let a = take(&mut buffers);
        assert_eq!(at(&a), a_at, "the kept buffer is used first");
        assert!(returns.is_empty(), "every returned buffer was taken off the channel");
        drop(b);
        assert_eq!(made, 2, "two buffers served four steps");
    }

    fn message(x: f64) -> GoalMessage {
        GoalMessage {
            position: [x, 0.0],
            frame_id: String::new(),
        }
    }

    #[test]
    fn the_goal_inbox_hands_over_goals_in_order_and_counts_what_did_not_fit() {
        let inbox = GoalInbox::default();
        assert_eq!(inbox.take(), None);
        for i in 0..GOAL_QUEUE + 2 {
            inbox.post(message(i as f64));
        }
        let taken: Vec<f64> = std::iter::from_fn(|| inbox.take()).map(|m| m.position[0]).collect();
        assert_eq!(taken, (0..GOAL_QUEUE).map(|i| i as f64).collect::<Vec<_>>());
        assert_eq!(inbox.dropped(), 2);
    }
}
