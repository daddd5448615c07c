//! The live loop's wiring with its three threads: plans flow from the planner to the control
//! tick, every tick reaches the sink, and a stalled robot state makes the loop fall back.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use df_planner::config::NodeConfig;
use df_planner::control::live::{self, Clock, GoalInbox, LiveNode, LiveParts, SystemClock};
use df_planner::control::{ActionSink, Diagnostics, Fault, Source, StateCell, StateSample, TickReport};
use df_planner::frames::{camera_rings, CameraRing, Cameras};
use df_planner::node::node_parts;
use df_planner::planner::Plan;

#[derive(Default)]
struct Seen {
    actions: Vec<(Source, Vec<f64>)>,
    plans: usize,
    plan_t0_ns: Vec<i64>,
    diagnostics: Option<Diagnostics>,
}

struct Recorder(Arc<Mutex<Seen>>);

impl ActionSink for Recorder {
    fn action(&mut self, report: &TickReport, action: &[f64], _: Option<&Plan>) {
        self.0.lock().unwrap().actions.push((report.source, action.to_vec()));
    }
    fn plan(&mut self, plan: &Plan) {
        let mut seen = self.0.lock().unwrap();
        seen.plans += 1;
        seen.plan_t0_ns.push(plan.t0_ns);
    }
    fn diagnostics(&mut self, _: i64, d: &Diagnostics) {
        self.0.lock().unwrap().diagnostics = Some(d.clone());
    }
}

/// A shipped point-mass config (`config/NAME.yaml`) on the CPU, its camera optional (these
/// tests feed it none).
fn pointmass_config(name: &str) -> NodeConfig {
    let mut cfg = NodeConfig::load(&common::repo().join(format!("config/{name}.yaml"))).unwrap();
    cfg.model.runtime = common::cpu();
    cfg.camera.required = false;
    cfg
}

/// The node of `cfg` on the system clock at 50 Hz, planning every 100 ms.
fn spawn(
    cfg: &NodeConfig,
    frames: Cameras,
    state: Arc<StateCell>,
    sink: Box<dyn ActionSink + Send>,
    goals: Arc<GoalInbox>,
) -> LiveNode {
    spawn_on(cfg, frames, state, sink, goals, Arc::new(SystemClock))
}

/// The same on `clock`.
fn spawn_on(
    cfg: &NodeConfig,
    frames: Cameras,
    state: Arc<StateCell>,
    sink: Box<dyn ActionSink + Send>,
    goals: Arc<GoalInbox>,
    clock: Arc<dyn Clock>,
) -> LiveNode {
    let (task, core) = node_parts(cfg).unwrap();
    live::spawn(LiveParts {
        task,
        core,
        frames,
        state,
        sink,
        clock,
        goals,
        tick: Duration::from_millis(20),
        step: Duration::from_millis(100),
    })
    .unwrap()
}

#[test]
fn plans_reach_the_tick_and_every_tick_reaches_the_sink() {
    let cfg = pointmass_config("pointmass");
    let ring = CameraRing {
        topic: cfg.topics.image.clone(),
        width: cfg.camera.width,
        height: cfg.camera.height,
        capacity: 2,
        resize: cfg.camera.resize,
    };
    let (_frames_in, frames) = camera_rings(&[ring]);
    let state = Arc::new(StateCell::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = Box::new(Recorder(seen.clone()));
    let node = spawn(&cfg, frames, state.clone(), sink, Default::default());
    // A fresh state for 1 s, then none for 0.6 s (longer than state_timeout_s = 0.3).
    for _ in 0..50 {
        state.publish(StateSample::new(clock.now_ns(), &[0.2, -0.1], &[0.0, 0.0]).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(600));
    let (stats, plan_latency) = node.stop();
    let seen = seen.lock().unwrap();
    let c = &stats.counters;
    assert!(c.ticks >= 40, "{} ticks in 1.6 s at 50 Hz", c.ticks);
    assert_eq!(
        seen.actions.len() as u64,
        c.ticks + 1,
        "every tick reached the sink, and the last action"
    );
    assert_eq!(stats.records_dropped, 0);
    assert!(seen.plans >= 5 && plan_latency.count() >= 5, "{} plans", seen.plans);
    assert!(
        seen.actions.iter().any(|(s, _)| *s == Source::Plan),
        "plans were executed"
    );
    assert!(
        c.faults[Fault::StateStale as usize] > 0,
        "the stalled state was noticed"
    );
    let n = seen.actions.len();
    assert_eq!(seen.actions[n - 2].0, Source::Hold, "and the loop held");
    // Stopped: the point mass's actions are forces, so the last one is the stop action.
    assert_eq!(
        seen.actions[n - 1],
        (Source::Stop, cfg.control.stop_action.clone()),
        "the last action"
    );
}

/// A sink whose publishing panics on the first tick.
struct Panicking;

impl ActionSink for Panicking {
    fn action(&mut self, _: &TickReport, _: &[f64], _: Option<&Plan>) {
        panic!("publisher failure (test)");
    }
    fn plan(&mut self, _: &Plan) {}
    fn diagnostics(&mut self, _: i64, _: &Diagnostics) {}
}

#[test]
fn a_thread_that_panics_is_reported_so_the_node_can_stop() {
    let (_frames_in, frames) = camera_rings(&[]);
    let state = Arc::new(StateCell::default());
    let node = spawn(
        &pointmass_config("pointmass"),
        frames,
        state,
        Box::new(Panicking),
        Default::default(),
    );
    let mut ended = None;
    for _ in 0..100 {
        ended = node.ended_thread();
        if ended.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ended.as_deref(), Some("df_publish"));
    node.stop();
}

#[test]
fn goal_messages_reach_the_planner_thread_in_order_and_the_diagnostics_count_them() {
    use df_planner::planner::{GoalMessage, GoalStatus};

    // Goals on /goal_pose in frame map, within [-2, 2]².
    let cfg = pointmass_config("pointmass_goals");
    let (_frames_in, frames) = camera_rings(&[]);
    let state = Arc::new(StateCell::default());
    let clock = SystemClock;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let goals = Arc::new(GoalInbox::default());
    let sink = Box::new(Recorder(seen.clone()));
    let node = spawn(&cfg, frames, state.clone(), sink, goals.clone());
    let goal = |x, y| GoalMessage {
        position: [x, y],
        frame_id: "map".into(),
    };
    let counted = |seen: &Seen| seen.diagnostics.as_ref().and_then(|d| d.goal).map(|g| g.received);
    // Mid-run, three goals at once: two in the bounds, then one outside them. The planner
    // takes all three in order, so the second is the goal and the third is refused. Wait (up
    // to 20 s on a busy machine) for the diagnostics, once a second, to count them.
    for i in 0..1000 {
        state.publish(StateSample::new(clock.now_ns(), &[0.2, -0.1], &[0.0, 0.0]).unwrap());
        if i == 10 {
            goals.post(goal(-1.0, 1.0));
            goals.post(goal(0.5, -0.5));
            goals.post(goal(3.0, 0.0));
        }
        if counted(&seen.lock().unwrap()) == Some(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    node.stop();
    let seen = seen.lock().unwrap();
    assert!(seen.plans >= 2, "{} plans", seen.plans);
    let diagnostics = seen.diagnostics.as_ref().expect("diagnostics once a second");
    let status = diagnostics.goal.expect("the node has a goal reward");
    // The state (0.2, -0.1) is 0.5 from the goal.
    assert!((status.distance.unwrap() - 0.5).abs() < 1e-9, "{status:?}");
    assert_eq!(
        status,
        GoalStatus {
            target: Some([0.5, -0.5]),
            guided: true,
            received: 3,
            rejected: 1,
            dropped: 0,
            distance: status.distance,
            reached: Some(false),
        }
    );
}

/// A clock that moves only when told: sim time.
#[derive(Default)]
struct SimClock(std::sync::atomic::AtomicI64);

impl Clock for SimClock {
    fn now_ns(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn a_paused_sim_clock_gives_the_planner_no_steps() {
    let cfg = pointmass_config("pointmass"); // replans every 2 steps of 100 ms
    let (_frames_in, frames) = camera_rings(&[]);
    let state = Arc::new(StateCell::default());
    let clock = Arc::new(SimClock::default());
    clock.0.store(1_000_000_000, std::sync::atomic::Ordering::SeqCst);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = Box::new(Recorder(seen.clone()));
    let node = spawn_on(&cfg, frames, state.clone(), sink, Default::default(), clock.clone());
    let fresh_state = || state.publish(StateSample::new(clock.now_ns(), &[0.2, -0.1], &[0.0, 0.0]).unwrap());
    // Paused for 0.8 s of wall time (8 wall steps): one step, its plan, and nothing more.
    for _ in 0..40 {
        fresh_state();
        std::thread::sleep(Duration::from_millis(20));
    }
    let paused_plans = seen.lock().unwrap().plans;
    // Running at real time for 0.8 s: a step each 100 ms, a plan every other one.
    for i in 1..=40 {
        clock.0.fetch_add(20_000_000, std::sync::atomic::Ordering::SeqCst);
        if i % 5 == 0 {
            fresh_state();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    node.stop();
    let plans = seen.lock().unwrap().plans;
    assert!(paused_plans <= 1, "{paused_plans} plans while the clock stood still");
    assert!(
        plans >= paused_plans + 2,
        "{plans} plans after it ran, {paused_plans} before"
    );
}

/// The point-mass node (a plan every 2 steps of 100 ms) on a sim clock reading 1 s, with the
/// state `publish` makes for then, after its first step: the node, its state cell, the clock and
/// what reached the sink.
fn pointmass_on_sim_clock(
    publish: impl Fn(&StateCell, i64),
) -> (LiveNode, Arc<StateCell>, Arc<SimClock>, Arc<Mutex<Seen>>) {
    let cfg = pointmass_config("pointmass");
    let (_frames_in, frames) = camera_rings(&[]);
    let state = Arc::new(StateCell::default());
    let clock = Arc::new(SimClock::default());
    publish(&state, 1_000_000_000);
    clock.0.store(1_000_000_000, std::sync::atomic::Ordering::SeqCst);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = Box::new(Recorder(seen.clone()));
    let node = spawn_on(&cfg, frames, state.clone(), sink, Default::default(), clock.clone());
    std::thread::sleep(Duration::from_millis(200));
    (node, state, clock, seen)
}

/// A planner step that runs late (its slot passed while the planner was busy, here a sim clock
/// that jumps three steps at a time) is still its slot's step: it reads the state stamped at
/// the slot, and its plan starts there, as a planner on time would have planned.
#[test]
fn a_planner_behind_its_clock_plans_each_step_as_of_its_slot() {
    let ms = 1_000_000;
    let publish = |state: &StateCell, t_ns: i64| {
        let x = t_ns as f64 * 1e-10; // a state that moves: 0.1 per 1 s
        state.publish(StateSample::new(t_ns, &[x, -0.1], &[0.1, 0.0]).unwrap());
    };
    let (node, state, clock, seen) = pointmass_on_sim_clock(publish);
    let publish = |t_ns: i64| publish(&state, t_ns);
    // Every 300 ms of sim time at once: the steps at +100 and +200 run late, back to back.
    for jump in 1..=6 {
        let base = 1_000 * ms + (jump - 1) * 300 * ms;
        for k in 1..=3 {
            publish(base + k * 100 * ms);
        }
        clock.0.store(base + 300 * ms, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
    }
    node.stop();
    let t0: Vec<i64> = seen.lock().unwrap().plan_t0_ns.iter().map(|t| t / ms).collect();
    // One plan every 2 steps, at 1000, 1200, ... however the clock read when it ran.
    let expected: Vec<i64> = (0..t0.len() as i64).map(|k| 1_000 + 200 * k).collect();
    assert!(t0.len() >= 9, "{t0:?}");
    assert_eq!(t0, expected);
}

/// A planner further behind its clock than it may plan late (a replan interval here): the
/// steps it missed still enter its memory, each as of its slot, without a plan; the plan they
/// were due for is made at the first step within the slack, and the schedule goes on. The
/// states come at 1 kHz, as from an arm's driver: the state cell reaches back as far as the
/// planner's memory does, so none of the steps is skipped.
#[test]
fn a_planner_far_behind_records_the_missed_steps_and_plans_once_back_within_its_slack() {
    let ms = 1_000_000;
    let publish = |state: &StateCell, t_ns: i64| {
        state.publish(StateSample::new(t_ns, &[0.0, -0.1], &[0.1, 0.0]).unwrap());
    };
    // Replans every 2 steps of 100 ms: a slack of 200 ms.
    let (node, state, clock, seen) = pointmass_on_sim_clock(publish);
    let publish = |t_ns: i64| publish(&state, t_ns);
    // One jump of 1 s: the steps at 1100..1700 are more than 200 ms behind (recorded only,
    // though 1200..1600 were due for plans), 1800 plans the due plan, 1900 records, 2000 is due.
    for k in 1..=1000 {
        publish(1_000 * ms + k * ms);
    }
    clock.0.store(2_000 * ms, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    // The publisher's last report, at the stop, has the counts to the end.
    node.stop();
    let seen = seen.lock().unwrap();
    let t0: Vec<i64> = seen.plan_t0_ns.iter().map(|t| t / ms).collect();
    assert_eq!(t0, [1_000, 1_800, 2_000]);
    let d = seen.diagnostics.as_ref().expect("a diagnostics report");
    assert_eq!((d.steps_recorded_late, d.steps_skipped), (7, 0));
}
