//! Real-time discipline of the control tick: once running, a tick allocates nothing (counted
//! by a global allocator around it), and every tick publishes a safe action whatever the plan
//! and inputs do.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use df_planner::config::{Fallback, NodeConfig};
use df_planner::control::live::{Clock, ControlTick};
use df_planner::control::{
    ControlCore, ControlParams, Fault, JointSelection, PdExecution, Safety, Source, StateCell, StateRejected,
    StateSample, TickInputs,
};
use df_planner::diffusion::{DenoiseError, Denoiser};
use df_planner::frames::{camera_rings, CameraRing, ImageView, Resize, MAX_CAMERAS};
use df_planner::node::planner_settings;
use df_planner::planner::{DfPlanner, GoalReward, Plan, PlanHold};
use ndarray::{ArrayView2, ArrayView3, ArrayViewMut3};
use ringbuf::traits::Consumer;

mod common;

struct Counting;

thread_local! {
    // Per thread, so that other tests running in parallel do not count.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    // Inside an ONNX Runtime call: counted apart (`InsideRuntime`).
    static IN_RUNTIME: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static RUNTIME_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn note() {
    if COUNTING.with(Cell::get) {
        let counter = if IN_RUNTIME.with(Cell::get) {
            &RUNTIME_ALLOCATIONS
        } else {
            &ALLOCATIONS
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A clock the test moves by hand.
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::Relaxed) as i64
    }
}

const MS: i64 = 1_000_000;

fn params(fallback: Fallback, camera_required: bool) -> ControlParams {
    ControlParams {
        fallback,
        stop_action: vec![0.0, 0.0],
        camera_required,
        camera_timeout_ns: 200 * MS,
        state_timeout_ns: 200 * MS,
        max_plan_age_ns: None,
        hold_timeout_ns: None,
        measured_action: vec![],
    }
}

fn core_from(params: ControlParams, max_rate: f64) -> ControlCore {
    ControlCore::new(
        params,
        Safety::new(vec![-1.0; 2], vec![1.0; 2], &[max_rate, max_rate], 0.02),
    )
}

fn core(fallback: Fallback, camera_required: bool) -> ControlCore {
    core_from(params(fallback, camera_required), 100.0)
}

fn core_with_rate(fallback: Fallback, camera_required: bool, max_rate: f64) -> ControlCore {
    core_from(params(fallback, camera_required), max_rate)
}

fn plan(t0_ns: i64, actions: &[[f64; 2]]) -> Box<Plan> {
    let mut p = Plan::with_capacity(actions.len(), 2, 2, 4);
    p.set_len(actions.len());
    p.t0_ns = t0_ns;
    p.dt_ns = 100 * MS;
    for (i, a) in actions.iter().enumerate() {
        p.action_mut(i).copy_from_slice(a);
    }
    Box::new(p)
}

#[test]
fn resizing_camera_frames_into_the_ring_does_not_allocate() {
    let ring = CameraRing {
        topic: "/camera".into(),
        width: 32,
        height: 32,
        capacity: 2,
        resize: Resize::Area,
    };
    let (mut frames_in, mut frames_out) = camera_rings(&[ring]);
    let data = vec![7u8; 64 * 48 * 3];
    let image = |k: i64| ImageView {
        encoding: "bgr8",
        width: 64,
        height: 48,
        step: 64 * 3,
        data: &data,
        stamp_ns: k * MS,
    };
    COUNTING.with(|c| c.set(true));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for k in 1..=100 {
        frames_in[0].write(&image(k)).unwrap();
        if k % 3 == 0 {
            let (mut rgb, mut stamps) = ([&[][..]; MAX_CAMERAS], [0; MAX_CAMERAS]);
            let latest = frames_out.latest(&mut rgb, &mut stamps).unwrap();
            assert_eq!((&latest.rgb[0][..3], latest.stamps_ns[0]), (&[7, 7, 7][..], k * MS));
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    COUNTING.with(|c| c.set(false));
    assert_eq!(allocations, 0);
    assert_eq!(frames_out.stats().snapshot().received, 100);
}

#[test]
fn reading_joint_states_by_name_does_not_allocate_even_to_reject_one() {
    let selection = JointSelection::new(&["ee_x".into(), "ee_y".into()]).unwrap();
    let driver: Vec<String> = ["gripper_finger", "ee_y", "ee_x"].map(String::from).to_vec();
    let other_robot: Vec<String> = ["wrist", "elbow"].map(String::from).to_vec();
    COUNTING.with(|c| c.set(true));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for k in 0..1000 {
        let sample = selection.sample(k, &driver, &[0.5, 2.0, 1.0], &[]).unwrap();
        assert_eq!(sample.position[..sample.joints], [1.0, 2.0]);
        let rejected = selection.sample(k, &other_robot, &[1.0, 2.0], &[]);
        assert!(matches!(rejected, Err(StateRejected::Joint { joint: "ee_x", .. })));
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    COUNTING.with(|c| c.set(false));
    assert_eq!(allocations, 0);
}

#[test]
fn a_running_control_tick_does_not_allocate() {
    let ring = CameraRing {
        topic: "/camera".into(),
        width: 2,
        height: 2,
        capacity: 2,
        resize: Resize::Exact,
    };
    let (mut frames_in, mut frames_out) = camera_rings(&[ring]);
    let state = Arc::new(StateCell::default());
    let clock = Arc::new(ManualClock(AtomicU64::new(1_000 * MS as u64)));
    let (mut tick, mut ports) = ControlTick::new(
        core(Fallback::Hold, true),
        frames_out.stats(),
        state.clone(),
        clock.clone(),
        2,
    );
    let image = ImageView {
        encoding: "rgb8",
        width: 2,
        height: 2,
        step: 6,
        data: &[0; 12],
        stamp_ns: 1_000 * MS,
    };
    frames_in[0].write(&image).unwrap();
    state.publish(StateSample::new(1_000 * MS, &[0.1, 0.2], &[0.0, 0.0]).unwrap());
    // Plans are made (and allocated) by the planner thread, before the ticks we count: one
    // every 400 ms, each 800 ms long, over the first 900 ticks.
    let plans: Vec<Box<Plan>> = (0..45)
        .map(|k| plan(1_000 * MS + k * 400 * MS, &[[0.1, 0.1]; 8]))
        .collect();
    let period = Duration::from_millis(20);
    tick.run(Duration::ZERO, period); // first tick: warm-up outside the count

    COUNTING.with(|c| c.set(true));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let mut plans = plans.into_iter();
    let mut from_plan = 0;
    for i in 0..1_000u64 {
        if i % 20 == 0 {
            if let Some(p) = plans.next() {
                // Moving a preallocated plan through the bounded channel is part of the tick.
                ports.plans.try_send(p).unwrap();
            }
        }
        let now = clock.0.fetch_add(20 * MS as u64, Ordering::Relaxed) as i64 + 20 * MS;
        // Fresh inputs for 900 ticks (the plan path), then none (the fallback path).
        if i < 900 {
            state.publish(StateSample::new(now, &[0.1, 0.2], &[0.0, 0.0]).unwrap());
            frames_in[0].write(&ImageView { stamp_ns: now, ..image }).unwrap();
            // The planner thread takes the newest frame, freeing the ring's slots.
            let _ = frames_out.latest(
                &mut [&[]; df_planner::frames::MAX_CAMERAS],
                &mut [0; df_planner::frames::MAX_CAMERAS],
            );
        }
        tick.run(Duration::from_micros(50), period);
        // Drain what the publisher thread would take, and recycle as the planner would.
        while let Some(record) = ports.records.try_pop() {
            from_plan += u32::from(record.report.source == Source::Plan);
        }
        while let Ok(p) = ports.recycled.try_recv() {
            std::mem::forget(p); // freeing is the planner thread's business, not the tick's
        }
    }
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    COUNTING.with(|c| c.set(false));
    println!("allocations in 1000 control ticks ({from_plan} from a plan): {allocations}");
    assert_eq!(allocations, 0);
    assert!(from_plan >= 850, "{from_plan} ticks took the plan path");
    let stats = ports.stats.lock();
    assert_eq!(stats.counters.ticks, 1_001);
    assert!(
        stats.counters.faults[Fault::StateStale as usize] > 0,
        "state went stale as the clock ran"
    );
}

/// D4RL's PD gains on [x, y, vx, vy].
fn pd_execution(track_plan: bool, tempo: f64) -> PdExecution {
    PdExecution {
        position_dims: [0, 1],
        velocity_offset: 2,
        kp: 10.0,
        kd: 4.0,
        track_plan,
        tempo,
    }
}

/// An 8-step plan on [x, y, vx, vy], a step every 100 ms, its steps written by `step`.
fn eight_step_plan(step: impl Fn(&mut Plan, usize)) -> Plan {
    let mut p = Plan::with_capacity(8, 2, 4, 6);
    p.set_len(8);
    p.dt_ns = 100 * MS;
    for k in 0..8 {
        step(&mut p, k);
    }
    p
}

#[test]
fn a_pd_controller_in_the_tick_holds_the_goal_from_the_plans_arrival_without_allocating() {
    let mut c = core(Fallback::Hold, false).with_execution(pd_execution(false, 1.0), 4);
    // An 8-step plan on [x, y, vx, vy] that comes within the hold radius at step 3.
    let mut p = eight_step_plan(|p, k| p.action_mut(k).copy_from_slice(&[0.1, 0.1]));
    p.hold = Some(PlanHold {
        from: 3,
        goal: [1.0, 0.5],
    });
    c.install(Box::new(p));
    let state = |t| StateSample::new(t, &[0.9, 0.5], &[0.1, 0.0]).unwrap();
    c.observe_state(&state(40 * MS));
    assert_eq!(
        tick(&mut c, 50 * MS, None, Some(40 * MS)),
        (Source::Plan, vec![], [0.1, 0.1])
    );
    assert_eq!(c.counters().goal_held, 0);

    COUNTING.with(|c| c.set(true));
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    c.observe_state(&state(340 * MS));
    let (source, faults, out) = tick(&mut c, 350 * MS, None, Some(340 * MS));
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    COUNTING.with(|c| c.set(false));
    assert_eq!(allocations, 0);
    // kp·(goal − x) + kd·(0 − vx), kp·(goal − y) + kd·(0 − vy), with x carried the state's
    // 10 ms forward at vx: 0.9 + 0.1·0.01.
    assert_eq!((source, faults), (Source::Plan, vec![]));
    assert!((out[0] - 0.59).abs() < 1e-12 && out[1].abs() < 1e-12, "{out:?}");
    assert_eq!(c.counters().goal_held, 1);
    // Ticks between states act on where the robot is by now: 110 ms on, x = 0.911.
    let (_, _, out) = tick(&mut c, 450 * MS, None, Some(340 * MS));
    assert!((out[0] - 0.49).abs() < 1e-12, "{out:?}");
    assert_eq!(c.counters().goal_held, 2);
    // A stale state is a fault as ever: the tick falls back rather than act on it.
    let (source, faults, _) = tick(&mut c, 600 * MS, None, Some(340 * MS));
    assert_eq!((source, faults), (Source::Hold, vec![Fault::StateStale]));
    assert_eq!(c.counters().goal_held, 2);
}

#[test]
fn a_plan_tracked_twice_as_fast_runs_out_at_half_its_length() {
    let mut c = core(Fallback::Hold, false).with_execution(pd_execution(true, 2.0), 4);
    // An 8-step plan on [x, y, vx, vy] moving along x at speed 1.
    let p = eight_step_plan(|p, k| p.observation_mut(k).copy_from_slice(&[k as f64, 0.0, 1.0, 0.0]));
    c.install(Box::new(p));
    let at = |t| StateSample::new(t, &[6.95, 0.0], &[2.0, 0.0]).unwrap();
    c.observe_state(&at(300 * MS));
    // Step 3 tracks the last planned state (plan time 7: x 7, at twice its speed 1).
    let (source, faults, out) = tick(&mut c, 300 * MS, None, Some(300 * MS));
    assert_eq!((source, faults), (Source::Plan, vec![]));
    assert!(
        (out[0] - 10.0 * 0.05).abs() < 1e-12,
        "kp·(7 − 6.95) + kd·(2 − 2): {out:?}"
    );
    // Step 4 would be plan time 9: the plan has nothing to say, as at step 8 when run as planned.
    c.observe_state(&at(400 * MS));
    let (source, faults, _) = tick(&mut c, 400 * MS, None, Some(400 * MS));
    assert_eq!((source, faults), (Source::Hold, vec![Fault::PlanExhausted]));
}

fn tick(
    core: &mut ControlCore,
    now_ns: i64,
    frame_ns: Option<i64>,
    state_ns: Option<i64>,
) -> (Source, Vec<Fault>, [f64; 2]) {
    let mut out = [0.0; 2];
    let (r, _) = core.tick(
        TickInputs {
            now_ns,
            frame_ns,
            state_ns,
        },
        &mut out,
    );
    (r.source, r.faults.iter().collect(), out)
}

#[test]
fn every_fault_falls_back_and_is_counted() {
    let fresh = |t| Some(t - 10 * MS);
    for fallback in [Fallback::Hold, Fallback::Stop] {
        let expected_source = if fallback == Fallback::Hold {
            Source::Hold
        } else {
            Source::Stop
        };
        let mut c = core_from(
            ControlParams {
                max_plan_age_ns: Some(350 * MS),
                ..params(fallback, true)
            },
            100.0,
        );
        // No plan yet.
        let (src, faults, out) = tick(&mut c, 0, fresh(0), fresh(0));
        assert_eq!((src, faults, out), (expected_source, vec![Fault::NoPlan], [0.0, 0.0]));
        // A plan: actions are used at their time.
        c.install(plan(100 * MS, &[[0.5, -0.5], [0.6, -0.6], [f64::NAN, 0.0]]));
        let (src, faults, out) = tick(&mut c, 100 * MS, fresh(100 * MS), fresh(100 * MS));
        assert_eq!((src, faults.len(), out), (Source::Plan, 0, [0.5, -0.5]));
        // Camera stale.
        let (src, faults, _) = tick(&mut c, 150 * MS, Some(-500 * MS), fresh(150 * MS));
        assert_eq!((src, faults), (expected_source, vec![Fault::CameraStale]));
        // State stale.
        let (src, faults, _) = tick(&mut c, 160 * MS, fresh(160 * MS), Some(-500 * MS));
        assert_eq!((src, faults), (expected_source, vec![Fault::StateStale]));
        // A NaN action is never published.
        let (src, faults, out) = tick(&mut c, 300 * MS, fresh(300 * MS), fresh(300 * MS));
        assert_eq!((src, faults), (expected_source, vec![Fault::NonFinite]));
        assert!(out.iter().all(|v| v.is_finite()));
        // The watchdog: the plan ran out and no new one came.
        let (src, faults, _) = tick(&mut c, 400 * MS, fresh(400 * MS), fresh(400 * MS));
        assert_eq!((src, faults), (expected_source, vec![Fault::PlanExhausted]));
        // A long plan is not run beyond max_plan_age (the planner hung after it).
        c.install(plan(500 * MS, &[[0.1, 0.1]; 10]));
        assert_eq!(tick(&mut c, 500 * MS, fresh(500 * MS), fresh(500 * MS)).0, Source::Plan);
        let (src, faults, _) = tick(&mut c, 850 * MS, fresh(850 * MS), fresh(850 * MS));
        assert_eq!((src, faults.len()), (Source::Plan, 0), "350 ms old: still due");
        let (src, faults, _) = tick(&mut c, 900 * MS, fresh(900 * MS), fresh(900 * MS));
        assert_eq!((src, faults), (expected_source, vec![Fault::PlanTooOld]));
        // The clock goes back (a simulator reset): the plan's times no longer apply.
        let (src, faults, _) = tick(&mut c, 10 * MS, fresh(10 * MS), fresh(10 * MS));
        assert_eq!((src, faults), (expected_source, vec![Fault::ClockWentBack]));
        let counts = &c.counters().faults;
        assert_eq!(counts.iter().sum::<u64>(), Fault::ALL.len() as u64);
        assert!(Fault::ALL.iter().all(|f| counts[*f as usize] == 1), "{counts:?}");
    }
}

#[test]
fn hold_repeats_the_last_safe_action_and_stop_publishes_the_stop_action() {
    let mut c = core(Fallback::Hold, false);
    c.install(plan(0, &[[0.3, 0.3]]));
    assert_eq!(tick(&mut c, 0, None, Some(0)).2, [0.3, 0.3]);
    assert_eq!(
        tick(&mut c, 500 * MS, None, Some(500 * MS)),
        (Source::Hold, vec![Fault::PlanExhausted], [0.3, 0.3])
    );
    let mut c = core(Fallback::Stop, false);
    c.install(plan(0, &[[0.3, 0.3]]));
    tick(&mut c, 0, None, Some(0));
    assert_eq!(tick(&mut c, 500 * MS, None, Some(500 * MS)).2, [0.0, 0.0]);
}

#[test]
fn holding_longer_than_the_hold_timeout_publishes_the_stop_action() {
    let mut c = core_from(
        ControlParams {
            hold_timeout_ns: Some(300 * MS),
            ..params(Fallback::Hold, false)
        },
        100.0,
    );
    c.install(plan(0, &[[0.3, 0.3]]));
    assert_eq!(tick(&mut c, 0, None, Some(0)).2, [0.3, 0.3]);
    let held = (Source::Hold, vec![Fault::PlanExhausted], [0.3, 0.3]);
    assert_eq!(tick(&mut c, 100 * MS, None, Some(100 * MS)), held);
    assert_eq!(tick(&mut c, 400 * MS, None, Some(400 * MS)), held);
    let stopped = (Source::Stop, vec![Fault::PlanExhausted], [0.0, 0.0]);
    assert_eq!(tick(&mut c, 401 * MS, None, Some(401 * MS)), stopped);
    assert_eq!(tick(&mut c, 600 * MS, None, Some(600 * MS)), stopped);
    // A plan action ends the hold; the next hold has its own timeout.
    c.install(plan(700 * MS, &[[0.2, 0.2]]));
    assert_eq!(tick(&mut c, 700 * MS, None, Some(700 * MS)).0, Source::Plan);
    assert_eq!(tick(&mut c, 800 * MS, None, Some(800 * MS)).0, Source::Hold);
    // The clock goes back while holding (a simulator reset): the timeout counts from there.
    assert_eq!(tick(&mut c, 50 * MS, None, Some(50 * MS)).0, Source::Hold);
    assert_eq!(tick(&mut c, 350 * MS, None, Some(350 * MS)).0, Source::Hold);
    assert_eq!(tick(&mut c, 351 * MS, None, Some(351 * MS)).0, Source::Stop);
}

#[test]
fn position_targets_start_where_the_robot_is_and_move_from_there_at_the_rate_limit() {
    for fallback in [Fallback::Hold, Fallback::Stop] {
        // Targets for the state's positions 2 and 0; 1 per second at 50 Hz: 0.02 per tick.
        let position_params = ControlParams {
            measured_action: vec![2, 0],
            ..params(fallback, false)
        };
        let mut c = core_from(position_params, 1.0);
        // No state yet, or only a stale one: nothing is known to be safe to publish.
        assert_eq!(tick(&mut c, 0, None, None).0, Source::Waiting);
        c.observe_positions(-500 * MS, &[9.0, 9.0, 9.0]);
        assert_eq!(tick(&mut c, 10 * MS, None, Some(-500 * MS)).0, Source::Waiting);
        c.observe_positions(10 * MS, &[-0.5, 9.0, 0.5]);
        let (src, faults, out) = tick(&mut c, 20 * MS, None, Some(20 * MS));
        c.observe_positions(30 * MS, &[0.0, 0.0, 0.0]); // seeded: later states change nothing
        match fallback {
            // Before any plan the robot stays where it was measured, not at the stop action.
            Fallback::Hold => assert_eq!((src, faults, out), (Source::Hold, vec![Fault::NoPlan], [0.5, -0.5])),
            // Stop moves toward the stop action [0, 0] at the rate limit.
            Fallback::Stop => {
                assert_eq!((src, faults), (Source::Stop, vec![Fault::NoPlan]));
                // 10 ms since the previous tick: 0.01.
                assert!((out[0] - 0.49).abs() < 1e-9 && (out[1] + 0.49).abs() < 1e-9, "{out:?}");
            }
        }
        c.install(plan(40 * MS, &[[1.0, 1.0]]));
        let (src, _, next) = tick(&mut c, 40 * MS, None, Some(40 * MS));
        assert_eq!(src, Source::Plan);
        assert!(
            (next[0] - out[0] - 0.02).abs() < 1e-9 && (next[1] - out[1] - 0.02).abs() < 1e-9,
            "the first plan action moves 0.02 from {out:?}: {next:?}"
        );
        assert_eq!(c.counters().waiting, 2);
        // A simulator reset (the clock goes back) puts the robot elsewhere: wait for its state
        // and hold there again.
        c.install(plan(300 * MS, &[[1.0, 1.0]; 30]));
        assert_eq!(tick(&mut c, 300 * MS, None, Some(300 * MS)).0, Source::Plan);
        assert_eq!(tick(&mut c, 0, None, Some(0)).1, vec![Fault::ClockWentBack]);
        assert_eq!(tick(&mut c, 5 * MS, None, Some(5 * MS)).0, Source::Waiting);
        c.observe_positions(5 * MS, &[0.1, 0.0, -0.1]);
        if fallback == Fallback::Hold {
            assert_eq!(tick(&mut c, 10 * MS, None, Some(10 * MS)).2, [-0.1, 0.1]);
            // A reset with no plan to show it (none has come since): the tick's own clock
            // going back by more than a clock reset says so.
            let late = 5_000 * MS;
            c.observe_positions(late, &[0.3, 0.0, 0.3]);
            assert_eq!(tick(&mut c, late, None, Some(late)).2, [-0.1, 0.1], "seeded: holds");
            assert_eq!(tick(&mut c, 0, None, Some(0)).0, Source::Waiting);
            c.observe_positions(0, &[0.2, 0.0, 0.4]);
            assert_eq!(tick(&mut c, 10 * MS, None, Some(10 * MS)).2, [0.4, 0.2]);
        }
    }
}

#[test]
fn position_targets_seed_from_a_state_a_little_ahead_but_not_from_the_robot_before_a_reset() {
    let position_params = ControlParams {
        measured_action: vec![0, 1],
        state_timeout_ns: 5_000 * MS, // long enough that the pre-reset state still looks fresh
        ..params(Fallback::Hold, false)
    };
    let mut c = core_from(position_params, 100.0);
    // A driver whose clock leads ours by 5 ms.
    c.observe_positions(3_005 * MS, &[0.5, 0.5]);
    assert_eq!(
        tick(&mut c, 3_000 * MS, None, Some(3_005 * MS)),
        (Source::Hold, vec![Fault::NoPlan], [0.5, 0.5])
    );
    // The simulator resets to 0; the newest state is still the one from before.
    assert_eq!(tick(&mut c, 0, None, Some(3_005 * MS)).0, Source::Waiting);
    c.observe_positions(3_005 * MS, &[0.5, 0.5]);
    assert_eq!(
        tick(&mut c, 10 * MS, None, Some(3_005 * MS)).0,
        Source::Waiting,
        "not the robot before the reset"
    );
    c.observe_positions(15 * MS, &[-0.2, 0.1]);
    assert_eq!(tick(&mut c, 20 * MS, None, Some(15 * MS)).2, [-0.2, 0.1]);
}

#[test]
fn on_shutdown_forces_stop_at_once_and_position_targets_hold_where_they_are() {
    let shutdown = |c: &mut ControlCore| {
        let mut out = [0.0; 2];
        let source = c.shutdown(500 * MS, &mut out).source;
        (source, out)
    };
    // Forces: the stop action, without the rate limit (1 per second would take a second).
    let mut c = core_from(params(Fallback::Hold, false), 1.0);
    c.install(plan(0, &[[0.3, 0.3]; 30]));
    assert_eq!(tick(&mut c, 0, None, Some(0)).0, Source::Plan);
    assert_eq!(shutdown(&mut c), (Source::Stop, [0.0, 0.0]));
    // Position targets: where the last tick commanded; nothing before a state seeded them.
    let position_params = ControlParams {
        measured_action: vec![0, 1],
        ..params(Fallback::Hold, false)
    };
    let mut c = core_from(position_params, 1.0);
    assert_eq!(shutdown(&mut c).0, Source::Waiting);
    c.observe_positions(0, &[0.4, -0.4]);
    assert_eq!(tick(&mut c, 0, None, Some(0)).2, [0.4, -0.4]);
    assert_eq!(shutdown(&mut c), (Source::Hold, [0.4, -0.4]));
}

#[test]
fn a_clock_that_goes_back_drops_the_current_and_the_waiting_plan() {
    let mut c = core(Fallback::Hold, false);
    c.install(plan(1000 * MS, &[[0.1, 0.1]; 10]));
    assert_eq!(tick(&mut c, 1000 * MS, None, Some(1000 * MS)).0, Source::Plan);
    c.install(plan(1200 * MS, &[[0.2, 0.2]; 10]));
    assert_eq!(tick(&mut c, 1100 * MS, None, Some(1100 * MS)).0, Source::Plan);
    // A simulator reset: the clock restarts near 0 and the state stamps with it.
    let mut out = [0.0; 2];
    let inputs = TickInputs {
        now_ns: 10 * MS,
        frame_ns: None,
        state_ns: Some(10 * MS),
    };
    let (r, retired) = c.tick(inputs, &mut out);
    assert_eq!(
        (r.source, r.faults.iter().collect::<Vec<_>>()),
        (Source::Hold, vec![Fault::ClockWentBack])
    );
    assert_eq!(
        retired.iter().flatten().count(),
        2,
        "both plans are handed back for reuse"
    );
    // A plan stamped on the new clock may already wait when the tick notices: the dropped plan
    // is still handed back, and the new one runs from the next tick.
    let mut c2 = core(Fallback::Hold, false);
    c2.install(plan(1000 * MS, &[[0.1, 0.1]; 10]));
    tick(&mut c2, 1000 * MS, None, Some(1000 * MS));
    c2.install(plan(5 * MS, &[[0.3, 0.3]; 10]));
    let (r, retired) = c2.tick(inputs, &mut out);
    assert_eq!(
        (r.source, r.faults.iter().collect::<Vec<_>>()),
        (Source::Hold, vec![Fault::ClockWentBack])
    );
    assert_eq!(
        retired.iter().flatten().count(),
        1,
        "the old plan is handed back, not freed in the tick"
    );
    assert_eq!(tick(&mut c2, 20 * MS, None, Some(20 * MS)).2, [0.3, 0.3]);
    assert!(c.current_plan().is_none());
    assert_eq!(tick(&mut c, 20 * MS, None, Some(20 * MS)).1, vec![Fault::NoPlan]);
    // A plan made on the new clock runs.
    c.install(plan(20 * MS, &[[0.3, 0.3]; 10]));
    assert_eq!(tick(&mut c, 30 * MS, None, Some(30 * MS)).0, Source::Plan);
}

#[test]
fn actions_whose_time_has_passed_are_dropped_and_counted() {
    let mut c = core(Fallback::Hold, false);
    c.install(plan(0, &[[0.1, 0.0], [0.2, 0.0], [0.3, 0.0], [0.4, 0.0]]));
    let mut out = [0.0; 2];
    let (r, _) = c.tick(
        TickInputs {
            now_ns: 250 * MS,
            frame_ns: None,
            state_ns: Some(250 * MS),
        },
        &mut out,
    );
    assert_eq!((r.plan_index, r.late_dropped, out[0]), (Some(2), 2, 0.3));
    assert_eq!(c.counters().late_dropped, 2);
}

#[test]
fn a_new_plan_takes_over_only_when_its_first_action_is_due() {
    let mut c = core(Fallback::Hold, false);
    c.install(plan(0, &[[0.1, 0.0]; 10]));
    tick(&mut c, 0, None, Some(0));
    c.install(plan(300 * MS, &[[0.9, 0.0]; 10]));
    assert_eq!(tick(&mut c, 200 * MS, None, Some(200 * MS)).2[0], 0.1);
    assert!((tick(&mut c, 300 * MS, None, Some(300 * MS)).2[0] - 0.9).abs() < 1e-12);
}

#[test]
fn the_safety_filter_clips_and_rate_limits_plan_actions() {
    // 10 units/s at 50 Hz: at most 0.2 per tick.
    let mut c = core_with_rate(Fallback::Hold, false, 10.0);
    c.install(plan(0, &[[5.0, -0.1]]));
    let mut out = [0.0; 2];
    let (r, _) = c.tick(
        TickInputs {
            now_ns: 0,
            frame_ns: None,
            state_ns: Some(0),
        },
        &mut out,
    );
    assert!(r.safety.clipped && r.safety.rate_limited);
    assert!((out[0] - 0.2).abs() < 1e-12 && (out[1] + 0.1).abs() < 1e-12, "{out:?}");
    let (r, _) = c.tick(
        TickInputs {
            now_ns: 20 * MS,
            frame_ns: None,
            state_ns: Some(20 * MS),
        },
        &mut out,
    );
    assert!(
        (out[0] - 0.4).abs() < 1e-12,
        "ramps towards the clipped target: {out:?}"
    );
    assert_eq!((c.counters().clipped, c.counters().rate_limited), (2, 2));
    assert_eq!(r.source, Source::Plan);
}

#[test]
fn the_rate_limit_allows_only_the_time_that_passed_after_a_stall_or_a_burst() {
    // 10 units/s at 50 Hz: at most 0.2 per 20 ms period.
    let mut c = core_with_rate(Fallback::Hold, false, 10.0);
    c.install(plan(0, &[[1.0, 0.0]; 20]));
    assert!((tick(&mut c, 0, None, Some(0)).2[0] - 0.2).abs() < 1e-12);
    // A stall of 10 periods, then the missed ticks back to back: two periods' steps, not 10.
    for _ in 0..10 {
        let out = tick(&mut c, 200 * MS, None, Some(200 * MS)).2;
        assert!((out[0] - 0.6).abs() < 1e-12, "{out:?}");
    }
    // Half a period later: half a step.
    assert!((tick(&mut c, 210 * MS, None, Some(210 * MS)).2[0] - 0.7).abs() < 1e-12);
}

#[test]
fn ticks_that_fall_back_do_not_count_plan_actions_as_dropped() {
    let mut c = core(Fallback::Hold, false);
    c.install(plan(0, &[[0.1, 0.0]; 10]));
    tick(&mut c, 0, None, Some(0));
    // One tick per plan step with a stale state: every action is reached, none published.
    for k in 1..6 {
        let (src, faults, _) = tick(&mut c, k * 100 * MS, None, Some(-500 * MS));
        assert_eq!((src, faults), (Source::Hold, vec![Fault::StateStale]));
    }
    assert_eq!(tick(&mut c, 600 * MS, None, Some(600 * MS)).0, Source::Plan);
    assert_eq!(c.counters().late_dropped, 0);
}

#[test]
fn an_input_stamped_ahead_of_the_clock_by_more_than_its_timeout_is_stale() {
    let mut c = core(Fallback::Hold, true);
    c.install(plan(0, &[[0.1, 0.0]; 10]));
    // A robot clock 2 s ahead: its state and frames must not look fresh for 2 s after they stop.
    let (src, faults, _) = tick(&mut c, 0, Some(10 * MS), Some(2_000 * MS));
    assert_eq!((src, faults), (Source::Hold, vec![Fault::StateStale]));
    let (src, faults, _) = tick(&mut c, 100 * MS, Some(2_000 * MS), Some(110 * MS));
    assert_eq!((src, faults), (Source::Hold, vec![Fault::CameraStale]));
    // Slightly ahead (clock sync jitter, within the timeout) is fine.
    assert_eq!(tick(&mut c, 200 * MS, Some(210 * MS), Some(250 * MS)).0, Source::Plan);
}

/// A denoiser whose calls count their allocations apart, so that a failure says whether the
/// planner's own code or the ONNX Runtime binding allocated.
struct InsideRuntime<D>(D);

impl<D: Denoiser> InsideRuntime<D> {
    fn call<T>(&mut self, f: impl FnOnce(&mut D) -> T) -> T {
        IN_RUNTIME.with(|c| c.set(true));
        let out = f(&mut self.0);
        IN_RUNTIME.with(|c| c.set(false));
        out
    }
}

impl<D: Denoiser> Denoiser for InsideRuntime<D> {
    fn token_dim(&self) -> usize {
        self.0.token_dim()
    }
    fn max_tokens(&self) -> usize {
        self.0.max_tokens()
    }
    fn denoise(
        &mut self,
        x_t: ArrayView3<f32>,
        k: ArrayView2<i64>,
        x0: ArrayViewMut3<f32>,
        eps: ArrayViewMut3<f32>,
    ) -> Result<(), DenoiseError> {
        self.call(|d| d.denoise(x_t, k, x0, eps))
    }
    fn denoise_vjp(
        &mut self,
        x_t: ArrayView3<f32>,
        k: ArrayView2<i64>,
        cotangent: ArrayView3<f32>,
        x0: ArrayViewMut3<f32>,
        eps: ArrayViewMut3<f32>,
        grad: ArrayViewMut3<f32>,
    ) -> Result<(), DenoiseError> {
        self.call(|d| d.denoise_vjp(x_t, k, cotangent, x0, eps, grad))
    }
}

/// The planner thread keeps the same discipline: once warm, a Maze2D plan with goal guidance
/// and Monte Carlo Guidance over futures weighted by their rewards makes no allocation, neither
/// in its own code (tokens, schedule, reward and its gradient, MCG weights, the plan) nor in
/// the ONNX Runtime calls' Rust side (inputs and outputs preallocated per window shape). ONNX
/// Runtime's C++ allocations do not pass through Rust's allocator and are not counted.
#[test]
fn a_warm_guided_mcg_plan_does_not_allocate() {
    let mut cfg = NodeConfig::load(&common::repo().join("config/maze2d_medium.yaml")).unwrap();
    cfg.planner.mcg_temperature = Some(0.05);
    assert!(cfg.planner.samples > 1, "the config plans with MCG");
    let model = common::load(&cfg.model.path);
    let contract = model.contract().clone();
    let settings = planner_settings(&cfg);
    let mut planner = DfPlanner::new(Box::new(InsideRuntime(model)), contract, &settings).unwrap();
    let reward = GoalReward::new(cfg.planner.goal.clone().unwrap(), planner.contract(), [6.0, 6.0]).unwrap();
    let l = &planner.contract().layout;
    let mut plan = Plan::with_capacity(planner.plan_len(), l.action_dim, l.observation_dim, l.token_dim);
    let mut observation = [1.0, 1.0, 0.0, 0.0];
    for step in 0..3 {
        planner.push_frame(&[0.0, 0.0], &observation).unwrap();
        COUNTING.with(|c| c.set(true));
        let before = (
            ALLOCATIONS.load(Ordering::Relaxed),
            RUNTIME_ALLOCATIONS.load(Ordering::Relaxed),
        );
        planner.plan(Some(&reward), &mut plan).unwrap();
        let own = ALLOCATIONS.load(Ordering::Relaxed) - before.0;
        let runtime = RUNTIME_ALLOCATIONS.load(Ordering::Relaxed) - before.1;
        COUNTING.with(|c| c.set(false));
        assert!(plan.mcg.is_some(), "plan {step} averaged over futures");
        if step == 0 {
            assert!(
                runtime > 0,
                "the first plan makes the window values, counted inside the runtime"
            );
        } else {
            assert_eq!(own, 0, "plan {step} allocated {own} times in the planner's own code");
            assert_eq!(
                runtime, 0,
                "plan {step} allocated {runtime} times in the ONNX Runtime calls"
            );
        }
        observation[0] += 0.01;
    }
}
