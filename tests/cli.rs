//! The binary as a user runs it: inspect and sample on the shipped model.

mod common;

use std::process::Command;

fn df_planner(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_df_planner"))
        .args(args)
        .current_dir(common::repo())
        .output()
        .expect("df_planner runs")
}

#[test]
fn inspect_prints_the_contract() {
    let out = df_planner(&["inspect", "onnx/models/pointmass.onnx", "--providers", "cpu"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "frame [action 2, observation 4] = 6 floats; 4 frames per token = token_dim 24",
        "max_tokens 8, causal true",
        "parameterization \"v\"",
        "denoise_vjp pointmass.vjp.onnx (loaded)",
        "provider     cpu       available",
    ] {
        assert!(text.contains(expected), "{text}\n  lacks {expected:?}");
    }
}

#[test]
fn sample_writes_a_plan_per_matrix() {
    let dir = std::env::temp_dir().join(format!("df_planner_cli_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for matrix in ["pyramid", "autoregressive", "full_sequence", "trapezoid"] {
        let out_path = dir.join(format!("{matrix}.json"));
        let out = df_planner(&[
            "sample",
            "--model",
            "onnx/models/pointmass.onnx",
            "--matrix",
            matrix,
            "--steps",
            "5",
            "--seed",
            "3",
            "--batch",
            "2",
            "--horizon",
            "6",
            "--providers",
            "cpu",
            "--out",
            out_path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{matrix}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
        let frames = plan["frames"].as_array().unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].as_array().unwrap().len(), 6 * 4, "6 tokens of 4 frames");
        assert_eq!(frames[0][0]["action"].as_array().unwrap().len(), 2);
        assert_eq!(frames[0][0]["observation"].as_array().unwrap().len(), 4);
    }
    // Same seed, same plan.
    let again = dir.join("again.json");
    let args = |p: &str| {
        vec![
            "sample",
            "--model",
            "onnx/models/pointmass.onnx",
            "--seed",
            "3",
            "--eta",
            "1",
            "--providers",
            "cpu",
            "--out",
        ]
        .into_iter()
        .map(String::from)
        .chain([p.to_string()])
        .collect::<Vec<_>>()
    };
    for p in [dir.join("first.json"), again.clone()] {
        let a: Vec<String> = args(p.to_str().unwrap());
        assert!(df_planner(&a.iter().map(String::as_str).collect::<Vec<_>>())
            .status
            .success());
    }
    let tokens = |p: &std::path::Path| {
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(p).unwrap()).unwrap()["tokens_normalized"]
            .clone()
    };
    assert_eq!(tokens(&dir.join("first.json")), tokens(&again));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = df_planner(&[
        "sample",
        "--model",
        "onnx/models/pointmass.onnx",
        "--horizon",
        "9",
        "--out",
        "/dev/null",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--horizon: expected at most max_tokens = 8, got 9"));
    let out = df_planner(&[
        "sample",
        "--model",
        "onnx/models/pointmass.onnx",
        "--matrix",
        "zigzag",
        "--out",
        "/dev/null",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("matrix.kind: unknown \"zigzag\""));
    for (flag, expected) in [
        ("--steps", "--steps: matrix: sampling steps must be >= 1, got 0"),
        ("--horizon", "--horizon: matrix: horizon must be >= 1, got 0"),
        (
            "--uncertainty",
            "--uncertainty: matrix.uncertainty: expected a finite value >= 0, got -1",
        ),
    ] {
        let value = if flag == "--uncertainty" { "-1" } else { "0" };
        let given = format!("{flag}={value}");
        let out = df_planner(&[
            "sample",
            "--model",
            "onnx/models/pointmass.onnx",
            &given,
            "--out",
            "/dev/null",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{err}");
    }
    let out = df_planner(&["inspect", "tests/fixtures/models/no_metadata.onnx"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no `df_planner.contract` metadata"));
    // bench --config runs on the config's model.runtime: a runtime flag is refused, not ignored.
    let out = df_planner(&["bench", "--config", "config/pointmass.yaml", "--providers", "cpu"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'--config <CONFIG>' cannot be used with"));
    let out = df_planner(&[
        "serve",
        "--config",
        "config/fruit_swap.yaml",
        "--execute",
        "pd_controller",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "serve.execute / serve.hold_radius: the PD controller commands one action per position dimension, expected a model with action_dim 2, got 4"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (args, expected) in [
        (&["--iters", "0"][..], "--iters: expected >= 1, got 0"),
        (
            &["--tokens", "20"][..],
            "--tokens: expected 1 to max_tokens = 8, got 20",
        ),
        (&["--seconds", "3"][..], "'--model <MODEL>' cannot be used with"),
    ] {
        let out = df_planner(&[&["bench", "--model", "onnx/models/pointmass.onnx"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{err}");
    }
    // A config the planner refuses is named by its file in replay and bench, as in serve.
    let dir = std::env::temp_dir().join(format!("df_planner_cli_cfg_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("no_steps.yaml");
    let base = common::repo().join("config/pointmass.yaml");
    std::fs::write(
        &bad,
        format!("base: {}\nplanner:\n  sampling_steps: 0\n", base.display()),
    )
    .unwrap();
    let bad_path = bad.to_str().unwrap();
    let replay_out = dir.join("out.mcap");
    for args in [
        &[
            "replay",
            "--bag",
            "tests/fixtures/bags/pointmass_mcap",
            "--config",
            bad_path,
            "--out",
            replay_out.to_str().unwrap(),
        ][..],
        &["bench", "--config", bad_path, "--seconds", "1"][..],
    ] {
        let err = String::from_utf8_lossy(&df_planner(args).stderr).to_string();
        assert!(
            err.contains("no_steps.yaml: planner.sampling_steps: expected >= 1, got 0"),
            "{err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    // A negative value reaches its check rather than reading as a flag.
    let out = df_planner(&[
        "sample",
        "--model",
        "onnx/models/pointmass.onnx",
        "--eta",
        "-1",
        "--out",
        "/dev/null",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("eta: expected 0..=1"));
    let out = df_planner(&["bench", "--model", "onnx/models/fruit_swap.onnx"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a camera model (its calls need a window's images)"));
    let out = df_planner(&["inspect", "onnx/models/pointmass.vjp.onnx"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(this is a denoise_vjp graph: give the model's denoise graph")
    );
    for (flag, expected) in [
        ("--rate-hz=0", "expected a rate from 1/86400 to 1e6 Hz, got \"0\""),
        ("--seconds=-1", "expected seconds from 0.001 to 86400, got \"-1\""),
    ] {
        let out = df_planner(&["bench", "--config", "config/pointmass.yaml", flag]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{err}");
    }
    let out = df_planner(&["sample", "--model", "onnx/models/fruit_swap.onnx", "--out", "/dev/null"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a camera model (it plans from images)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_config_runs_the_live_loop_and_says_what_it_planned() {
    // The maze config guides every plan toward its planner.goal.target with 4 MCG samples: the
    // figures are only comparable when the JSON says so.
    let out = df_planner(&["bench", "--config", "config/maze2d_umaze.yaml", "--seconds", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["samples"], 4);
    assert_eq!(
        report["goal"],
        serde_json::json!({"target": [1.0, 1.0], "guided": true})
    );
    assert!(report["ticks"].as_u64().unwrap() > 0, "{report}");
    // A plan was made and timed; whether it reached the tick within the second depends on this
    // machine's load (a loaded CPU takes over a second for the first MCG plan).
    assert!(report["plan_latency"]["count"].as_u64().unwrap() > 0, "{report}");
    assert!(report["plans"].is_u64(), "{report}");
    for key in [
        "tick_latency",
        "plan_latency",
        "deadline_misses",
        "faults",
        "waiting",
        "clipped",
        "rate_limited",
    ] {
        assert!(!report[key].is_null(), "{key} missing: {report}");
    }
    // The planner's own counts, from the node's last diagnostics report (made when it stops).
    for key in ["plan_errors", "steps_recorded_late", "steps_skipped"] {
        assert!(report["planner"][key].is_u64(), "planner.{key} missing: {report}");
    }
    // Every timed plan is in the histogram `serve --plan-times` draws from, which takes the report as it is.
    let buckets = report["plan_latency_buckets"].as_array().expect("plan_latency_buckets");
    let counted: u64 = buckets.iter().map(|b| b[1].as_u64().unwrap()).sum();
    assert_eq!(counted, report["plan_latency"]["count"].as_u64().unwrap(), "{report}");
    df_planner::control::MeasuredPlanTimes::from_bench_report(&report).unwrap();
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // `inspect ... | head`: the pipe closes before inspect has loaded the model and written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_df_planner"))
        .args([
            "inspect",
            "onnx/models/maze2d_umaze.onnx",
            "--json",
            "--providers",
            "cpu",
        ])
        .current_dir(common::repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("df_planner runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn serve_overrides_take_a_value_or_none() {
    for (flag, expected) in [
        ("--hold-radius", "--hold-radius: expected a distance or none, got far"),
        (
            "--warm-start-level",
            "--warm-start-level: expected a level or none, got far",
        ),
    ] {
        let out = df_planner(&["serve", "--config", "config/maze2d_umaze.yaml", flag, "far"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    // A value the config check refuses names the flag that set it as well as the key.
    let out = df_planner(&["serve", "--config", "config/maze2d_umaze.yaml", "--samples", "0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config/maze2d_umaze.yaml with --samples: planner.samples: expected >= 1, got 0"),
        "{stderr}"
    );
}

#[test]
fn replay_prints_what_it_read_planned_and_compared() {
    let dir = std::env::temp_dir().join(format!("df_planner_cli_replay_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("goals.mcap");
    let out = df_planner(&[
        "replay",
        "--bag",
        "tests/fixtures/bags/goals_mcap",
        "--config",
        "config/pointmass_goals.yaml",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "/goal_pose: read 4, used 2",
        "4 goal messages, 2 refused",
        "actions compared: RMSE",
        "plan latency p50",
    ] {
        assert!(text.contains(expected), "{text}\n  lacks {expected:?}");
    }
    assert!(std::fs::metadata(&out_file).unwrap().len() > 0);
    std::fs::remove_dir_all(&dir).ok();
}
