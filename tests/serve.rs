//! The serve line protocol on the shipped point-mass model: requests, bad input that leaves
//! the server running, guidance towards the goal, and both execution modes.

mod common;

use df_planner::config::NodeConfig;
use df_planner::planner::McgForm;
use df_planner::serve::Server;
use serde_json::{json, Value};

fn config(extra: &str) -> NodeConfig {
    let text = std::fs::read_to_string(common::repo().join("config/pointmass.yaml")).unwrap();
    let text = text
        .replace(
            "  seed: 0\n",
            &format!("  seed: 0\n  goal: {{position_dims: [0, 1], squash: gaussian, sigma: 2.0, aggregate: {{kind: soft_max, temperature: 0.1}}}}\n{extra}"),
        )
        .replace("replan_every: 2 ", "replan_every: 4 ");
    let mut cfg = NodeConfig::parse(&text, std::path::Path::new("test.yaml")).unwrap();
    cfg.model.path = common::repo().join("onnx/models/pointmass.onnx");
    cfg.model.runtime = common::cpu();
    cfg
}

fn server(cfg: &NodeConfig) -> Server {
    Server::new(cfg, df_planner::node::planner(cfg).unwrap()).unwrap()
}

fn ask(s: &mut Server, v: Value) -> Value {
    s.handle(&v.to_string())
}

#[test]
fn protocol_round_trip_and_replanning_cadence() {
    let mut s = server(&config(""));
    assert_eq!(
        ask(&mut s, json!({"op": "reset", "goal": [1.0, 1.0]})),
        json!({"ok": true})
    );
    let mut replans = 0;
    for k in 0..9 {
        let r = ask(&mut s, json!({"op": "step", "obs": [0.1 * k as f64, 0.0, 0.0, 0.0]}));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["action"].as_array().unwrap().len(), 2);
        if r["replanned"] == true {
            replans += 1;
            assert_eq!(r["plan"].as_array().unwrap().len(), 7 * 4, "7 tokens x 4 frames");
        }
    }
    assert_eq!(replans, 3, "every 4 steps: at 0, 4, 8");
    let stats = ask(&mut s, json!({"op": "stats"}));
    assert_eq!(stats["plans"], 3);
    assert!(stats["replan_ms_p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_requests_are_answered_and_the_server_keeps_going() {
    let mut cfg = config("");
    cfg.serve = Some(df_planner::serve::ServeSection {
        goal_bounds: Some([[-2.0, -2.0], [2.0, 2.0]]),
        goal_keepout: vec![[[0.5, -1.0], [1.5, 0.0]]],
        ..Default::default()
    });
    let mut s = server(&cfg);
    let cases = [
        (
            "not json".to_string(),
            "malformed request: not JSON (expected ident at line 1 column 2)",
        ),
        (
            json!({"op": "fly"}).to_string(),
            "malformed request: op: unknown variant `fly`",
        ),
        (json!({"goal": [1.0, 1.0]}).to_string(), "malformed request: op: "),
        // Cut inside a key: no field to name.
        (
            r#"{"op": "stats", "ex"#.to_string(),
            "malformed request: not JSON (EOF while parsing a string at line 1 column 19)",
        ),
        // Steps first: after a refused reset a step is refused for that.
        (
            json!({"op": "step", "obs": [1.0]}).to_string(),
            "observation: expected 4 values (layout.observation_dim), got 1",
        ),
        (
            json!({"op": "step", "obs": [0.0, f64::NAN, 0.0, 0.0]}).to_string(),
            "malformed request: obs[1]: invalid type: null, expected f64",
        ),
        (
            json!({"op": "reset", "goal": [1.0]}).to_string(),
            "malformed request: goal: invalid length 1",
        ),
        (
            json!({"op": "reset", "goal": [1.0, 1.0], "speed": 2}).to_string(),
            "malformed request: speed: unknown field `speed`",
        ),
        (
            json!({"op": "reset", "goal": [5.0, 0.0]}).to_string(),
            "outside the workspace, expected within [-2.0, -2.0]..[2.0, 2.0]",
        ),
        (
            json!({"op": "reset", "goal": [1.0, -0.5]}).to_string(),
            "goal [1.0, -0.5]: inside a keep-out box [0.5, -1.0]..[1.5, 0.0] (serve.goal_keepout)",
        ),
    ];
    for (line, expected) in cases {
        let r = s.handle(&line);
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains(expected), "{line}: {r}");
    }
    assert_eq!(ask(&mut s, json!({"op": "reset", "goal": [1.0, 1.0]}))["ok"], true);
    assert_eq!(
        ask(&mut s, json!({"op": "step", "obs": [0.0, 0.0, 0.0, 0.0]}))["ok"],
        true
    );
}

#[test]
fn after_a_refused_reset_steps_are_refused_until_a_reset_is_accepted() {
    let mut cfg = config("");
    cfg.serve = Some(df_planner::serve::ServeSection {
        goal_keepout: vec![[[0.5, -1.0], [1.5, 0.0]]],
        ..Default::default()
    });
    let mut s = server(&cfg);
    let step = |s: &mut Server| ask(s, json!({"op": "step", "obs": [0.0, 0.0, 0.0, 0.0]}));
    // After a refused reset `goal`, a step is refused, naming why.
    let refused_after = |s: &mut Server, goal: Value, why: &str| {
        assert_eq!(ask(s, json!({"op": "reset", "goal": goal}))["ok"], false);
        let r = step(s);
        let error = r["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!("no episode: the last reset was refused ({why}")),
            "{r}"
        );
    };
    assert_eq!(ask(&mut s, json!({"op": "reset", "goal": [1.0, 1.0]}))["ok"], true);
    assert_eq!(step(&mut s)["ok"], true);
    // A goal in a wall: the episode before must not run on toward the old goal.
    refused_after(&mut s, json!([1.0, -0.5]), "goal [1.0, -0.5]: inside a keep-out box");
    assert_eq!(ask(&mut s, json!({"op": "reset", "goal": [-1.0, 1.0]}))["ok"], true);
    assert_eq!(step(&mut s)["ok"], true);
    // A reset that cannot be read ends the episode too.
    refused_after(&mut s, json!([1.0]), "malformed request: goal: invalid length 1");
}

#[test]
fn a_goal_without_a_goal_reward_is_refused() {
    let mut cfg = config("");
    cfg.planner.goal = None;
    let mut s = server(&cfg);
    let r = ask(&mut s, json!({"op": "reset", "goal": [1.0, 1.0]}));
    assert_eq!(r["error"], "goal given, but the config has no planner.goal reward");
    assert_eq!(ask(&mut s, json!({"op": "reset", "goal": null}))["ok"], true);
}

/// Mean distance of the planned positions' closest approach to the goal, over seeds.
fn closest_approach(guidance_scale: f64, samples: usize) -> f64 {
    let goal = [1.2, -1.0];
    let mut total = 0.0;
    for seed in 0..6 {
        let mut cfg = config("");
        cfg.planner.guidance_scale = guidance_scale;
        cfg.planner.samples = samples;
        cfg.planner.seed = seed;
        let mut s = server(&cfg);
        ask(&mut s, json!({"op": "reset", "goal": goal}));
        let r = ask(&mut s, json!({"op": "step", "obs": [-0.5, 0.5, 0.0, 0.0]}));
        let best = r["plan"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| ((p[0].as_f64().unwrap() - goal[0]).powi(2) + (p[1].as_f64().unwrap() - goal[1]).powi(2)).sqrt())
            .fold(f64::INFINITY, f64::min);
        total += best;
    }
    total / 6.0
}

#[test]
fn guidance_brings_plans_closer_to_the_goal() {
    let plain = closest_approach(0.0, 1);
    let guided = closest_approach(30.0, 1);
    let mcg = closest_approach(30.0, 4);
    println!("closest approach: plain {plain:.3}, guided {guided:.3}, MCG(4) {mcg:.3}");
    assert!(guided < 0.5 * plain, "guided {guided} vs plain {plain}");
    assert!(mcg < 0.5 * plain, "mcg {mcg} vs plain {plain}");
}

/// MCG, either form, reports how much averaging over its samples moved the guidance, how
/// strong it left it and how strong plain guidance was, and MCG over futures the futures;
/// plain guidance and unguided plans report none of these.
#[test]
fn mcg_plans_report_their_shift_pull_and_futures() {
    let first_plan = |samples: usize, mcg: McgForm, goal: Value| {
        let mut cfg = config("");
        cfg.planner.guidance_scale = 30.0;
        cfg.planner.samples = samples;
        cfg.planner.mcg = mcg;
        let mut s = server(&cfg);
        ask(&mut s, json!({"op": "reset", "goal": goal}));
        ask(&mut s, json!({"op": "step", "obs": [-0.5, 0.5, 0.0, 0.0]}))
    };
    let goal = json!([1.2, -1.0]);
    for mcg in [McgForm::Futures, McgForm::PriorFutures, McgForm::Redraws] {
        let reply = first_plan(4, mcg, goal.clone());
        let shift = reply["mcg_shift"]
            .as_f64()
            .unwrap_or_else(|| panic!("{mcg:?}: {reply}"));
        assert!(shift > 0.0 && shift.is_finite(), "{mcg:?}: mcg_shift {shift}");
        let pull = reply["mcg_pull"].as_f64().unwrap_or_else(|| panic!("{mcg:?}: {reply}"));
        let guidance = reply["mcg_guidance"]
            .as_f64()
            .unwrap_or_else(|| panic!("{mcg:?}: {reply}"));
        assert!(
            guidance > 0.0 && guidance.is_finite(),
            "{mcg:?}: mcg_guidance {guidance}"
        );
        // A consistency check of the two sums: ḡ's component along g₀, (p² + 1 − s²)/2 of
        // ‖g₀‖, cannot exceed ḡ's length p (the values are the sampler's unit tests' job).
        let along = (pull * pull + 1.0 - shift * shift) / 2.0;
        assert!(
            pull > 0.0 && along.abs() <= pull + 1e-9,
            "{mcg:?}: pull {pull}, shift {shift}"
        );
        for plain in [first_plan(1, mcg, goal.clone()), first_plan(4, mcg, Value::Null)] {
            let reported = ["mcg_shift", "mcg_pull", "mcg_guidance", "futures"].map(|key| plain.get(key).is_some());
            assert_eq!(reported, [false; 4], "{plain}");
        }
        // The futures MCG averaged over: they share the executed token with the plan and
        // then go their own ways. Redraws sample one plan only.
        let futures = reply.get("futures").and_then(Value::as_array);
        if mcg == McgForm::Redraws {
            assert!(futures.is_none(), "{reply}");
            continue;
        }
        let (plan, futures) = (reply["plan"].as_array().unwrap(), futures.expect("futures"));
        assert_eq!(futures.len(), 3, "{mcg:?}");
        for future in futures {
            let future = future.as_array().unwrap();
            assert_eq!(future.len(), plan.len());
            assert_eq!(future[0], plan[0], "{mcg:?}: the executed token is shared");
            assert_ne!(
                future.last(),
                plan.last(),
                "{mcg:?}: the far tokens are each sample's own"
            );
        }
    }
}

/// The first step's reply of a server whose PD controller tracks the plan at `tempo`, and the
/// observation sent. kd is 0: the reply's plan carries positions only, so the position term is
/// checked exactly.
fn first_tracked_step(tempo: f64) -> (Value, [f64; 4]) {
    let mut cfg = config("");
    cfg.serve = Some(df_planner::serve::ServeSection {
        execute: df_planner::serve::Execute::PdController,
        tempo,
        kd: 0.0,
        ..Default::default()
    });
    let mut s = server(&cfg);
    ask(&mut s, json!({"op": "reset", "goal": null}));
    let obs = [0.3, -0.2, 0.05, 0.0];
    (ask(&mut s, json!({"op": "step", "obs": obs})), obs)
}

/// The reply's action pulls (kp 10, clipped) toward the plan's position `k`.
fn assert_tracks(r: &Value, k: usize, obs: &[f64; 4]) {
    let target = &r["plan"][k];
    for i in 0..2 {
        let expected = (10.0 * (target[i].as_f64().unwrap() - obs[i])).clamp(-1.0, 1.0);
        assert!((r["action"][i].as_f64().unwrap() - expected).abs() < 1e-9, "{r}");
    }
}

#[test]
fn pd_controller_tracks_the_planned_positions() {
    let (r, obs) = first_tracked_step(1.0);
    assert_tracks(&r, 0, &obs);
}

#[test]
fn a_faster_tempo_tracks_a_later_planned_position_and_is_refused_without_tracking() {
    // Twice as fast, the first step tracks the state planned two steps on.
    let (r, obs) = first_tracked_step(2.0);
    assert_tracks(&r, 1, &obs);
    let serve = |execute, tempo| df_planner::serve::ServeSection {
        execute,
        tempo,
        ..Default::default()
    };
    let refused = |serve| {
        let mut cfg = config("");
        cfg.serve = Some(serve);
        Server::new(&cfg, df_planner::node::planner(&cfg).unwrap())
            .err()
            .unwrap()
    };
    assert_eq!(
        refused(serve(df_planner::serve::Execute::DiffusedActions, 2.0)),
        "serve.tempo: only a PD controller tracking the plan runs it faster or slower, expected 1.0 \
         with execute diffused_actions, got 2 (or set execute: pd_controller)"
    );
    assert_eq!(
        refused(serve(df_planner::serve::Execute::PdController, 0.0)),
        "serve.tempo: expected a finite factor > 0, got 0"
    );
    // A plan of 7 tokens of 4 steps, 8 times faster, runs out before the next plan (every 4
    // steps); the node refuses it alike (`node_parts`).
    let too_fast = "serve.tempo: a plan of 28 steps tracked 8 times faster than planned lasts 3 steps, \
                    expected at least planner.replan_every (4): a tempo <= 7 (or replan sooner)";
    assert_eq!(refused(serve(df_planner::serve::Execute::PdController, 8.0)), too_fast);
    let mut cfg = config("");
    cfg.serve = Some(serve(df_planner::serve::Execute::PdController, 8.0));
    let node_error = df_planner::node::node_parts(&cfg).err().unwrap().to_string();
    assert!(node_error.contains(too_fast), "{node_error}");
    let mut cfg = config("");
    cfg.serve = Some(serve(df_planner::serve::Execute::PdController, 7.0));
    assert!(
        df_planner::node::node_parts(&cfg).is_ok(),
        "7 times faster lasts the 4 steps"
    );
}

#[test]
fn hold_radius_holds_the_goal_at_rest_once_the_plan_arrives() {
    let goal: [f64; 2] = [0.4, -0.3];
    let obs: [f64; 4] = [0.3, -0.2, 0.05, -0.02];
    let run = |hold_radius: Option<f64>| {
        let mut cfg = config("");
        cfg.serve = Some(df_planner::serve::ServeSection {
            hold_radius,
            ..Default::default()
        });
        let mut s = server(&cfg);
        ask(&mut s, json!({"op": "reset", "goal": goal}));
        ask(&mut s, json!({"op": "step", "obs": obs}))
    };
    // A radius no plan can miss: every step holds, p* = goal, v* = 0 (kp 10, kd 4).
    let r = run(Some(100.0));
    assert_eq!(r["holding"], true, "{r}");
    for i in 0..2 {
        let expected = (10.0 * (goal[i] - obs[i]) - 4.0 * obs[i + 2]).clamp(-1.0, 1.0);
        assert!((r["action"][i].as_f64().unwrap() - expected).abs() < 1e-9, "{r}");
    }
    assert_eq!(run(None)["holding"], false);
    let refused = |serve: df_planner::serve::ServeSection| {
        let mut cfg = config("");
        cfg.serve = Some(serve);
        Server::new(&cfg, df_planner::node::planner(&cfg).unwrap())
            .err()
            .unwrap()
    };
    for (radius, got) in [(-1.0, "-1"), (f64::INFINITY, "inf")] {
        assert_eq!(
            refused(df_planner::serve::ServeSection {
                hold_radius: Some(radius),
                ..Default::default()
            }),
            format!("serve.hold_radius: expected a finite distance > 0, or null, got {got}")
        );
    }
    // The gains of the PD controller the hold puts in the loop.
    assert_eq!(
        refused(df_planner::serve::ServeSection {
            hold_radius: Some(0.1),
            kd: -4.0,
            ..Default::default()
        }),
        "serve.kd: expected a finite gain >= 0, got -4"
    );
}

#[test]
fn warm_start_is_accepted_only_for_whole_tokens() {
    let mut cfg = config("");
    cfg.planner.warm_start_level = Some(5);
    let mut s = server(&cfg);
    ask(&mut s, json!({"op": "reset", "goal": [1.0, 1.0]}));
    for k in 0..8 {
        assert_eq!(
            ask(&mut s, json!({"op": "step", "obs": [0.05 * k as f64, 0.0, 0.0, 0.0]}))["ok"],
            true
        );
    }
    cfg.planner.replan_every = 3;
    let err = df_planner::node::planner(&cfg).err().unwrap().to_string();
    assert!(
        err.contains("planner.replan_every: expected a whole number of tokens (frame_stack = 4)"),
        "{err}"
    );
}

#[test]
fn a_refused_observation_is_not_a_step_and_leaves_the_warm_start() {
    let mut cfg = config("");
    cfg.planner.warm_start_level = Some(5);
    let episode = |bad_request_at: Option<usize>| {
        let mut s = server(&cfg);
        ask(&mut s, json!({"op": "reset", "goal": [1.0, 1.0], "seed": 3}));
        let mut actions = vec![];
        for k in 0..9 {
            if bad_request_at == Some(k) {
                assert_eq!(ask(&mut s, json!({"op": "step", "obs": [1.0]}))["ok"], false);
            }
            actions.push(ask(&mut s, json!({"op": "step", "obs": [0.05 * k as f64, 0.0, 0.0, 0.0]}))["action"].clone());
        }
        actions
    };
    // Plans at steps 0, 4 and 8, the later two warm: a refused request between them changes nothing.
    assert_eq!(episode(Some(2)), episode(None));
}

#[test]
fn a_seeded_reset_makes_the_episode_independent_of_what_ran_before() {
    let cfg = config("");
    let episode = |s: &mut Server, reset: Value| {
        ask(s, reset);
        (0..6)
            .map(|k| ask(s, json!({"op": "step", "obs": [0.1 * k as f64, 0.0, 0.0, 0.0]}))["action"].clone())
            .collect::<Vec<_>>()
    };
    let reset = |seed: Option<u64>| json!({"op": "reset", "goal": [1.0, 1.0], "seed": seed});
    let (mut fresh, mut used) = (server(&cfg), server(&cfg));
    episode(&mut used, reset(None));
    assert_ne!(
        episode(&mut fresh, reset(None)),
        episode(&mut used, reset(None)),
        "without a seed the noise stream runs on across episodes"
    );
    assert_eq!(episode(&mut fresh, reset(Some(7))), episode(&mut used, reset(Some(7))));
}

/// With a noise stream per sample, the point-mass model's unguided plans (where MCG has nothing
/// to average) are the same with 4 samples as with 1, plan after plan, up to the batched
/// inference's rounding: what MCG changes is then MCG's own doing. From one shared stream they
/// are not.
#[test]
fn per_sample_noise_streams_keep_the_executed_plan_of_a_planner_without_mcg() {
    use df_planner::diffusion::NoiseStreams;

    let actions = |samples: usize, streams: NoiseStreams| {
        let mut cfg = config("");
        cfg.planner.samples = samples;
        cfg.planner.noise_streams = streams;
        // Unguided, and every step draws noise (η 1), not only the first.
        cfg.planner.guidance_scale = 0.0;
        cfg.planner.eta = 1.0;
        let mut s = server(&cfg);
        ask(&mut s, json!({"op": "reset", "goal": [1.0, 1.0], "seed": 5}));
        (0..12)
            .flat_map(|k| {
                let r = ask(&mut s, json!({"op": "step", "obs": [0.1 * k as f64, 0.0, 0.0, 0.0]}));
                assert_eq!(r["ok"], true, "{r}");
                serde_json::from_value::<Vec<f64>>(r["action"].clone()).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let largest_gap = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let without_mcg = actions(1, NoiseStreams::Shared);
    let per_sample = largest_gap(&actions(4, NoiseStreams::PerSample), &without_mcg);
    let shared = largest_gap(&actions(4, NoiseStreams::Shared), &without_mcg);
    println!("largest action gap to the plan without MCG: per-sample streams {per_sample:e}, shared {shared:e}");
    assert!(per_sample < 1e-4, "{per_sample}");
    assert!(shared > 1e-2, "{shared}");
}

#[test]
fn score_path_scores_any_path_with_the_goal_reward() {
    let mut s = server(&config(""));
    let score = |s: &mut Server, positions: Value| ask(s, json!({"op": "score_path", "positions": positions}));
    let refused = score(&mut s, json!([[0.0, 0.0]]));
    assert_eq!(refused["error"], "score_path: no goal; reset with a goal first");
    ask(&mut s, json!({"op": "reset", "goal": [1.0, 1.0]}));
    let at_goal = score(&mut s, json!([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]));
    let away = score(&mut s, json!([[0.0, 0.0], [-1.0, -1.0], [-1.0, -1.0]]));
    assert!(
        at_goal["reward"].as_f64().unwrap() > away["reward"].as_f64().unwrap(),
        "{at_goal} vs {away}"
    );
    let bad = score(&mut s, json!([]));
    assert_eq!(
        bad["error"],
        "positions: expected one or more [x, y] of finite numbers, got 0 positions"
    );
    // The server keeps serving.
    assert_eq!(score(&mut s, json!([[1.0, 1.0]]))["ok"], true);
}

/// The fruit-swap arm's node config: a camera model whose actions are [x, y, z, gripper].
fn fruit_swap_config() -> NodeConfig {
    let path = common::repo().join("config/fruit_swap.yaml");
    let mut cfg = NodeConfig::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    cfg.model.path = common::repo().join("onnx/models/fruit_swap.onnx");
    cfg.model.runtime = common::cpu();
    cfg
}

#[test]
fn position_dims_leave_room_for_velocities_only_where_the_pd_controller_reads_them() {
    let mut cfg = config("");
    let serve = |execute| df_planner::serve::ServeSection {
        execute,
        position_dims: [2, 3],
        ..Default::default()
    };
    cfg.serve = Some(serve(df_planner::serve::Execute::DiffusedActions));
    let planner = |cfg: &NodeConfig| df_planner::node::planner(cfg).unwrap();
    assert!(
        Server::new(&cfg, planner(&cfg)).is_ok(),
        "plans are read at 2 and 3 of 4"
    );
    cfg.serve = Some(serve(df_planner::serve::Execute::PdController));
    let Err(e) = Server::new(&cfg, planner(&cfg)) else {
        panic!("velocities at 4 and 5 of 4 were accepted")
    };
    assert!(
        e.contains("serve.position_dims: expected indices < observation_dim / 2 (the positions) = 2, got [2, 3]"),
        "{e}"
    );
}

#[test]
fn the_pd_controller_is_refused_for_a_model_without_one_action_per_position() {
    let mut cfg = fruit_swap_config();
    let planner = |cfg: &NodeConfig| df_planner::node::planner(cfg).unwrap();
    assert!(Server::new(&cfg, planner(&cfg)).is_ok());
    cfg.serve = Some(df_planner::serve::ServeSection {
        execute: df_planner::serve::Execute::PdController,
        ..Default::default()
    });
    let Err(e) = Server::new(&cfg, planner(&cfg)) else {
        panic!("a PD controller over 4 actions was accepted")
    };
    assert!(e.contains("expected a model with action_dim 2, got 4"), "{e}");
}

#[test]
fn actions_far_outside_the_models_training_data_are_refused_at_load() {
    // The planner records every executed action in its history and refuses values more than
    // 1000 standard deviations from the training data's: a safety limit there would let the
    // arm be sent actions after which it refuses every step.
    let mut cfg = fruit_swap_config();
    cfg.safety.action_max[2] = 100.0;
    let Err(e) = df_planner::node::planner(&cfg) else {
        panic!("a height limit of 100 m was accepted")
    };
    let e = e.to_string();
    assert!(
        e.starts_with(
            "safety.action_max: expected values within 1000 standard deviations of the model's action mean ([2]: mean"
        ) && e.contains("got [2] = 100, 1."),
        "{e}"
    );
}

#[test]
fn a_camera_model_requires_its_cameras() {
    let mut cfg = fruit_swap_config();
    cfg.camera.required = false;
    let Err(e) = df_planner::node::planner(&cfg) else {
        panic!("a camera model was loaded with camera.required: false")
    };
    assert_eq!(
        e.to_string(),
        "camera.required: expected true (the model plans from camera images), got false"
    );
}

#[test]
fn an_image_level_is_refused_for_a_model_without_cameras() {
    let mut cfg = config("");
    cfg.planner.image_level = 2;
    let Err(e) = df_planner::node::planner(&cfg) else {
        panic!("an image level was accepted for a model without cameras")
    };
    assert_eq!(
        e.to_string(),
        "planner.image_level: expected 0 (the model has no cameras), got 2"
    );
    let mut cfg = fruit_swap_config();
    cfg.planner.image_level = 99;
    let e = df_planner::node::planner(&cfg).err().unwrap().to_string();
    assert!(e.starts_with("planner.image_level: expected 0.."), "{e}");
}

#[test]
fn mangled_request_lines_are_answered_and_the_server_keeps_going() {
    let cfg = config("");
    let mut s = server(&cfg);
    let reset = json!({"op": "reset", "goal": [1.0, -0.5], "seed": 3}).to_string();
    let step = json!({"op": "step", "obs": [0.25, -0.5, 0.1, 0.0]}).to_string();
    let others = [
        r#"{"op": "stats"}"#.to_string(),
        json!({"op": "score_path", "positions": [[0.0, 0.0], [0.5, 0.5]]}).to_string(),
    ];
    common::survive_mangled_lines(|line| s.handle(line), [reset, step], &others, &cfg.safety);
}
