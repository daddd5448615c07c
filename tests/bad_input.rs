//! Bad input gets a clear error naming the field and the expected value, never a panic.
//! Fixture models come from onnx/tests/make_bad_models.py.

mod common;

use std::path::Path;

use df_planner::diffusion::{
    MatrixKind, QuadraticTarget, SampleError, Sampler, SamplerSettings, SchedulingMatrix, SeededNoise,
};
use df_planner::model::{ModelError, OnnxDenoiser, Provider, RuntimeConfig};
use ndarray::Array3;

fn load_err(name: &str) -> String {
    let path = common::repo().join("tests/fixtures/models").join(name);
    match OnnxDenoiser::load(&path, &common::cpu()) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(msg: &str, expected: &str) {
    assert!(msg.contains(expected), "{msg:?}\n  does not contain {expected:?}");
}

#[test]
fn missing_model_file() {
    assert_contains(&load_err("absent.onnx"), "absent.onnx: not found");
}

#[test]
fn model_without_metadata() {
    assert_contains(
        &load_err("no_metadata.onnx"),
        "no `df_planner.contract` metadata; export the model with `df-train export`",
    );
}

#[test]
fn malformed_metadata() {
    assert_contains(
        &load_err("malformed_metadata.onnx"),
        "df_planner.contract: not valid contract JSON",
    );
}

#[test]
fn graph_shape_disagrees_with_metadata() {
    let msg = load_err("shape_mismatch.onnx");
    assert_contains(
        &msg,
        "graph input `x_t`: expected Float32 of rank 3 with last axis 12, got Float32 with shape [-1, -1, 10]",
    );
}

#[test]
fn graph_with_a_fixed_token_axis() {
    // Exported without dynamic axes: the planner's shorter first windows would fail in ORT.
    let msg = load_err("fixed_tokens.onnx");
    assert_contains(
        &msg,
        "graph input `x_t`: expected dynamic batch and token axes (onnx/CONTRACT.md: [B, T, ...]), got Float32 with shape [-1, 4, 12]",
    );
}

#[test]
fn graph_with_other_input_names() {
    assert_contains(
        &load_err("wrong_inputs.onnx"),
        r#"graph inputs: expected ["x_t", "k"], got ["x", "t"]"#,
    );
}

#[test]
fn unknown_parameterization() {
    let msg = load_err("unknown_parameterization.onnx");
    assert_contains(
        &msg,
        "field `diffusion.parameterization`: unknown variant `score`, expected one of `x0`, `eps`, `v`",
    );
}

#[test]
fn required_gpu_provider_that_is_missing_is_an_error() {
    if cfg!(feature = "cuda") {
        return; // on a CUDA build the provider may be there; this checks the CPU-only build
    }
    let runtime = RuntimeConfig {
        providers: vec![Provider::Cuda, Provider::Cpu],
        require_providers: true,
        ..common::cpu()
    };
    let err = OnnxDenoiser::load(&common::repo().join("tests/fixtures/models/stand_in.onnx"), &runtime)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            ModelError::Provider {
                provider: Provider::Cuda,
                ..
            }
        ),
        "{err}"
    );
    assert_contains(
        &err.to_string(),
        "execution provider cuda: not compiled into this binary (build with `--features cuda`)",
    );
}

#[test]
fn intra_threads_beyond_the_cores_are_capped() {
    let cores = std::thread::available_parallelism().unwrap().get();
    // 100000 used to leave ORT's session builder spawning threads for minutes.
    let runtime = RuntimeConfig {
        intra_threads: 100_000,
        ..common::cpu()
    };
    assert_eq!(runtime.intra_threads_capped(), cores);
    OnnxDenoiser::load(&common::repo().join("tests/fixtures/models/stand_in.onnx"), &runtime).unwrap();
    for asked in [0, 1] {
        let runtime = RuntimeConfig {
            intra_threads: asked,
            ..common::cpu()
        };
        assert_eq!(runtime.intra_threads_capped(), asked);
    }
}

#[test]
fn intra_op_spinning_either_way_loads_and_gives_the_same_outputs() {
    use df_planner::diffusion::Denoiser;
    let model = common::repo().join("onnx/models/pointmass.onnx");
    let outputs = |intra_spinning: bool| {
        let runtime = RuntimeConfig {
            intra_threads: 2,
            intra_spinning,
            ..common::cpu()
        };
        let mut denoiser = OnnxDenoiser::load(&model, &runtime).unwrap();
        let (t, d) = (denoiser.contract().max_tokens, denoiser.contract().layout.token_dim);
        let x = Array3::from_shape_fn((4, t, d), |(b, i, j)| ((b * 31 + i * 7 + j) as f32 * 0.37).sin());
        let k = ndarray::Array2::from_shape_fn((4, t), |(b, i)| ((b + 3 * i) % 10) as i64);
        let (mut x0, mut eps) = (Array3::zeros((4, t, d)), Array3::zeros((4, t, d)));
        denoiser
            .denoise(x.view(), k.view(), x0.view_mut(), eps.view_mut())
            .unwrap();
        (x0, eps)
    };
    let (sleeping, spinning) = (outputs(false), outputs(true));
    assert!(sleeping.0.iter().any(|v| *v != 0.0));
    assert_eq!(sleeping, spinning);
}

fn settings() -> SamplerSettings {
    SamplerSettings {
        eta: 0.0,
        stabilization_level: 1,
        noise_clip: 6.0,
        guidance_scale: 0.0,
        guidance_form: Default::default(),
        context_tokens: 0,
        shared_tokens: 0,
        redraws: 0,
        guided_tokens: None,
        mcg_temperature: None,
    }
}

fn sample(model: &str, tokens: usize, guidance: bool, x_init: f32) -> Result<(), SampleError> {
    let mut den = common::load(Path::new("tests/fixtures/models").join(model).as_path());
    let c = den.contract().clone();
    let rows = SchedulingMatrix::build(MatrixKind::Pyramid { uncertainty: 1.0 }, tokens, 3)
        .unwrap()
        .to_timesteps(0, c.diffusion.timesteps);
    let shape = (2, tokens, c.layout.token_dim);
    let mut x = Array3::from_elem(shape, x_init);
    let reward = QuadraticTarget {
        target: vec![0.0; shape.2],
        weights: vec![1.0; shape.2],
    };
    let settings = SamplerSettings {
        guidance_scale: if guidance { 1.0 } else { 0.0 },
        ..settings()
    };
    Sampler::new(settings, c.alpha_bar().unwrap(), shape)?.run(
        &mut den,
        &mut x,
        &rows,
        Some(&reward),
        &mut SeededNoise::new(0),
        |_, _| {},
    )
}

#[test]
fn stand_in_model_samples() {
    sample("stand_in.onnx", 4, false, 0.3).unwrap();
}

#[test]
fn window_longer_than_max_tokens() {
    let err = sample("stand_in.onnx", 5, false, 0.3).unwrap_err();
    assert_eq!(err.to_string(), "window of 5 tokens exceeds the model's max_tokens = 4");
}

#[test]
fn nan_in_the_input_tokens() {
    let err = sample("stand_in.onnx", 4, false, f32::NAN).unwrap_err();
    assert_contains(
        &err.to_string(),
        "input token is not finite at sample 0, token 0 (row 0); expected finite values",
    );
}

#[test]
fn nan_from_the_network() {
    let err = sample("nan_output.onnx", 4, false, 0.3).unwrap_err();
    assert_contains(
        &err.to_string(),
        "network output is not finite at sample 0, token 0 (row 0)",
    );
}

#[test]
fn guidance_without_a_vjp_graph() {
    let err = sample("stand_in.onnx", 4, true, 0.3).unwrap_err();
    assert_contains(
        &err.to_string(),
        "guidance needs the denoise_vjp graph, which this model does not provide",
    );
}

#[test]
fn a_cotangent_of_another_shape_than_x_t_is_refused() {
    use df_planner::diffusion::Denoiser;
    use ndarray::Array2;

    let mut den = common::load(Path::new("onnx/models/pointmass.onnx"));
    let d = den.token_dim();
    let (x_t, k) = (Array3::<f32>::zeros((1, 2, d)), Array2::<i64>::zeros((1, 2)));
    let (mut x0, mut eps, mut grad) = (x_t.clone(), x_t.clone(), x_t.clone());
    let short = Array3::<f32>::zeros((1, 1, d));
    let err = den
        .denoise_vjp(
            x_t.view(),
            k.view(),
            short.view(),
            x0.view_mut(),
            eps.view_mut(),
            grad.view_mut(),
        )
        .unwrap_err();
    assert_contains(
        &err.to_string(),
        &format!("cotangent (1, 1, {d}): expected the shape of x_t, (1, 2, {d})"),
    );
}

#[test]
fn vjp_named_in_metadata_but_absent_on_disk_loads_without_guidance() {
    let den = common::load(Path::new("tests/fixtures/models/missing_vjp.onnx"));
    assert!(!den.has_vjp());
}

#[test]
fn a_guided_node_is_refused_at_start_on_a_model_without_a_vjp_graph() {
    let mut cfg = df_planner::config::NodeConfig::load(&common::repo().join("config/pointmass_goals.yaml")).unwrap();
    cfg.model.path = common::repo().join("tests/fixtures/models/missing_vjp.onnx");
    cfg.model.runtime = common::cpu();
    cfg.planner.horizon_tokens = None; // the stand-in's window
    let err = df_planner::node::planner(&cfg).err().expect("refused").to_string();
    assert_contains(
        &err,
        "planner.guidance_scale: expected 0, or a model with its denoise_vjp graph",
    );
    cfg.planner.guidance_scale = 0.0;
    if let Err(e) = df_planner::node::planner(&cfg) {
        panic!("unguided, it plans: {e}");
    }
}

#[test]
fn a_replan_interval_longer_than_the_plan_is_refused_at_start() {
    let mut cfg = df_planner::config::NodeConfig::load(&common::repo().join("config/pointmass.yaml")).unwrap();
    cfg.model.runtime = common::cpu();
    cfg.planner.horizon_tokens = Some(3);
    cfg.planner.replan_every = 13;
    let err = df_planner::node::planner(&cfg).err().expect("refused").to_string();
    assert_contains(
        &err,
        "planner.replan_every: expected 1..=12 (horizon_tokens 3 × frame_stack 4: a plan covers the steps until the next), got 13",
    );
    cfg.planner.replan_every = 12;
    if let Err(e) = df_planner::node::planner(&cfg) {
        panic!("a plan covering the interval plans: {e}");
    }
}

#[test]
fn sampler_settings_are_checked() {
    let ab = df_planner::diffusion::AlphaBar::new(vec![0.9, 0.5, 0.1]).unwrap();
    let bad = [
        (
            SamplerSettings {
                stabilization_level: 3,
                ..settings()
            },
            "stabilization_level: expected 0..3, got 3",
        ),
        (
            SamplerSettings {
                noise_clip: 0.0,
                ..settings()
            },
            "noise_clip: expected > 0, got 0",
        ),
        (
            SamplerSettings {
                eta: -1.0,
                ..settings()
            },
            "eta: expected 0..=1 (0 deterministic DDIM, 1 DDPM's variance), got -1",
        ),
        (
            SamplerSettings { eta: 1.5, ..settings() },
            "eta: expected 0..=1 (0 deterministic DDIM, 1 DDPM's variance), got 1.5",
        ),
        (
            SamplerSettings {
                shared_tokens: 9,
                ..settings()
            },
            "shared_tokens: expected <= 4 tokens, got 9",
        ),
        (
            SamplerSettings {
                guided_tokens: Some(5),
                ..settings()
            },
            "guided_tokens: expected <= 4 tokens, got 5",
        ),
        (
            SamplerSettings {
                mcg_temperature: Some(0.0),
                ..settings()
            },
            "mcg_temperature: expected a finite number > 0, got 0",
        ),
        (
            SamplerSettings {
                guidance_scale: -1.0,
                ..settings()
            },
            "guidance_scale: expected a finite number >= 0, got -1",
        ),
    ];
    for (s, expected) in bad {
        let err = Sampler::new(s, ab.clone(), (1, 4, 12)).err().unwrap();
        assert_eq!(err.to_string(), expected);
    }
    let redraws = SamplerSettings {
        redraws: 3,
        ..settings()
    };
    let err = Sampler::new(redraws, ab.clone(), (2, 4, 12)).err().unwrap();
    assert_eq!(err.to_string(), "redraws: batch of samples: expected 1, got 2");
}

/// Planner settings drawn across their ranges, valid and not: each config is refused at start
/// with the setting named, or runs episodes through the node's loop without a panic.
#[test]
fn planner_settings_across_their_ranges_are_refused_by_name_or_plan() {
    use df_planner::bridge::Bridge;
    use df_planner::diffusion::GuidanceForm;
    use df_planner::planner::McgForm;

    let mut base = df_planner::config::NodeConfig::load(&common::repo().join("config/pointmass_goals.yaml")).unwrap();
    base.model.runtime = common::cpu();
    // The simulator bridge ticks once per model step.
    base.control.rate_hz = 1.0 / base.control.action_dt_s;
    let mut draws = common::Draws(0x2545_f491_4f6c_dd1d);
    let mut pick = |n| draws.pick(n);
    let (mut refused, mut ran) = (0, 0);
    for _ in 0..300 {
        let mut cfg = base.clone();
        let p = &mut cfg.planner;
        let u = [0.0, 0.5, 1.0][pick(3)];
        p.matrix = [
            MatrixKind::Pyramid { uncertainty: u },
            MatrixKind::Autoregressive,
            MatrixKind::FullSequence,
            MatrixKind::Trapezoid { uncertainty: u },
        ][pick(4)];
        // Mostly values a config could hold, a few beyond the model or the plan.
        p.sampling_steps = [1, 2, 5, 5, 1001][pick(5)];
        p.context_tokens = [1, 1, 1, 2, 3, 0, 8][pick(7)];
        p.horizon_tokens = [None, None, None, Some(1), Some(2), Some(0), Some(8)][pick(7)];
        p.samples = [1, 1, 2, 3, 4, 0][pick(6)];
        p.mcg = [McgForm::Futures, McgForm::PriorFutures, McgForm::Redraws][pick(3)];
        p.mcg_temperature = [None, Some(0.05)][pick(2)];
        p.guidance_form = [
            GuidanceForm::MeanShift,
            GuidanceForm::Score { max_gain: 100.0 },
            GuidanceForm::NextState,
        ][pick(3)];
        p.eta = [0.0, 1.0][pick(2)];
        p.replan_every = [1, 2, 3, 4, 4, 8, 0, 31][pick(8)];
        p.warm_start_level = [None, None, Some(0), Some(1), Some(5), Some(6)][pick(6)];
        let settings = format!("{:?}", cfg.planner);
        let outcome = std::panic::catch_unwind(|| {
            let mut b = match Bridge::new(&cfg, None) {
                Ok(b) => b,
                Err(e) => return Err(e),
            };
            for episode in 0..2 {
                let r = b.handle(&format!(r#"{{"op": "reset", "goal": [0.5, -0.5], "seed": {episode}}}"#));
                assert_eq!(r["ok"], serde_json::json!(true), "{r}");
                for _ in 0..12 {
                    let r = b.handle(r#"{"op": "step", "state": [0.0, 0.0], "velocity": [0.1, 0.0]}"#);
                    assert_eq!(r["ok"], serde_json::json!(true), "{r}");
                    assert!(r["plan_error"].is_null(), "{r}");
                }
            }
            Ok(())
        });
        match outcome {
            Ok(Ok(())) => ran += 1,
            Ok(Err(e)) => {
                assert!(
                    e.contains("planner.") || e.contains("replan"),
                    "{settings}: refused without naming the setting: {e}"
                );
                refused += 1;
            }
            Err(_) => panic!("{settings}: panicked"),
        }
    }
    println!("{ran} configs planned, {refused} refused by name");
    assert!(ran >= 10 && refused >= 10, "{ran} planned, {refused} refused");
}
