//! The Diffusion Forcing planner over interleaved action–observation tokens.
//!
//! Frame i holds (action that led into observation i, observation i); a token stacks
//! `frame_stack` frames (onnx/CONTRACT.md). The window is up to `context_tokens` clean history
//! tokens (memory) — the last frames of history, ending with the current observation, the
//! first frame repeated before the episode's start — followed by `horizon` planned tokens
//! sampled along the scheduling matrix. The first planned token's first frame holds the
//! action to execute now. Camera models also see, per history token, the camera images of
//! its last frame; planned tokens have none (their image level says so).

use ndarray::{s, Array1, Array3, Array5};
use rand_distr::{Distribution, StandardNormal};
use thiserror::Error;

use crate::diffusion::{
    Denoiser, Guidance, GuidanceForm, MatrixError, MatrixKind, NoiseStreams, SampleError, Sampler, SamplerSettings,
    ScheduleError, SchedulingMatrix, SeededNoise, SeededStreams, TimestepRows,
};
use crate::model::{Field, ModelContract, MAX_STANDARD_DEVIATIONS};

use super::plan::Plan;

#[derive(Debug, Error)]
pub enum PlanError {
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("{field}: expected {expected}, got {got}")]
    Invalid {
        field: &'static str,
        expected: String,
        got: String,
    },
    #[error("no observation yet: the planner needs at least one frame of history")]
    NoHistory,
    #[error("no camera images for the frame {frames_ago} steps ago: a camera model plans from the images of every history token")]
    NoImages { frames_ago: usize },
}

impl PlanError {
    /// Whether the failure came from running the network (its output, or the runtime), so that
    /// the planner was busy as for a plan; the others are found before the first call.
    pub fn ran_the_model(&self) -> bool {
        matches!(
            self,
            PlanError::Sample(SampleError::Denoise(_) | SampleError::NonFinite { .. })
        )
    }
}

/// A matrix the settings cannot build, named by the setting as the node config names it (the
/// matrix's own names lack `planner.`).
fn matrix_setting(e: MatrixError) -> PlanError {
    match e {
        MatrixError::NoSteps(n) => invalid("planner.sampling_steps", ">= 1", n),
        MatrixError::EmptyHorizon(n) => invalid("planner.horizon_tokens", ">= 1", n),
        MatrixError::BadUncertainty(u) => invalid("planner.matrix.uncertainty", "a finite value >= 0", u),
        MatrixError::UnknownKind(k) => invalid(
            "planner.matrix.kind",
            "one of pyramid, autoregressive, full_sequence, trapezoid",
            k,
        ),
    }
}

/// A sampler setting the sampler refuses, named as the node config names it.
fn sampler_setting(e: SampleError) -> PlanError {
    match e {
        SampleError::Mismatch { field, expected, got } => {
            let field = match field {
                "eta" => "planner.eta",
                "guidance_scale" => "planner.guidance_scale",
                "guidance_form.max_gain" => "planner.guidance_form.max_gain",
                "mcg_temperature" => "planner.mcg_temperature",
                other => other,
            };
            PlanError::Invalid { field, expected, got }
        }
        e => e.into(),
    }
}

fn invalid(field: &'static str, expected: impl ToString, got: impl ToString) -> PlanError {
    PlanError::Invalid {
        field,
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannerSettings {
    pub matrix: MatrixKind,
    pub sampling_steps: u32,
    /// Planned tokens after the context (None: max_tokens - context_tokens).
    pub horizon_tokens: Option<usize>,
    /// History tokens in the window at most (memory); 1 sees only the present token.
    pub context_tokens: usize,
    /// Camera models: the image level given with observed images (0 clean; > 0 tells the
    /// model they are noisy, e.g. with distractors).
    pub image_level: i64,
    /// MCG samples N (1 = plain guidance).
    pub samples: usize,
    /// What the N samples are.
    pub mcg: McgForm,
    /// How the futures' guidance is averaged: None evenly, Some(τ) by softmax(reward / τ).
    pub mcg_temperature: Option<f64>,
    pub guidance_scale: f64,
    pub guidance_form: GuidanceForm,
    pub eta: f64,
    /// Model steps executed between plans, at most the plan's length. MCG's samples share the
    /// planned tokens covering them; a warm start shifts the previous plan by them (whole
    /// tokens only).
    pub replan_every: usize,
    /// Warm start: begin from the previous plan shifted by the executed tokens and re-noised
    /// to this matrix level (0..=S), instead of from pure noise. None: always cold.
    pub warm_start_level: Option<u32>,
    pub seed: u64,
    /// One noise stream for the batch, or one per sample (sample 0 then draws what a plan
    /// without MCG draws).
    pub noise_streams: NoiseStreams,
}

/// Monte Carlo Guidance: what its N samples are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McgForm {
    /// N sampled futures in one batch share the executed tokens, whose guidance is averaged
    /// over them; far tokens are independent per sample (the paper's description).
    #[default]
    Futures,
    /// As `Futures`, but only the executed tokens take the guidance: each sample's far
    /// tokens follow the model unguided, so the executed tokens are steered by the reward
    /// expected over the model's own futures. With N = 1, one such future.
    PriorFutures,
    /// One plan; at every row the reward is averaged over its own x0 and N − 1 redraws of it,
    /// each noisy token re-noised to its level and denoised again (modelled on the official code's
    /// `ddim_repeats`, whose redraws are chained; `Sampler` module doc).
    Redraws,
}

impl PlannerSettings {
    /// Plans in the sampler's batch.
    fn batch(&self) -> usize {
        match self.mcg {
            McgForm::Futures | McgForm::PriorFutures => self.samples,
            McgForm::Redraws => 1,
        }
    }

    /// Redrawn windows per row (MCG redraws).
    fn redraws(&self) -> usize {
        match self.mcg {
            McgForm::Futures | McgForm::PriorFutures => 0,
            McgForm::Redraws => self.samples - 1,
        }
    }
}

/// The sampler, timestep rows and token buffer for a window with a given number of context
/// tokens: one per context length, built up front so that the planner's own code never
/// allocates while planning (tests/realtime.rs; the `ort` run allocates apart from it).
struct Window {
    sampler: Sampler,
    rows: TimestepRows,
    /// Rows for a warm start, and the timestep the carried-over tokens are re-noised to.
    warm: Option<(TimestepRows, i64)>,
    x: Array3<f32>,
}

/// Camera models: the images seen with each history frame (rgb8, all cameras, ring-indexed
/// like `history`) and the window's images and levels handed to the model.
struct ImageHistory {
    frame_bytes: usize,
    ring: Vec<u8>,
    present: Vec<bool>,
    window: Array5<f32>,
    levels: Array1<i64>,
    observed_level: i64,
    absent_level: i64,
}

pub struct DfPlanner {
    model: Box<dyn Denoiser + Send>,
    contract: ModelContract,
    /// windows[c - 1] plans with c context tokens.
    windows: Vec<Window>,
    warm_shift: usize,
    horizon: usize,
    /// The previous plan's planned tokens, for warm starts.
    previous: Array3<f32>,
    has_previous: bool,
    noise: SeededNoise,
    /// Draws for the tokens a plan starts from (pure noise, or a warm start's re-noising).
    init: SeededStreams,
    /// Normalized frames of the last context_tokens × frame_stack steps, a ring: slot
    /// `(frames_seen - 1 - ago) % capacity` holds the frame `ago` steps back.
    history: Vec<f32>,
    frames_seen: usize,
    frame: Vec<f64>,
    images: Option<ImageHistory>,
}

impl DfPlanner {
    pub fn new(
        model: Box<dyn Denoiser + Send>,
        contract: ModelContract,
        s: &PlannerSettings,
    ) -> Result<Self, PlanError> {
        let max_context = contract.max_tokens.saturating_sub(1);
        if s.context_tokens == 0 || s.context_tokens > max_context {
            return Err(invalid(
                "planner.context_tokens",
                format!("1..={max_context} (max_tokens - 1)"),
                s.context_tokens,
            ));
        }
        let max_horizon = contract.max_tokens - s.context_tokens;
        let horizon = s.horizon_tokens.unwrap_or(max_horizon);
        if horizon == 0 || horizon > max_horizon {
            return Err(invalid(
                "planner.horizon_tokens",
                format!("1..={max_horizon} (max_tokens - context_tokens)"),
                horizon,
            ));
        }
        if s.samples == 0 {
            return Err(invalid("planner.samples", ">= 1", 0));
        }
        // More levels than the model has timesteps would map some to the same timestep: rows
        // that change nothing and still cost a network call.
        let timesteps = contract.diffusion.timesteps;
        if s.sampling_steps as usize > timesteps {
            return Err(invalid(
                "planner.sampling_steps",
                format!("1..={timesteps} (the model's diffusion.timesteps)"),
                s.sampling_steps,
            ));
        }
        let fs = contract.layout.frame_stack;
        if s.replan_every == 0 || s.replan_every > horizon * fs {
            return Err(invalid(
                "planner.replan_every",
                format!(
                    "1..={} (horizon_tokens {horizon} × frame_stack {fs}: a plan covers the steps until the next)",
                    horizon * fs
                ),
                s.replan_every,
            ));
        }
        // Planned tokens holding the actions executed before the next plan: MCG's shared
        // tokens, and a warm start's shift when they are whole.
        let executed_tokens = s.replan_every.div_ceil(fs);
        let warm_shift = if s.replan_every.is_multiple_of(fs) {
            executed_tokens
        } else {
            0
        };
        let matrix = SchedulingMatrix::build(s.matrix, horizon, s.sampling_steps).map_err(matrix_setting)?;
        let warm_level = match s.warm_start_level {
            None => None,
            Some(level) if level > s.sampling_steps => {
                return Err(invalid(
                    "planner.warm_start_level",
                    format!("0..={}", s.sampling_steps),
                    level,
                ));
            }
            Some(_) if warm_shift == 0 || warm_shift >= horizon => {
                return Err(invalid(
                    "planner.replan_every",
                    format!("a whole number of tokens (frame_stack = {fs}) below the horizon ({horizon} tokens)"),
                    format!("{} steps", s.replan_every),
                ));
            }
            Some(level) => Some(level),
        };
        let timesteps = contract.diffusion.timesteps;
        let d = contract.layout.token_dim;
        let mut windows = Vec::with_capacity(s.context_tokens);
        for context in 1..=s.context_tokens {
            let tokens = context + horizon;
            // The context and the tokens executed before the next replan.
            let executed = context + executed_tokens;
            let settings = SamplerSettings {
                eta: s.eta,
                stabilization_level: contract.diffusion.stabilization_level,
                noise_clip: contract.diffusion.noise_clip,
                guidance_scale: s.guidance_scale,
                guidance_form: s.guidance_form,
                context_tokens: context,
                shared_tokens: if s.batch() > 1 { executed } else { 0 },
                redraws: s.redraws(),
                guided_tokens: (s.mcg == McgForm::PriorFutures).then_some(executed),
                mcg_temperature: s.mcg_temperature.filter(|_| s.batch() > 1),
            };
            let warm = warm_level.map(|level| {
                let carried = horizon - warm_shift;
                let t = crate::diffusion::level_to_timestep(level, timesteps, s.sampling_steps);
                (matrix.capped(carried, level).to_timesteps(context, timesteps), t)
            });
            windows.push(Window {
                sampler: Sampler::new(settings, contract.alpha_bar()?, (s.batch(), tokens, d))
                    .map_err(sampler_setting)?,
                rows: matrix.to_timesteps(context, timesteps),
                warm,
                x: Array3::zeros((s.batch(), tokens, d)),
            });
        }
        let l = &contract.layout;
        let capacity = s.context_tokens * l.frame_stack;
        let images = contract.cameras.as_ref().map(|cameras| {
            let (n, h, w) = cameras.frame_shape();
            let frame_bytes = n * h * w * 3;
            ImageHistory {
                frame_bytes,
                ring: vec![0; capacity * frame_bytes],
                present: vec![false; capacity],
                window: Array5::zeros((s.context_tokens + horizon, n, h, w, 3)),
                levels: Array1::from_elem(s.context_tokens + horizon, cameras.image_levels),
                observed_level: s.image_level,
                absent_level: cameras.image_levels,
            }
        });
        match &contract.cameras {
            Some(cameras) if !(0..cameras.image_levels).contains(&s.image_level) => {
                return Err(invalid(
                    "planner.image_level",
                    format!("0..{} (cameras.image_levels)", cameras.image_levels),
                    s.image_level,
                ));
            }
            // A level for images the model does not take would be silently ignored.
            None if s.image_level != 0 => {
                return Err(invalid(
                    "planner.image_level",
                    "0 (the model has no cameras)",
                    s.image_level,
                ));
            }
            _ => {}
        }
        // Streams are made here, once; `reseed` restarts them for each episode.
        let (noise, init) = match s.noise_streams {
            NoiseStreams::Shared => (SeededNoise::new(0), SeededStreams::new(0, 1)),
            NoiseStreams::PerSample => (
                SeededNoise::per_sample(0, s.batch(), s.redraws()),
                SeededStreams::new(0, s.batch()),
            ),
        };
        let mut planner = Self {
            model,
            windows,
            warm_shift,
            horizon,
            previous: Array3::zeros((s.batch(), horizon, d)),
            has_previous: false,
            noise,
            init,
            history: vec![0.0; capacity * l.frame_dim],
            frames_seen: 0,
            frame: vec![0.0; l.frame_dim],
            images,
            contract,
        };
        planner.reseed(s.seed);
        Ok(planner)
    }

    pub fn contract(&self) -> &ModelContract {
        &self.contract
    }

    /// Whether the model sees camera images (then every history frame needs them).
    pub fn has_cameras(&self) -> bool {
        self.images.is_some()
    }

    /// Actions in a full plan: horizon tokens × frame_stack.
    pub fn plan_len(&self) -> usize {
        self.horizon * self.contract.layout.frame_stack
    }

    /// Forget the previous plan: the next one starts cold (the steps since it are not known).
    pub fn start_cold(&mut self) {
        self.has_previous = false;
    }

    /// Forget the history and the previous plan (a new episode).
    pub fn reset(&mut self) {
        self.frames_seen = 0;
        self.has_previous = false;
    }

    /// Restart the noise streams, as a planner built with `seed` starts: episodes then sample
    /// the same whatever ran before them.
    pub fn reseed(&mut self, seed: u64) {
        self.noise.reseed(seed);
        self.init.reseed(seed ^ 0x9e37_79b9_7f4a_7c15);
    }

    /// History frames the ring holds.
    fn capacity(&self) -> usize {
        self.history.len() / self.contract.layout.frame_dim
    }

    /// The ring slot of the frame `ago` steps back; before the episode's first frame, the
    /// first frame's (the context repeats it, as training did).
    fn slot(&self, ago: usize) -> usize {
        ring_slot(self.frames_seen, self.capacity(), ago)
    }

    /// Append one frame: the action executed during the last step and the observation now.
    /// Camera models then take the frame's images with `push_images`. A frame that is not
    /// finite or lies beyond `MAX_STANDARD_DEVIATIONS` is refused and leaves the history and
    /// the previous plan as they were (recorded, it would fail every plan while it stays in
    /// the window). Where a step did pass all the same (the robot node), the history lacks it
    /// and the caller starts the next plan cold (`PlannerTask`); `serve` refuses the request.
    pub fn push_frame(&mut self, prev_action: &[f64], observation: &[f64]) -> Result<(), PlanError> {
        self.fill_frame(prev_action, observation)?;
        let fd = self.contract.layout.frame_dim;
        let n = &self.contract.normalization;
        self.frames_seen += 1;
        let slot = self.slot(0);
        for (i, (dst, v)) in self.history[slot * fd..(slot + 1) * fd]
            .iter_mut()
            .zip(&self.frame)
            .enumerate()
        {
            *dst = ((v - n.mean[i]) / n.std[i]) as f32;
        }
        if let Some(images) = self.images.as_mut() {
            images.present[slot] = false;
        }
        Ok(())
    }

    /// Check one frame's values and lay them out in `frame`.
    fn fill_frame(&mut self, prev_action: &[f64], observation: &[f64]) -> Result<(), PlanError> {
        let l = &self.contract.layout;
        if prev_action.len() != l.action_dim {
            return Err(invalid(
                "action",
                format!("{} values (layout.action_dim)", l.action_dim),
                prev_action.len(),
            ));
        }
        if observation.len() != l.observation_dim {
            return Err(invalid(
                "observation",
                format!("{} values (layout.observation_dim)", l.observation_dim),
                observation.len(),
            ));
        }
        if let Some(i) = prev_action.iter().chain(observation).position(|v| !v.is_finite()) {
            return Err(invalid(
                "observation/action",
                "finite values",
                format!("non-finite value at index {i}"),
            ));
        }
        self.frame.iter_mut().for_each(|v| *v = 0.0);
        for (field, name, values) in [
            (Field::Action, "executed action", prev_action),
            (Field::Observation, "observation", observation),
        ] {
            let off = l.offset(field).expect("layout has action and observation");
            if let Some((k, v, deviations)) = self.contract.normalization.first_beyond_limit(off, values) {
                return Err(invalid(
                    "observation/action",
                    format!(
                        "values within {MAX_STANDARD_DEVIATIONS} standard deviations of the training data's mean \
                         (the contract's normalization)"
                    ),
                    format!("{name}[{k}] = {v:e}, {deviations:.1e} standard deviations away"),
                ));
            }
            self.frame[off..off + values.len()].copy_from_slice(values);
        }
        Ok(())
    }

    /// Camera models: the images seen with the newest frame, one rgb8 buffer per camera in
    /// the contract's order (`cameras.inputs`), each height × width × 3 bytes.
    pub fn push_images(&mut self, cameras: &[&[u8]]) -> Result<(), PlanError> {
        if self.frames_seen == 0 {
            return Err(PlanError::NoHistory);
        }
        let slot = self.slot(0);
        let Some(images) = self.images.as_mut() else {
            return Err(invalid(
                "images",
                "none (this model has no camera inputs)",
                cameras.len(),
            ));
        };
        let per_camera = images.frame_bytes / images.window.dim().1;
        if cameras.len() != images.window.dim().1 {
            return Err(invalid(
                "images",
                format!("{} cameras (cameras.inputs)", images.window.dim().1),
                cameras.len(),
            ));
        }
        if let Some(bad) = cameras.iter().find(|c| c.len() != per_camera) {
            return Err(invalid(
                "images",
                format!("{per_camera} bytes per camera (height × width × 3, rgb8)"),
                bad.len(),
            ));
        }
        let frame = &mut images.ring[slot * images.frame_bytes..(slot + 1) * images.frame_bytes];
        for (dst, src) in frame.chunks_mut(per_camera).zip(cameras) {
            dst.copy_from_slice(src);
        }
        images.present[slot] = true;
        Ok(())
    }

    /// Sample a plan from the current history into `plan` (actions in physical units).
    pub fn plan(&mut self, guidance: Option<&dyn Guidance>, plan: &mut Plan) -> Result<(), PlanError> {
        // Only a plan that succeeds is carried over: after a failed one the shift by one
        // replan interval no longer matches the steps since the previous plan, so start cold.
        let had_previous = std::mem::replace(&mut self.has_previous, false);
        if self.frames_seen == 0 {
            return Err(PlanError::NoHistory);
        }
        let l = &self.contract.layout;
        let (fs, fd, action_dim, plan_len) = (l.frame_stack, l.frame_dim, l.action_dim, self.plan_len());
        let act = l.offset(Field::Action).expect("layout has an action");
        let obs = l.offset(Field::Observation).expect("layout has an observation");
        if plan.action_dim != action_dim || plan.capacity() < plan_len {
            return Err(invalid(
                "plan buffer",
                format!("{plan_len} actions of {action_dim}"),
                format!("{} of {}", plan.capacity(), plan.action_dim),
            ));
        }
        // Whole tokens of history, the first frame padding the first token (as the fruit-swap
        // demonstrations are trained; Maze2D's continuous data has no padded token, and replanning
        // once a whole token is real changed nothing measurable: docs/maze2d.md, "The first plan").
        let context = self.frames_seen.div_ceil(fs).min(self.windows.len());
        self.window_images(context)?;
        let warm = had_previous && self.windows[context - 1].warm.is_some();
        let carried = if warm { self.horizon - self.warm_shift } else { 0 };
        // Carried-over tokens are re-noised as √ᾱ·x + √(1 − ᾱ)·ε at the warm level.
        let (a, b) = match self.windows[context - 1].warm {
            Some((_, t)) if warm && t >= 0 => {
                let ab = self.contract.diffusion.alphas_cumprod[t as usize];
                (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32)
            }
            Some(_) if warm => (1.0, 0.0),
            _ => (0.0, 1.0),
        };
        let shift = self.warm_shift;
        for i in 0..self.previous.dim().0 {
            for token in 0..context {
                for f in 0..fs {
                    // Token `token` ends `(context - 1 - token) * fs` frames back.
                    let ago = (context - 1 - token) * fs + (fs - 1 - f);
                    let slot = self.slot(ago);
                    let x = &mut self.windows[context - 1].x;
                    for (j, &v) in self.history[slot * fd..(slot + 1) * fd].iter().enumerate() {
                        x[[i, token, f * fd + j]] = v;
                    }
                }
            }
            let window = &mut self.windows[context - 1];
            let prev = self.previous.slice(s![i, shift..shift + carried, ..]);
            let mut carried_part = window.x.slice_mut(s![i, context..context + carried, ..]);
            for (dst, &v) in carried_part.iter_mut().zip(prev.iter()) {
                let eps: f32 = StandardNormal.sample(self.init.rng(i));
                *dst = a * v + b * eps;
            }
            for v in window.x.slice_mut(s![i, context + carried.., ..]).iter_mut() {
                *v = StandardNormal.sample(self.init.rng(i));
            }
        }
        let window = &mut self.windows[context - 1];
        let rows = match &window.warm {
            Some((rows, _)) if warm => rows,
            _ => &window.rows,
        };
        let span = tracing::trace_span!("infer");
        let _enter = span.enter();
        window.sampler.run(
            self.model.as_mut(),
            &mut window.x,
            rows,
            guidance,
            &mut self.noise,
            |_, _| {},
        )?;
        drop(_enter);
        self.previous.assign(&window.x.slice(s![.., context.., ..]));
        self.has_previous = true;
        plan.mcg = window.sampler.mcg_report();

        // Planned frame k holds (a_{t+k}, o_{t+k+1}): the action and where it should lead.
        for k in 0..plan_len {
            self.planned_field(0, k, act, plan.action_mut(k));
            self.planned_field(0, k, obs, plan.observation_mut(k));
        }
        plan.set_len(plan_len);
        for (dst, &v) in plan.first_token.iter_mut().zip(self.previous.slice(s![0, 0, ..])) {
            *dst = v;
        }
        Ok(())
    }

    /// Samples in each plan: sample 0 is the plan; with MCG over futures the others are the
    /// futures whose guidance it averaged.
    pub fn samples(&self) -> usize {
        self.previous.dim().0
    }

    /// Planned frame `k` (< `plan_len`)'s observation in `sample` (< `samples`) of the last
    /// successful plan, in physical units; read it right after `plan` returns Ok.
    pub fn sampled_observation(&self, sample: usize, k: usize, out: &mut [f64]) {
        let obs = self
            .contract
            .layout
            .offset(Field::Observation)
            .expect("layout has an observation");
        self.planned_field(sample, k, obs, out);
    }

    /// `out.len()` values of planned frame `k` of `sample`, from token field `offset` on,
    /// denormalized.
    fn planned_field(&self, sample: usize, k: usize, offset: usize, out: &mut [f64]) {
        let (fs, fd) = (self.contract.layout.frame_stack, self.contract.layout.frame_dim);
        let n = &self.contract.normalization;
        let token = self.previous.slice(s![sample, k / fs, ..]);
        for (j, dst) in out.iter_mut().enumerate() {
            let field = offset + j;
            *dst = f64::from(token[(k % fs) * fd + field]) * n.std[field] + n.mean[field];
        }
    }

    /// Camera models: hand the model the images of the `context` history tokens (each its
    /// last frame's) and mark the planned tokens as without images.
    fn window_images(&mut self, context: usize) -> Result<(), PlanError> {
        let (fs, seen, capacity) = (self.contract.layout.frame_stack, self.frames_seen, self.capacity());
        let Some(images) = self.images.as_mut() else {
            return Ok(());
        };
        for token in 0..context {
            let ago = (context - 1 - token) * fs;
            let slot = ring_slot(seen, capacity, ago);
            if !images.present[slot] {
                return Err(PlanError::NoImages {
                    frames_ago: ago.min(seen - 1),
                });
            }
            let bytes = &images.ring[slot * images.frame_bytes..(slot + 1) * images.frame_bytes];
            for (d, &b) in images.window.slice_mut(s![token, .., .., .., ..]).iter_mut().zip(bytes) {
                *d = f32::from(b) / 255.0;
            }
            images.levels[token] = images.observed_level;
        }
        let tokens = context + self.horizon;
        images.levels.slice_mut(s![context..tokens]).fill(images.absent_level);
        self.model
            .set_images(
                images.window.slice(s![..tokens, .., .., .., ..]),
                images.levels.slice(s![..tokens]),
            )
            .map_err(SampleError::from)?;
        Ok(())
    }
}

/// The slot of a ring of `capacity` frames holding the frame `ago` steps before the newest of
/// `seen`; before the first frame, the first frame's.
fn ring_slot(seen: usize, capacity: usize, ago: usize) -> usize {
    let newest = seen - 1;
    (newest - ago.min(newest)) % capacity
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView5, ArrayViewMut3};
    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;
    use crate::diffusion::DenoiseError;

    /// What the planner handed the model on its first call.
    #[derive(Default)]
    pub(in crate::planner) struct Seen {
        /// The window of the first denoise call since this was None.
        pub(in crate::planner) x_t: Option<Array3<f32>>,
        images: Option<Array5<f32>>,
        levels: Vec<i64>,
        pub(in crate::planner) calls: usize,
        /// The model's predictions are NaN while set (an inference that went wrong).
        pub(in crate::planner) nan: bool,
    }

    /// A denoiser that predicts x0 = x_t and records its inputs.
    struct Recorder(Arc<Mutex<Seen>>, bool);

    impl Denoiser for Recorder {
        fn token_dim(&self) -> usize {
            12
        }
        fn max_tokens(&self) -> usize {
            8
        }
        fn denoise(
            &mut self,
            x_t: ArrayView3<f32>,
            _k: ArrayView2<i64>,
            mut x0: ArrayViewMut3<f32>,
            mut eps: ArrayViewMut3<f32>,
        ) -> Result<(), DenoiseError> {
            let mut seen = self.0.lock();
            seen.calls += 1;
            seen.x_t.get_or_insert_with(|| x_t.to_owned());
            x0.assign(&x_t);
            eps.fill(0.0);
            if seen.nan {
                x0.fill(f32::NAN);
            }
            Ok(())
        }
        fn set_images(&mut self, images: ArrayView5<f32>, levels: ArrayView1<i64>) -> Result<(), DenoiseError> {
            if !self.1 {
                return Err(DenoiseError::NoCameras);
            }
            let mut seen = self.0.lock();
            seen.images.get_or_insert_with(|| images.to_owned());
            if seen.levels.is_empty() {
                seen.levels = levels.to_vec();
            }
            Ok(())
        }
        fn denoise_vjp(
            &mut self,
            _: ArrayView3<f32>,
            _: ArrayView2<i64>,
            _: ArrayView3<f32>,
            _: ArrayViewMut3<f32>,
            _: ArrayViewMut3<f32>,
            _: ArrayViewMut3<f32>,
        ) -> Result<(), DenoiseError> {
            Err(DenoiseError::NoVjp("recorder".into()))
        }
    }

    /// frame_stack 2, one 2×1 camera when `cameras`, 4 image levels.
    fn contract(cameras: bool) -> ModelContract {
        let mut v = crate::model::example_json();
        if cameras {
            v["contract_version"] = json!("1.1");
            v["cameras"] = json!({"inputs": [{"role": "front", "topic": "/f", "encoding": "rgb8", "width": 2, "height": 1}],
                                  "image_levels": 4, "noise_std_per_level": 0.15});
        }
        ModelContract::from_json(&v.to_string()).unwrap()
    }

    fn settings(context_tokens: usize) -> PlannerSettings {
        PlannerSettings {
            matrix: MatrixKind::Pyramid { uncertainty: 1.0 },
            sampling_steps: 2,
            horizon_tokens: Some(2),
            context_tokens,
            image_level: 0,
            samples: 1,
            mcg: McgForm::Futures,
            mcg_temperature: None,
            guidance_scale: 0.0,
            guidance_form: GuidanceForm::MeanShift,
            eta: 0.0,
            replan_every: 1,
            warm_start_level: None,
            seed: 0,
            noise_streams: NoiseStreams::Shared,
        }
    }

    /// A planner that warm-starts from its previous plan, shifted one token.
    pub(in crate::planner) fn warm_planner(cameras: bool) -> (DfPlanner, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let warm = PlannerSettings {
            warm_start_level: Some(1),
            replan_every: 2,
            ..settings(1)
        };
        let model = Box::new(Recorder(seen.clone(), cameras));
        (DfPlanner::new(model, contract(cameras), &warm).unwrap(), seen)
    }

    pub(in crate::planner) fn planner(cameras: bool, context_tokens: usize) -> (DfPlanner, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let model = Box::new(Recorder(seen.clone(), cameras));
        (
            DfPlanner::new(model, contract(cameras), &settings(context_tokens)).unwrap(),
            seen,
        )
    }

    /// Frame i: action (i, i), observation (i, i, i, i); its image: two pixels of byte 10·i.
    fn push(p: &mut DfPlanner, i: usize, image: bool) {
        let v = i as f64;
        p.push_frame(&[v; 2], &[v; 4]).unwrap();
        if image {
            p.push_images(&[&[10 * i as u8; 6]]).unwrap();
        }
    }

    #[test]
    fn memory_windows_hold_whole_history_tokens_with_their_last_frames_images() {
        let (mut p, seen) = planner(true, 3);
        for i in 0..5 {
            push(&mut p, i, true);
        }
        let mut plan = Plan::with_capacity(p.plan_len(), 2, 4, 12);
        p.plan(None, &mut plan).unwrap();
        let seen = seen.lock();
        // Five frames of frame_stack 2: tokens (f0, f0), (f1, f2), (f3, f4) as in training,
        // the first frame padding the first token; then the two planned tokens.
        let x_t = seen.x_t.as_ref().unwrap();
        assert_eq!(x_t.dim(), (1, 5, 12));
        let stabilized = 0.5_f32.sqrt(); // clean tokens are shown at the stabilization level
        for (token, frames) in [[0, 0], [1, 2], [3, 4]].iter().enumerate() {
            for (f, &frame) in frames.iter().enumerate() {
                for j in 0..6 {
                    let got = x_t[[0, token, f * 6 + j]] / stabilized;
                    assert!((got - frame as f32).abs() < 1e-5, "token {token} frame {f}: {got}");
                }
            }
        }
        let images = seen.images.as_ref().unwrap();
        assert_eq!(images.dim(), (5, 1, 1, 2, 3));
        for (token, frame) in [0u8, 2, 4].iter().enumerate() {
            let want = f32::from(10 * frame) / 255.0;
            assert!(images
                .slice(s![token, .., .., .., ..])
                .iter()
                .all(|&v| (v - want).abs() < 1e-6));
        }
        assert_eq!(seen.levels, vec![0, 0, 0, 4, 4]);
    }

    #[test]
    fn a_frame_not_finite_or_beyond_max_standard_deviations_is_refused_and_not_recorded() {
        // The example contract normalizes with mean 0, std 1.
        let (mut p, _) = planner(false, 3);
        p.push_frame(&[0.0; 2], &[999.0, 0.0, 0.0, 0.0]).unwrap();
        for (action, observation, reason) in [
            ([0.0; 2], [0.0, 0.0, 1001.0, 0.0], "observation[2] = 1.001e3"),
            ([-2e3, 0.0], [0.0; 4], "executed action[0] = -2e3"),
            ([0.0; 2], [f64::NAN, 0.0, 0.0, 0.0], "non-finite value at index 2"),
        ] {
            let err = p.push_frame(&action, &observation).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
            assert_eq!(p.frames_seen, 1, "{err}");
        }
    }

    #[test]
    fn a_memoryless_window_sees_only_the_present_token() {
        let (mut p, seen) = planner(true, 1);
        for i in 0..5 {
            push(&mut p, i, true);
        }
        let mut plan = Plan::with_capacity(p.plan_len(), 2, 4, 12);
        p.plan(None, &mut plan).unwrap();
        let seen = seen.lock();
        assert_eq!(seen.x_t.as_ref().unwrap().dim(), (1, 3, 12));
        let image = seen.images.as_ref().unwrap();
        assert!((image[[0, 0, 0, 0, 0]] - 40.0 / 255.0).abs() < 1e-6);
        assert_eq!(seen.levels, vec![0, 4, 4]);
    }

    /// With a noise stream per sample, an MCG planner's plan (sample 0) draws what the same
    /// planner without MCG draws, plan after plan: without guidance, MCG has nothing to average
    /// and the plans are the same. From one shared stream, the other futures take draws that
    /// the plan would have had.
    #[test]
    fn per_sample_noise_streams_give_the_plan_its_draws_without_mcg() {
        let plans = |samples: usize, noise_streams: NoiseStreams| -> Vec<Plan> {
            let s = PlannerSettings {
                samples,
                noise_streams,
                eta: 1.0,
                replan_every: 2,
                seed: 3,
                ..settings(1)
            };
            let seen = Arc::new(Mutex::new(Seen::default()));
            let mut p = DfPlanner::new(Box::new(Recorder(seen, false)), contract(false), &s).unwrap();
            let mut plan = Plan::with_capacity(p.plan_len(), 2, 4, 12);
            (0..3)
                .map(|k| {
                    push(&mut p, 2 * k, false);
                    push(&mut p, 2 * k + 1, false);
                    p.plan(None, &mut plan).unwrap();
                    plan.clone()
                })
                .collect()
        };
        let without_mcg = plans(1, NoiseStreams::Shared);
        assert_eq!(plans(1, NoiseStreams::PerSample), without_mcg);
        assert_eq!(plans(4, NoiseStreams::PerSample), without_mcg);
        let shared = plans(4, NoiseStreams::Shared);
        assert!(shared.iter().zip(&without_mcg).all(|(a, b)| a != b));
    }

    #[test]
    fn after_a_failed_plan_the_next_one_starts_cold() {
        let (mut p, seen) = warm_planner(true);
        let mut plan = Plan::with_capacity(p.plan_len(), 2, 4, 12);
        let mut calls = |p: &mut DfPlanner, i: usize, image: bool| {
            push(p, i, image);
            push(p, i + 1, image);
            let before = seen.lock().calls;
            p.plan(None, &mut plan).map(|()| seen.lock().calls - before)
        };
        let cold = calls(&mut p, 0, true).unwrap();
        let warm = calls(&mut p, 2, true).unwrap();
        assert!(warm < cold, "a warm start samples fewer rows: {warm} vs {cold}");
        assert!(calls(&mut p, 4, false).is_err(), "no images: the plan fails");
        assert_eq!(calls(&mut p, 6, true).unwrap(), cold);
        assert_eq!(calls(&mut p, 8, true).unwrap(), warm);
        // Steps skipped by a planner thread that fell behind: cold again.
        p.start_cold();
        assert_eq!(calls(&mut p, 10, true).unwrap(), cold);
        assert_eq!(calls(&mut p, 12, true).unwrap(), warm);
        // A refused frame leaves the previous plan: the next frame's plan is warm (the robot
        // node, where the refused step did pass, starts cold itself: PlannerTask's tests).
        assert!(p.push_frame(&[0.0; 2], &[f64::NAN; 4]).is_err());
        assert_eq!(calls(&mut p, 14, true).unwrap(), warm);
    }

    #[test]
    fn a_camera_model_refuses_to_plan_without_the_images_of_a_history_token() {
        let (mut p, _) = planner(true, 3);
        push(&mut p, 0, true);
        push(&mut p, 1, true);
        push(&mut p, 2, false);
        let mut plan = Plan::with_capacity(p.plan_len(), 2, 4, 12);
        let err = p.plan(None, &mut plan).unwrap_err().to_string();
        assert!(err.contains("no camera images for the frame 0 steps ago"), "{err}");
    }

    #[test]
    fn images_of_the_wrong_shape_or_for_a_model_without_cameras_are_refused_by_name() {
        let (mut p, _) = planner(true, 2);
        push(&mut p, 0, false);
        let err = p.push_images(&[&[0; 5]]).unwrap_err().to_string();
        assert_eq!(
            err,
            "images: expected 6 bytes per camera (height × width × 3, rgb8), got 5"
        );
        let err = p.push_images(&[&[0; 6], &[0; 6]]).unwrap_err().to_string();
        assert_eq!(err, "images: expected 1 cameras (cameras.inputs), got 2");
        let (mut p, _) = planner(false, 1);
        push(&mut p, 0, false);
        let err = p.push_images(&[&[0; 6]]).unwrap_err().to_string();
        assert!(
            err.starts_with("images: expected none (this model has no camera inputs)"),
            "{err}"
        );
    }

    #[test]
    fn context_tokens_must_leave_room_for_a_plan() {
        for bad in [0, 8] {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let model = Box::new(Recorder(seen, false));
            let err = DfPlanner::new(model, contract(false), &settings(bad))
                .err()
                .unwrap()
                .to_string();
            assert_eq!(
                err,
                format!("planner.context_tokens: expected 1..=7 (max_tokens - 1), got {bad}")
            );
        }
    }

    #[test]
    fn sampling_steps_may_not_exceed_the_models_timesteps() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let c = contract(false);
        let timesteps = c.diffusion.timesteps;
        let mut s = settings(1);
        s.sampling_steps = timesteps as u32 + 1;
        let err = DfPlanner::new(Box::new(Recorder(seen.clone(), false)), c.clone(), &s)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            format!(
                "planner.sampling_steps: expected 1..={timesteps} (the model's diffusion.timesteps), got {}",
                timesteps + 1
            )
        );
        s.sampling_steps = timesteps as u32;
        assert!(DfPlanner::new(Box::new(Recorder(seen, false)), c, &s).is_ok());
    }
}
