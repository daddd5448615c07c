//! Parity: the Rust sampler over the ONNX graphs reproduces the PyTorch reference sampler
//! (onnx/df_train/reference_sampler.py) row by row, for every scheduling matrix, with and
//! without guidance through denoise_vjp and Monte Carlo Guidance (its forms: futures sharing
//! the near tokens, the same with only those guided or weighted by their rewards, and
//! redraws), at a noise clip the network's eps exceeds, and for the camera model with the
//! images of its history tokens. Keep this test forever.

mod common;

use std::path::Path;

use df_planner::diffusion::{
    Denoiser, GuidanceForm, MatrixKind, QuadraticTarget, RecordedNoise, Sampler, SamplerSettings, SchedulingMatrix,
    TimestepRows,
};
use ndarray::{Array3, ArrayView, ArrayView1, ArrayView5, Dimension};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    model: String,
    tolerance: f32,
    /// Each row sampled from the reference's previous row (golden.py says why it can be
    /// tighter than `tolerance`, which bounds the free-running rows).
    #[serde(default)]
    step_tolerance: Option<f32>,
    matrix: GoldenMatrix,
    context_tokens: usize,
    shape: [usize; 3],
    settings: GoldenSettings,
    guidance: Option<GoldenGuidance>,
    timestep_rows: Vec<Vec<i64>>,
    x_init: Vec<f32>,
    noise: Vec<Vec<f32>>,
    /// MCG redraws: per row, the redrawn windows' draw [redraws, T, D].
    #[serde(default)]
    redraw_noise: Vec<Vec<f32>>,
    states: Vec<Vec<f32>>,
    /// Camera models: the window's images [T, N, H, W, 3] and image levels [T].
    #[serde(default)]
    image_shape: Option<[usize; 5]>,
    #[serde(default)]
    images: Vec<f32>,
    #[serde(default)]
    image_level: Vec<i64>,
}

#[derive(Deserialize)]
struct GoldenMatrix {
    kind: String,
    uncertainty: f64,
    sampling_steps: u32,
    horizon: usize,
}

#[derive(Deserialize)]
struct GoldenSettings {
    guidance_form: String,
    max_gain: f64,
    eta: f64,
    stabilization_level: i64,
    noise_clip: f32,
    guidance_scale: f64,
    shared_tokens: usize,
    #[serde(default)]
    redraws: usize,
    #[serde(default)]
    guided_tokens: Option<usize>,
    #[serde(default)]
    mcg_temperature: Option<f64>,
}

#[derive(Deserialize)]
struct GoldenGuidance {
    target: Vec<f32>,
    weights: Vec<f32>,
}

fn form(s: &GoldenSettings) -> GuidanceForm {
    match s.guidance_form.as_str() {
        "mean_shift" => GuidanceForm::MeanShift,
        "score" => GuidanceForm::Score { max_gain: s.max_gain },
        "next_state" => GuidanceForm::NextState,
        other => panic!("golden guidance_form {other:?}"),
    }
}

fn array(shape: [usize; 3], data: &[f32]) -> Array3<f32> {
    Array3::from_shape_vec((shape[0], shape[1], shape[2]), data.to_vec()).expect("golden array has its shape")
}

/// The recorded draws of `rows`, in the order the sampler takes them: per row the redrawn
/// windows' draw (when `redrawing`: guided, with redraws), then the step's.
fn recorded_noise(golden: &Golden, rows: std::ops::Range<usize>, redrawing: bool) -> RecordedNoise {
    let [_, tokens, dim] = golden.shape;
    let redraw_shape = [golden.settings.redraws, tokens, dim];
    let mut draws = Vec::new();
    for r in rows {
        if redrawing {
            draws.push(array(redraw_shape, &golden.redraw_noise[r]));
        }
        draws.push(array(golden.shape, &golden.noise[r]));
    }
    RecordedNoise::new(draws)
}

fn load_golden(dir: &str, name: &str) -> Golden {
    let path = common::repo()
        .join("onnx/golden")
        .join(dir)
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The golden's sampler settings, at `guidance_scale` and with `redraws` redraws.
fn sampler_settings(golden: &Golden, guidance_scale: f64, redraws: usize) -> SamplerSettings {
    let s = &golden.settings;
    SamplerSettings {
        eta: s.eta,
        stabilization_level: s.stabilization_level,
        noise_clip: s.noise_clip,
        guidance_scale,
        guidance_form: form(s),
        context_tokens: golden.context_tokens,
        shared_tokens: s.shared_tokens,
        redraws,
        guided_tokens: s.guided_tokens,
        mcg_temperature: s.mcg_temperature,
    }
}

fn quadratic_target(golden: &Golden) -> Option<QuadraticTarget> {
    golden.guidance.as_ref().map(|g| QuadraticTarget {
        target: g.target.clone(),
        weights: g.weights.clone(),
    })
}

fn timestep_rows(golden: &Golden, timesteps: usize) -> TimestepRows {
    let kind = MatrixKind::from_name(&golden.matrix.kind, golden.matrix.uncertainty).unwrap();
    SchedulingMatrix::build(kind, golden.matrix.horizon, golden.matrix.sampling_steps)
        .unwrap()
        .to_timesteps(golden.context_tokens, timesteps)
}

fn max_abs_diff<D: Dimension>(a: ArrayView<f32, D>, b: ArrayView<f32, D>) -> f32 {
    (&a - &b).mapv(f32::abs).fold(0.0_f32, |m, &v| m.max(v))
}

/// Max abs error over all rows for one golden file.
fn replay(dir: &str, name: &str) -> f32 {
    let golden = load_golden(dir, name);
    let mut model = common::load(Path::new(&golden.model));
    if let Some(shape) = golden.image_shape {
        let images = ArrayView5::from_shape(shape, &golden.images).expect("golden images have their shape");
        model.set_images(images, ArrayView1::from(&golden.image_level)).unwrap();
    }
    let contract = model.contract().clone();

    let rows = timestep_rows(&golden, contract.diffusion.timesteps);
    let expected_rows: Vec<i64> = golden.timestep_rows.concat();
    let got_rows: Vec<i64> = (0..rows.rows()).flat_map(|r| rows.row(r).to_vec()).collect();
    assert_eq!(
        got_rows, expected_rows,
        "{name}: scheduling matrix differs from the reference"
    );

    let s = &golden.settings;
    let settings = sampler_settings(&golden, s.guidance_scale, s.redraws);
    let shape = (golden.shape[0], golden.shape[1], golden.shape[2]);
    let mut sampler = Sampler::new(settings.clone(), contract.alpha_bar().unwrap(), shape).unwrap();
    let redrawing = golden.guidance.is_some() && s.redraws > 0;
    let mut noise = recorded_noise(&golden, 0..golden.noise.len(), redrawing);
    let guidance = quadratic_target(&golden);
    let mut x = array(golden.shape, &golden.x_init);
    let mut worst = 0.0_f32;
    sampler
        .run(
            &mut model,
            &mut x,
            &rows,
            guidance.as_ref().map(|g| g as _),
            &mut noise,
            |r, state| {
                let expected = array(golden.shape, &golden.states[r]);
                let err = max_abs_diff(state, expected.view());
                assert!(
                    err <= golden.tolerance,
                    "{name}: row {r}: max abs error {err} > {}",
                    golden.tolerance
                );
                worst = worst.max(err);
            },
        )
        .unwrap();
    assert_eq!(golden.states.len(), rows.rows(), "{name}: every row was compared");
    if let Some(step_tolerance) = golden.step_tolerance {
        let mut worst_step = 0.0_f32;
        for r in 0..rows.rows() - 1 {
            let mut x = array(golden.shape, &golden.states[r]);
            let mut noise = recorded_noise(&golden, r..r + 1, redrawing);
            let mut sampler = Sampler::new(settings.clone(), contract.alpha_bar().unwrap(), shape).unwrap();
            sampler
                .run(
                    &mut model,
                    &mut x,
                    &rows.window(r, 2),
                    guidance.as_ref().map(|g| g as _),
                    &mut noise,
                    |_, _| {},
                )
                .unwrap();
            let expected = array(golden.shape, &golden.states[r + 1]);
            let err = max_abs_diff(x.view(), expected.view());
            assert!(
                err <= step_tolerance,
                "{name}: row {r} -> {}: max abs error {err} > {step_tolerance} (from the reference's row {r})",
                r + 1
            );
            worst_step = worst_step.max(err);
        }
        println!("parity {name}: each row from the reference's previous row, max abs error {worst_step:.3e}");
    }
    println!("parity {name}: {} rows, max abs error {worst:.3e}", rows.rows());
    worst
}

macro_rules! parity {
    ($dir:literal: $($test:ident => $file:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            replay($dir, $file);
        }
    )*};
}

parity! {
    "pointmass":
    pyramid_plain => "pyramid_plain",
    pyramid_guided_mcg => "pyramid_guided",
    autoregressive_plain => "autoregressive_plain",
    autoregressive_guided_mcg => "autoregressive_guided",
    full_sequence_plain => "full_sequence_plain",
    full_sequence_guided_mcg => "full_sequence_guided",
    trapezoid_plain => "trapezoid_plain",
    trapezoid_guided_mcg => "trapezoid_guided",
    pyramid_guided_score_form => "pyramid_guided_score",
    pyramid_guided_mcg_redraws => "pyramid_guided_redraws",
    pyramid_guided_mcg_prior_futures => "pyramid_guided_prior",
    pyramid_guided_mcg_softmax => "pyramid_guided_softmax",
    pyramid_plain_noise_clip => "pyramid_plain_clip",
    pyramid_guided_mcg_next_state_form => "pyramid_guided_next_state",
}

parity! {
    "fruit_swap":
    camera_pyramid_plain => "pyramid_plain",
    camera_pyramid_guided_mcg => "pyramid_guided",
    camera_pyramid_guided_score_form => "pyramid_guided_score",
}

/// The guided goldens must exercise guidance: replaying them without it misses by far more
/// than the tolerance, and MCG leaves the shared tokens identical across samples.
#[test]
fn guided_goldens_depend_on_guidance_and_share_tokens() {
    let golden = load_golden("pointmass", "pyramid_guided");
    let final_state = array(golden.shape, golden.states.last().unwrap());
    let shared = golden.settings.shared_tokens;
    assert!(shared > 0);
    for b in 1..golden.shape[0] {
        let diff = max_abs_diff(
            final_state.slice(ndarray::s![b, ..shared, ..]),
            final_state.slice(ndarray::s![0, ..shared, ..]),
        );
        assert_eq!(diff, 0.0, "shared tokens differ between sample 0 and sample {b}");
    }

    let mut model = common::load(Path::new(&golden.model));
    let x = resampled_final_state(&golden, &mut model, sampler_settings(&golden, 0.0, 0));
    let diff = max_abs_diff(x.view(), final_state.view());
    assert!(
        diff > 100.0 * golden.tolerance,
        "guidance changed the plan by only {diff}"
    );
}

/// The next-state golden must exercise its form: the same guidance in Diffuser's form misses
/// it by far more than the tolerance.
#[test]
fn the_next_state_golden_depends_on_its_guidance_form() {
    let golden = load_golden("pointmass", "pyramid_guided_next_state");
    let final_state = array(golden.shape, golden.states.last().unwrap());
    let mut model = common::load(Path::new(&golden.model));
    let settings = SamplerSettings {
        guidance_form: GuidanceForm::MeanShift,
        ..sampler_settings(&golden, golden.settings.guidance_scale, 0)
    };
    let x = resampled_final_state(&golden, &mut model, settings);
    let diff = max_abs_diff(x.view(), final_state.view());
    assert!(
        diff > 100.0 * golden.tolerance,
        "the form changed the plan by only {diff}"
    );
}

/// A golden's final state sampled again from its recorded noise and its model as given (the
/// caller may have set other images), with other settings (guided when guidance_scale != 0).
fn resampled_final_state(
    golden: &Golden,
    model: &mut df_planner::model::OnnxDenoiser,
    settings: SamplerSettings,
) -> Array3<f32> {
    let contract = model.contract().clone();
    let guided = settings.guidance_scale != 0.0;
    let redraws = settings.redraws;
    let guidance = quadratic_target(golden).filter(|_| guided);
    let shape = (golden.shape[0], golden.shape[1], golden.shape[2]);
    let rows = timestep_rows(golden, contract.diffusion.timesteps);
    let mut noise = recorded_noise(golden, 0..golden.noise.len(), guided && redraws > 0);
    let mut x = array(golden.shape, &golden.x_init);
    Sampler::new(settings, contract.alpha_bar().unwrap(), shape)
        .unwrap()
        .run(
            model,
            &mut x,
            &rows,
            guidance.as_ref().map(|g| g as _),
            &mut noise,
            |_, _| {},
        )
        .unwrap();
    x
}

/// The camera goldens must exercise the images: the same sampling with blank images misses
/// the recorded plan by far more than the tolerance.
#[test]
fn camera_goldens_depend_on_their_images() {
    let golden = load_golden("fruit_swap", "pyramid_plain");
    let shape = golden.image_shape.expect("a camera golden has images");
    let mut model = common::load(Path::new(&golden.model));
    let blank = vec![0.0_f32; golden.images.len()];
    model
        .set_images(
            ArrayView5::from_shape(shape, &blank).unwrap(),
            ArrayView1::from(&golden.image_level),
        )
        .unwrap();
    let x = resampled_final_state(&golden, &mut model, sampler_settings(&golden, 0.0, 0));
    let expected = array(golden.shape, golden.states.last().unwrap());
    let diff = max_abs_diff(x.view(), expected.view());
    assert!(
        diff > 100.0 * golden.tolerance,
        "blank images changed the plan by only {diff}"
    );
}

/// How far a golden's final state moves, in multiples of its tolerance, when it is sampled
/// again from its recorded noise with other `settings`.
fn moved_by(golden: &Golden, settings: SamplerSettings) -> f32 {
    let mut model = common::load(Path::new(&golden.model));
    let expected = array(golden.shape, golden.states.last().unwrap());
    let x = resampled_final_state(golden, &mut model, settings);
    max_abs_diff(x.view(), expected.view()) / golden.tolerance
}

/// The clip golden must exercise the noise clip: the same recorded noise without the clamp, or
/// with the model's own clip (6, never reached on this case), misses its plan by far more than
/// the tolerance. (No other golden reaches its clip.)
#[test]
fn clip_golden_depends_on_the_noise_clip() {
    let golden = load_golden("pointmass", "pyramid_plain_clip");
    assert!(golden.guidance.is_none() && golden.settings.noise_clip < 6.0);
    for noise_clip in [6.0, f32::MAX] {
        let settings = SamplerSettings {
            noise_clip,
            ..sampler_settings(&golden, 0.0, 0)
        };
        let moved = moved_by(&golden, settings);
        println!("pyramid_plain_clip at clip {noise_clip}: the final state moves {moved:.0} tolerances");
        assert!(
            moved > 100.0,
            "clip {noise_clip}: the clamp changed the plan by only {moved} tolerances"
        );
    }
}

/// The redraws golden must exercise the redraws: plain guidance from the same recorded start
/// and step noise misses its plan by far more than the tolerance.
#[test]
fn redraws_golden_depends_on_the_redrawn_x0() {
    let golden = load_golden("pointmass", "pyramid_guided_redraws");
    assert!(golden.settings.redraws > 0 && golden.guidance.is_some());
    let moved = moved_by(&golden, sampler_settings(&golden, golden.settings.guidance_scale, 0));
    assert!(moved > 100.0, "the redraws changed the plan by only {moved} tolerances");
}

/// The prior-futures golden must guide only its shared tokens: guiding every token from the
/// same recorded noise misses its plan by far more than the tolerance.
#[test]
fn prior_futures_golden_guides_only_the_shared_tokens() {
    let golden = load_golden("pointmass", "pyramid_guided_prior");
    let s = &golden.settings;
    assert!(s.shared_tokens > 0 && s.guided_tokens == Some(s.shared_tokens) && golden.guidance.is_some());
    let all_guided = SamplerSettings {
        guided_tokens: None,
        ..sampler_settings(&golden, s.guidance_scale, 0)
    };
    let moved = moved_by(&golden, all_guided);
    assert!(
        moved > 100.0,
        "guiding the far tokens too changed the plan by only {moved} tolerances"
    );
}

/// The softmax golden must weight its futures: an even average from the same recorded noise
/// misses its plan by far more than the tolerance.
#[test]
fn softmax_golden_weights_the_futures_by_their_rewards() {
    let golden = load_golden("pointmass", "pyramid_guided_softmax");
    let s = &golden.settings;
    assert!(s.shared_tokens > 0 && s.mcg_temperature.is_some() && golden.guidance.is_some());
    let even = SamplerSettings {
        mcg_temperature: None,
        ..sampler_settings(&golden, s.guidance_scale, 0)
    };
    let moved = moved_by(&golden, even);
    assert!(
        moved > 100.0,
        "weighting the futures changed the plan by only {moved} tolerances"
    );
}
