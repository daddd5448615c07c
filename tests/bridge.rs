//! `df_planner serve` through the node's own loop: the shipped fruit-swap camera model (frame
//! rings, planner task with memory, control tick), what bad camera input does (counted, named,
//! and the arm holds); and the U-Maze model with `--node-loop`, against `serve`'s own loop.

mod common;

use df_planner::bridge::Bridge;
use df_planner::config::NodeConfig;
use df_planner::control::{MeasuredPlanTimes, PlanTimes};
use df_planner::serve::Server;
use serde_json::{json, Value};

fn bridge() -> Bridge {
    let path = common::repo().join("config/fruit_swap.yaml");
    let mut cfg = NodeConfig::load(&path).unwrap();
    cfg.model.runtime = common::cpu();
    Bridge::new(&cfg, None).unwrap()
}

const REST: [f64; 4] = [0.30, 0.08, 0.20, 1.0];

fn step(b: &mut Bridge, images: Value) -> Value {
    b.handle(&json!({"op": "step", "state": REST, "images": images}).to_string())
}

fn gray(len: usize) -> Value {
    json!(vec![128u8; len])
}

#[test]
fn frames_and_state_in_a_planned_target_out_and_memory_across_steps() {
    let mut b = bridge();
    assert_eq!(b.handle(r#"{"op": "reset"}"#), json!({"ok": true}));
    let mut replans = Vec::new();
    for _ in 0..31 {
        let r = step(&mut b, json!([gray(3072), gray(3072)]));
        assert_eq!(r["ok"], json!(true), "{r}");
        assert_eq!(r["source"], json!("plan"), "{r}");
        assert_eq!(r["action"].as_array().unwrap().len(), 4);
        replans.push(r["replanned"].as_bool().unwrap());
    }
    // One plan per token (replan_every 15), the first at the first step.
    let at: Vec<usize> = replans.iter().enumerate().filter(|(_, &p)| p).map(|(i, _)| i).collect();
    assert_eq!(at, vec![0, 15, 30]);
    let d = &b.handle(r#"{"op": "stats"}"#)["diagnostics"];
    assert_eq!(d["plans"], json!(3));
    assert_eq!(d["frames"]["received"], json!(62));
    assert_eq!(d["plan_errors"], json!(0));
}

#[test]
fn a_wrong_frame_is_named_and_a_silent_camera_makes_the_arm_hold() {
    let mut b = bridge();
    b.handle(r#"{"op": "reset"}"#);
    let first = step(&mut b, json!([gray(3072), gray(3072)]));
    let held = first["action"].clone();
    let r = step(&mut b, json!([gray(3072), gray(100)]));
    let errors = r["frame_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{r}");
    assert_eq!(
        errors[0],
        json!("camera 1 (wrist): image data: 100 bytes, expected step x height = 3072")
    );
    // The wrist camera then stops: after camera_timeout_s (0.5 s = 5 steps) the tick holds
    // the last target instead of following the plan.
    let mut last = r;
    for _ in 0..6 {
        last = step(&mut b, json!([gray(3072)]));
    }
    assert_eq!(last["source"], json!("hold"), "{last}");
    assert!(
        last["faults"].as_array().unwrap().contains(&json!("camera_stale")),
        "{last}"
    );
    assert_eq!(last["action"].as_array().unwrap().len(), held.as_array().unwrap().len());
    let d = &b.handle(r#"{"op": "stats"}"#)["diagnostics"];
    assert_eq!(d["frames"]["rejected_malformed"], json!(1), "{d}");
}

#[test]
fn bad_requests_are_refused_by_name_and_the_bridge_keeps_going() {
    let mut b = bridge();
    b.handle(r#"{"op": "reset"}"#);
    let r = b.handle("{not json");
    assert_eq!(r["ok"], json!(false));
    assert!(r["error"].as_str().unwrap().starts_with("malformed request"), "{r}");
    let r = step(&mut b, json!([gray(3072), gray(3072), gray(3072)]));
    assert_eq!(
        r["error"],
        json!("images: expected at most 2 frames (the model's cameras), got 3")
    );
    // The config names the state's four joints (topics.state_joints): positions only. Two
    // positions with two velocities fit the model's size but not that layout.
    for (state, velocity) in [
        (json!([0.3, 0.08, 0.2]), json!([])),
        (json!([0.3, 0.08]), json!([])),
        (json!([0.3, 0.08]), json!([0.0, 0.0])),
    ] {
        let step = json!({"op": "step", "state": state, "velocity": velocity, "images": [gray(3072), gray(3072)]});
        let r = b.handle(&step.to_string());
        let n = state.as_array().unwrap().len();
        assert_eq!(
            r["error"],
            json!(format!(
                "state/velocity: expected 4 values in state (topics.state_joints names 4 joints), got {n}"
            ))
        );
    }
    // Counted as the node counts the states it refuses.
    let stats = b.handle(r#"{"op": "stats"}"#);
    assert_eq!(stats["diagnostics"]["states_rejected"], json!(3), "{stats}");
    let r = b.handle(&json!({"op": "step", "state": REST, "images": [gray(3072), 300]}).to_string());
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed request: images[1]: "),
        "{r}"
    );
    let r = step(&mut b, json!([gray(3072), gray(3072)]));
    assert_eq!(r["source"], json!("plan"), "{r}");
    assert_eq!(r["plan_error"], json!(null), "{r}");
}

#[test]
fn steps_before_the_first_images_hold_on_the_stale_camera_and_do_not_poison_the_memory() {
    let mut b = bridge();
    b.handle(r#"{"op": "reset"}"#);
    // A camera model cannot plan without its images: these steps hold, say why in `faults`,
    // and enter nothing into the memory, so the first step with images plans.
    for _ in 0..3 {
        let r = step(&mut b, json!(null));
        assert_eq!(r["ok"], json!(true), "{r}");
        assert_ne!(r["source"], json!("plan"), "{r}");
        assert!(r["faults"].as_array().unwrap().contains(&json!("camera_stale")), "{r}");
        assert_eq!(r["plan_error"], json!(null), "{r}");
    }
    let r = step(&mut b, json!([gray(3072), gray(3072)]));
    assert_eq!(r["source"], json!("plan"), "{r}");
    assert_eq!(r["plan_error"], json!(null), "{r}");
}

#[test]
fn a_reset_starts_the_episode_over_with_the_same_noise() {
    let mut b = bridge();
    let mut episodes = Vec::new();
    for _ in 0..2 {
        b.handle(r#"{"op": "reset"}"#);
        let actions: Vec<Value> = (0..20)
            .map(|_| step(&mut b, json!([gray(3072), gray(3072)]))["action"].clone())
            .collect();
        episodes.push(actions);
    }
    assert_eq!(episodes[0], episodes[1]);
    let d = &b.handle(r#"{"op": "stats"}"#)["diagnostics"];
    assert_eq!(d["plans"], json!(2), "the counters are the second episode's");
}

#[test]
fn a_glitched_state_is_a_named_plan_error_that_does_not_stay_in_the_memory() {
    let mut b = bridge();
    b.handle(r#"{"op": "reset"}"#);
    let step_with = |b: &mut Bridge, state: [f64; 4]| {
        b.handle(&json!({"op": "step", "state": state, "images": [gray(3072), gray(3072)]}).to_string())
    };
    for _ in 0..15 {
        assert_eq!(step_with(&mut b, REST)["source"], json!("plan"));
    }
    // One reading of 1e300 at a replan (step 15): finite, but it would overflow the f32 model
    // and, kept in the 14-token memory, fail every plan after it.
    let r = step_with(&mut b, [1e300, 0.08, 0.20, 1.0]);
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["replanned"], json!(false), "{r}");
    assert_eq!(r["source"], json!("plan"), "the last plan still runs: {r}");
    let error = r["plan_error"].as_str().unwrap();
    assert!(
        error.starts_with("observation/action: expected values within 1000 standard deviations")
            && error.contains("observation[0] = 1e300"),
        "{error}"
    );
    // The glitch is not in the memory: the refused step is not counted, so the next step
    // makes the replan that was due, and so on every 15 steps.
    let mut replans = Vec::new();
    for k in 16..=46 {
        let r = step_with(&mut b, REST);
        assert_eq!((&r["source"], &r["plan_error"]), (&json!("plan"), &json!(null)), "{r}");
        if r["replanned"] == json!(true) {
            replans.push(k);
        }
    }
    assert_eq!(replans, [16, 31, 46]);
    let d = &b.handle(r#"{"op": "stats"}"#)["diagnostics"];
    assert_eq!(d["plan_errors"], json!(1));
}

fn umaze() -> NodeConfig {
    let mut cfg = NodeConfig::load(&common::repo().join("config/maze2d_umaze.yaml")).unwrap();
    cfg.model.runtime = common::cpu();
    cfg
}

/// D4RL's point mass (gear 100, Euler at 0.01 s, velocity clipped to ±5): one step.
fn point_mass(obs: &mut [f64; 4], action: &[f64]) {
    for d in 0..2 {
        obs[d + 2] = (obs[d + 2] + 0.234 * action[d]).clamp(-5.0, 5.0);
        obs[d] += 0.01 * obs[d + 2];
    }
}

fn actions(reply: &Value) -> Vec<f64> {
    let action = reply["action"].as_array().unwrap_or_else(|| panic!("{reply}"));
    action.iter().map(|a| a.as_f64().unwrap()).collect()
}

/// Closes an episode from `start` toward `goal` around the point mass through `serve` and feeds
/// the same states through the bridge as the robot's, with the node's rate limit (which serve
/// does not have) out of the way, and asserts the same plans, actions and goal holds at every
/// step. Returns how many steps held the goal and the final state.
fn assert_node_loop_executes_what_serve_executed(
    mut cfg: NodeConfig,
    goal: [f64; 2],
    start: [f64; 4],
    steps: usize,
) -> (u64, [f64; 4]) {
    cfg.safety.max_rate = vec![1e6; cfg.safety.max_rate.len()];
    let mut server = Server::new(&cfg, df_planner::node::planner(&cfg).unwrap()).unwrap();
    let mut bridge = Bridge::new(&cfg, None).unwrap();
    let reset = json!({"op": "reset", "goal": goal, "seed": 7}).to_string();
    assert_eq!(server.handle(&reset), json!({"ok": true}));
    assert_eq!(bridge.handle(&reset), json!({"ok": true}));
    let mut obs = start;
    let (mut held, mut plans) = (0, 0);
    for k in 0..steps {
        let served = server.handle(&json!({"op": "step", "obs": obs}).to_string());
        let node = bridge.handle(&json!({"op": "step", "state": &obs[..2], "velocity": &obs[2..]}).to_string());
        assert_eq!(node["source"], json!("plan"), "step {k}: {node}");
        let (a, b) = (actions(&served), actions(&node));
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-9),
            "step {k}: serve {a:?}, node {b:?}"
        );
        assert_eq!(node["replanned"], served["replanned"], "step {k}");
        assert_eq!(node["holding"], served["holding"], "step {k}");
        if served["replanned"] == json!(true) {
            assert_eq!(node["plan"], served["plan"], "step {k}");
            plans += 1;
        }
        held += u64::from(node["holding"] == json!(true));
        point_mass(&mut obs, &a);
    }
    let stats = bridge.handle(r#"{"op": "stats"}"#);
    assert_eq!(
        (&stats["plans"], &stats["diagnostics"]["plans"]),
        (&json!(plans), &json!(plans)),
        "{stats}"
    );
    assert_eq!(stats["diagnostics"]["goal_held"], json!(held), "{stats}");
    (held, obs)
}

/// The robot node's loop executes what `serve` executed: U-Maze from its lower-right corridor
/// toward D4RL's goal, one seed, MCG, the diffused actions, arrive-and-hold. With U-Maze's own
/// `safety.max_rate` the rate limit changes an action at step 60, and from there the node's own
/// history, and so its plans, differ (`df-train eval maze2d --configs df_mcg,node_loop`
/// measures what that does to the score).
#[test]
fn the_node_loop_executes_what_serve_executed() {
    let (held, obs) = assert_node_loop_executes_what_serve_executed(umaze(), [1.0, 1.0], [3.0, 1.0, 0.0, 0.0], 300);
    println!("300 steps alike, {held} held the goal; final state {obs:?}");
    assert!(held > 100, "{held}");
}

/// The same for the planner a CPU robot runs on Medium (`config/maze2d_medium_realtime.yaml`):
/// the whole-episode model with the `full_sequence` matrix, its plans tracked by the PD
/// controller 1.3 times faster than planned, a plan every 50 steps; from the lower-left corner
/// toward D4RL's goal, four plans.
#[test]
fn the_node_loop_tracks_what_serve_tracked_with_the_realtime_config() {
    let mut cfg = NodeConfig::load(&common::repo().join("config/maze2d_medium_realtime.yaml")).unwrap();
    cfg.model.runtime = common::cpu();
    let (_, obs) = assert_node_loop_executes_what_serve_executed(cfg, [6.0, 6.0], [1.0, 1.0, 0.0, 0.0], 200);
    println!("200 steps alike; final state {obs:?}");
    assert!(
        obs[0] > 1.5 || obs[1] > 1.5,
        "the tracked plans moved the robot: {obs:?}"
    );
}

#[test]
fn a_maze_state_without_velocities_or_a_goal_in_a_wall_is_refused_by_name() {
    let mut b = Bridge::new(&umaze(), None).unwrap();
    assert_eq!(b.handle(r#"{"op": "reset", "goal": [1.0, 1.0]}"#), json!({"ok": true}));
    // The PD controller (hold_radius) reads velocities: positions alone are refused.
    let r = b.handle(r#"{"op": "step", "state": [3.0, 1.0, 0.0, 0.0]}"#);
    assert_eq!(
        r["error"],
        json!(
            "state/velocity: 4 joints: the PD controller (serve.execute / serve.hold_radius) reads positions \
             then velocities, expected 2 joints with velocities (the model's observation_dim 4)"
        )
    );
    // A goal inside U-Maze's middle wall: refused, and so are steps until a reset is accepted.
    let r = b.handle(r#"{"op": "reset", "goal": [2.0, 2.0]}"#);
    let why = r["error"].as_str().unwrap().to_owned();
    assert!(why.starts_with("goal "), "{why}");
    let step = r#"{"op": "step", "state": [3.0, 1.0], "velocity": [0.0, 0.0]}"#;
    assert_eq!(
        b.handle(step)["error"],
        json!(format!(
            "no episode: the last reset was refused ({why}); send a reset that is accepted"
        ))
    );
    assert_eq!(b.handle(r#"{"op": "reset", "goal": [1.0, 1.0]}"#), json!({"ok": true}));
    let r = b.handle(step);
    assert_eq!((&r["ok"], &r["replanned"]), (&json!(true), &json!(true)), "{r}");
    assert_eq!(r["plan"].as_array().unwrap().len(), 150, "{r}");
    // A config that names four joints for [x, y, vx, vy] would give the PD positions to read as
    // velocities: refused at load, as the robot node refuses it.
    let mut cfg = umaze();
    cfg.topics.state_joints = ["x", "y", "vx", "vy"].map(String::from).to_vec();
    let Err(e) = Bridge::new(&cfg, None) else {
        panic!("four position joints with the PD were accepted")
    };
    assert!(
        e.contains("topics.state_joints") && e.contains("expected 2 names"),
        "{e}"
    );
    // Without the hold and the PD, a positions-only state is what the model's layout refuses.
    let mut cfg = umaze();
    cfg.serve.as_mut().unwrap().hold_radius = None;
    let mut b = Bridge::new(&cfg, None).unwrap();
    b.handle(r#"{"op": "reset"}"#);
    let r = b.handle(r#"{"op": "step", "state": [3.0, 1.0]}"#);
    assert_eq!(
        r["error"],
        json!("state/velocity: no velocities for the 2 joints: the model's observation (4 values) is positions then velocities")
    );
    let r = b.handle(r#"{"op": "step", "state": [3.0, 1.0, 0.0]}"#);
    assert_eq!(
        r["error"],
        json!(
            "state/velocity: 3 joints: expected 4 (positions only) or 2 (positions then velocities) for the \
             model's observation_dim 4"
        )
    );
    // Refused steps take no time: the next accepted step is the episode's first.
    let r = b.handle(r#"{"op": "step", "state": [3.0, 1.0], "velocity": [0.0, 0.0]}"#);
    assert_eq!((&r["ok"], &r["replanned"]), (&json!(true), &json!(true)), "{r}");
}

#[test]
fn mangled_request_lines_are_answered_and_the_node_loop_keeps_going() {
    let cfg = umaze();
    let mut b = Bridge::new(&cfg, None).unwrap();
    let reset = json!({"op": "reset", "goal": [1.0, 1.0], "seed": 3}).to_string();
    let step = json!({"op": "step", "state": [3.0, 1.0], "velocity": [0.1, 0.0]}).to_string();
    let stats = [r#"{"op": "stats"}"#.to_string()];
    common::survive_mangled_lines(|line| b.handle(line), [reset, step], &stats, &cfg.safety);
}

#[test]
fn a_sampling_that_fails_holds_the_planner_as_long_as_a_plan() {
    // A network whose every output is NaN: each plan fails after the model ran, and is
    // retried once at the next step.
    let mut cfg = umaze();
    cfg.model.path = common::repo().join("tests/fixtures/models/nan_output.onnx");
    cfg.planner.horizon_tokens = Some(3);
    cfg.planner.samples = 1;
    cfg.planner.guidance_scale = 0.0;
    cfg.planner.replan_every = 2;
    let run = |plan_ms: Option<u64>| {
        let mut b = Bridge::new(&cfg, plan_ms.and_then(ms)).unwrap();
        b.handle(r#"{"op": "reset", "goal": [1.0, 1.0]}"#);
        for _ in 0..100 {
            let r = b.handle(r#"{"op": "step", "state": [3.0, 1.0], "velocity": [0.0, 0.0]}"#);
            assert_eq!((&r["ok"], &r["replanned"]), (&json!(true), &json!(false)), "{r}");
            assert!(
                r["plan_error"].is_null() || r["plan_error"].as_str().unwrap().contains("not finite"),
                "{r}"
            );
        }
        let stats = b.handle(r#"{"op": "stats"}"#);
        (
            stats["diagnostics"]["plan_errors"].as_u64().unwrap(),
            stats["diagnostics"]["steps_recorded_late"].as_u64().unwrap(),
        )
    };
    // At once: a plan every 2 steps, and its retry at the step between.
    assert_eq!(run(None), (100, 0));
    // 30 ms, more than the replan interval (20 ms): each failure keeps the planner busy, so it
    // falls behind as after a slow plan, and the steps it is too late to plan from are only
    // recorded.
    let (errors, late) = run(Some(30));
    assert!(
        errors < 100 && late > 0,
        "{errors} failed plans, {late} steps recorded late"
    );
}

/// Each plan taking `plan_ms` of the simulator's clock.
fn ms(plan_ms: u64) -> Option<PlanTimes> {
    Some(PlanTimes::Fixed(plan_ms as i64 * 1_000_000))
}

/// The U-Maze episode of `the_node_loop_executes_what_serve_executed` for `steps` steps through
/// the node's loop with plans taking `plan_times` of the simulator's clock: each step's reply.
fn timed_episode(plan_times: Option<PlanTimes>, steps: usize) -> (Vec<Value>, Value) {
    let mut b = Bridge::new(&umaze(), plan_times).unwrap();
    b.handle(&json!({"op": "reset", "goal": [1.0, 1.0], "seed": 7}).to_string());
    let mut obs = [3.0, 1.0, 0.0, 0.0];
    let replies = (0..steps)
        .map(|_| {
            let r = b.handle(&json!({"op": "step", "state": &obs[..2], "velocity": &obs[2..]}).to_string());
            point_mass(&mut obs, &actions(&r));
            r
        })
        .collect();
    (replies, b.handle(r#"{"op": "stats"}"#))
}

/// What the arm was sent at each step and whether a plan landed then (not the replies' plan_ms,
/// the real time a plan took).
fn acted(replies: &[Value]) -> Vec<String> {
    let line = |r: &Value| format!("{} {} {}", r["action"], r["source"], r["replanned"]);
    replies.iter().map(line).collect()
}

/// The steps at which a plan landed.
fn landed(replies: &[Value]) -> Vec<usize> {
    (0..replies.len())
        .filter(|&k| replies[k]["replanned"] == json!(true))
        .collect()
}

#[test]
fn a_plan_that_takes_time_reaches_the_tick_when_done_and_a_slow_one_records_missed_steps_late() {
    // No time at all is the untimed loop.
    let (untimed, _) = timed_episode(None, 30);
    let (instant, _) = timed_episode(ms(0), 30);
    assert_eq!(acted(&untimed), acted(&instant));
    // 35 ms (steps of 10 ms, a plan every 10): the first plan, made at the first step, reaches
    // the tick at the fifth; the ticks before it have no plan and hold. Each plan starts at
    // its step's time, so the tick drops the actions already past.
    let (replies, stats) = timed_episode(ms(35), 60);
    let sources: Vec<&str> = replies.iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert_eq!(
        sources[..5],
        ["hold", "hold", "hold", "hold", "plan"],
        "{:?}",
        &replies[..5]
    );
    assert!(sources[5..].iter().all(|&s| s == "plan"), "{sources:?}");
    assert_eq!(landed(&replies), [4, 14, 24, 34, 44, 54]);
    // Six plans, each landing at +35 ms: the actions for +0 to +30 ms are past.
    let d = &stats["diagnostics"];
    assert_eq!(
        (&d["late_actions_dropped"], &d["steps_skipped"]),
        (&json!(24), &json!(0)),
        "{stats}"
    );
    // 105 ms, a little more than the replan interval: each scheduled step runs late, and every
    // plan reaches the tick (the one made last may still be under way).
    let (replies, stats) = timed_episode(ms(105), 100);
    let landed = replies.iter().filter(|r| r["replanned"] == json!(true)).count() as u64;
    let made = stats["diagnostics"]["plan_latency"]["count"].as_u64().unwrap();
    assert!(landed >= 6 && made - landed <= 1, "{landed} of {made} plans landed");
    // 150 ms, more than the replan interval (100 ms): the planner falls behind; the steps it is
    // too late to plan from enter its memory without a plan, as the live planner thread does,
    // none is skipped, and the arm keeps a plan.
    let (replies, stats) = timed_episode(ms(150), 100);
    let d = &stats["diagnostics"];
    let late = d["steps_recorded_late"].as_u64().unwrap();
    assert!(late > 0 && d["steps_skipped"] == json!(0), "{stats}");
    let on_plan = replies.iter().filter(|r| r["source"] == json!("plan")).count();
    println!("150 ms plans: {late} steps recorded late, {on_plan} of 100 ticks on a plan");
    assert!(on_plan >= 80, "{on_plan}");
    // 3 s, further behind than the ticks' executed actions are kept (2.56 s here): the steps
    // beyond that are skipped, a gap in the memory, and the next plan starts cold.
    let (_, stats) = timed_episode(ms(3000), 400);
    assert!(stats["diagnostics"]["steps_skipped"].as_u64().unwrap() > 0, "{stats}");
}

/// Plan times drawn from measured ones (`serve --plan-times`): a single bucket is that fixed
/// time; a spread lands each plan at its own drawn time, the same again for the same episode.
#[test]
fn measured_plan_times_land_each_plan_at_a_drawn_time() {
    let measured = |buckets: &[(f64, u64)]| {
        Some(PlanTimes::Measured(
            MeasuredPlanTimes::from_buckets_ms(buckets, "buckets").unwrap(),
        ))
    };
    let (fixed, _) = timed_episode(ms(35), 60);
    let (one_bucket, _) = timed_episode(measured(&[(35.0, 4)]), 60);
    assert_eq!(acted(&fixed), acted(&one_bucket));
    // Plans made every 10 steps of 10 ms, taking 35 or 75 ms: each lands at the 4th or the 8th
    // step after the one that made it, and both times are drawn.
    let (spread, _) = timed_episode(measured(&[(35.0, 1), (75.0, 1)]), 200);
    let after: Vec<usize> = landed(&spread).iter().map(|k| k % 10).collect();
    assert!(after.iter().all(|&a| a == 4 || a == 8), "{:?}", landed(&spread));
    assert!(after.contains(&4) && after.contains(&8), "{:?}", landed(&spread));
    let (again, _) = timed_episode(measured(&[(35.0, 1), (75.0, 1)]), 200);
    assert_eq!(acted(&spread), acted(&again));
}

/// A shipped config with one or two of its numbers replaced (NaN, ±∞, negative, zero, huge,
/// tiny), 100 draws: each is refused naming its field, at load or when the node starts, or the
/// node runs an episode with finite actions within the safety limits. `reset` starts the
/// episode, `step` is a step request from the state, `advance` moves the state by an action.
fn odd_numbers_are_refused_by_name_or_run_safely(
    config: &str,
    reset: &str,
    start: &[f64],
    step: impl Fn(&[f64]) -> String,
    advance: impl Fn(&mut Vec<f64>, &[f64]),
) {
    let path = common::repo().join(config);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // `key: number` lines, the key's section path beside them (indentation tells the nesting).
    let mut section: Vec<(usize, &str)> = Vec::new();
    let mut numbers = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        section.retain(|&(depth, _)| depth < indent);
        let value = value.split('#').next().unwrap().trim();
        if value.is_empty() {
            section.push((indent, key));
        } else if value.parse::<f64>().is_ok() && !key.starts_with('-') {
            let path: Vec<&str> = section.iter().map(|s| s.1).chain([key]).collect();
            numbers.push((i, path.join(".")));
        }
    }
    assert!(numbers.len() > 10, "{numbers:?}");
    const ODD: &[&str] = &[".nan", ".inf", "-.inf", "-1", "0", "1e12", "1e-12", "0.5", "3"];
    let mut draws = common::Draws(7);
    let mut pick = |n| draws.pick(n);
    let (mut refused, mut ran) = (0, 0);
    for _ in 0..100 {
        let mut changed = lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let mut fields = Vec::new();
        for _ in 0..1 + pick(2) {
            let (i, field) = &numbers[pick(numbers.len())];
            let odd = ODD[pick(ODD.len())];
            let (key, _) = changed[*i].split_once(':').unwrap();
            changed[*i] = format!("{key}: {odd}");
            fields.push((field.clone(), odd));
        }
        let started = NodeConfig::parse(&changed.join("\n"), &path)
            .map_err(|e| e.to_string())
            .and_then(|mut cfg| {
                cfg.model.runtime = common::cpu();
                Bridge::new(&cfg, None).map(|b| (cfg, b))
            });
        let (cfg, mut b) = match started {
            Err(e) => {
                let named = fields.iter().any(|(f, _)| e.contains(f.as_str()));
                assert!(named, "{fields:?}: refused without naming the field: {e}");
                refused += 1;
                continue;
            }
            Ok(started) => started,
        };
        ran += 1;
        assert_eq!(b.handle(reset), json!({"ok": true}), "{fields:?}");
        let mut state = start.to_vec();
        for _ in 0..25 {
            let r = b.handle(&step(&state));
            assert_eq!(r["ok"], json!(true), "{fields:?}: {r}");
            let a = actions(&r);
            assert!(common::finite_within_limits(&a, &cfg.safety), "{fields:?}: {r}");
            advance(&mut state, &a);
        }
    }
    println!("{config}: {ran} configs ran, {refused} refused by name");
    assert!(ran >= 10 && refused >= 10, "{ran} ran, {refused} refused");
}

#[test]
fn u_maze_configs_with_odd_numbers_are_refused_by_name_or_run_safely() {
    odd_numbers_are_refused_by_name_or_run_safely(
        "config/maze2d_umaze.yaml",
        r#"{"op": "reset", "goal": [1.0, 1.0], "seed": 1}"#,
        &[3.0, 1.0, 0.0, 0.0],
        |obs| json!({"op": "step", "state": &obs[..2], "velocity": &obs[2..]}).to_string(),
        |obs, a| point_mass(obs.as_mut_slice().try_into().unwrap(), a),
    );
}

#[test]
fn camera_configs_with_odd_numbers_are_refused_by_name_or_run_safely() {
    // The arm reaches each target it is sent.
    odd_numbers_are_refused_by_name_or_run_safely(
        "config/fruit_swap.yaml",
        r#"{"op": "reset", "seed": 1}"#,
        &REST,
        |state| json!({"op": "step", "state": state, "images": [gray(3072), gray(3072)]}).to_string(),
        |state, a| state.copy_from_slice(a),
    );
}
