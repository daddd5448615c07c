//! The Diffusion Forcing planner over interleaved action–observation tokens.
//!
//! Frame i holds (action that led into observation i, observation i); a token stacks
//! `frame_stack` frames (onnx/CONTRACT.md). The window is one clean context token — the last
//! frame_stack frames of history, ending with the current observation — followed by
//! `horizon` planned tokens sampled along the scheduling matrix. Planned token 1's first
//! frame holds the action to execute now.

use ndarray::{s, Array3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use thiserror::Error;

use crate::diffusion::{
    Denoiser, Guidance, GuidanceForm, MatrixError, MatrixKind, SampleError, Sampler, SamplerSettings, ScheduleError,
    SchedulingMatrix, SeededNoise, TimestepRows,
};
use crate::model::{Field, ModelContract};

use super::plan::Plan;

#[derive(Debug, Error)]
pub enum PlanError {
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    Matrix(#[from] MatrixError),
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
    /// Planned tokens after the context token (None: max_tokens - 1).
    pub horizon_tokens: Option<usize>,
    /// MCG samples N (1 = plain guidance).
    pub samples: usize,
    pub guidance_scale: f64,
    pub guidance_form: GuidanceForm,
    pub eta: f64,
    /// Planned tokens, after the context, that all samples share (MCG): those covering the
    /// actions executed before the next replan.
    pub shared_tokens: usize,
    /// Warm start: begin from the previous plan shifted by `warm_shift_tokens` and re-noised
    /// to this matrix level (0..=S), instead of from pure noise. None: always cold.
    pub warm_start_level: Option<u32>,
    /// Tokens executed between plans (replan_every / frame_stack, whole tokens only).
    pub warm_shift_tokens: usize,
    pub seed: u64,
}

pub struct DfPlanner {
    model: Box<dyn Denoiser + Send>,
    contract: ModelContract,
    sampler: Sampler,
    rows: TimestepRows,
    /// Rows for a warm start, and the timestep the carried-over tokens are re-noised to.
    warm: Option<(TimestepRows, i64)>,
    warm_shift: usize,
    horizon: usize,
    x: Array3<f32>,
    /// The previous plan's final state, for warm starts.
    previous: Array3<f32>,
    has_previous: bool,
    noise: SeededNoise,
    init_rng: ChaCha8Rng,
    /// Normalized frames, oldest first; always frame_stack long once the first frame arrived.
    history: Vec<f32>,
    frames_seen: usize,
    frame: Vec<f64>,
}

impl DfPlanner {
    pub fn new(
        model: Box<dyn Denoiser + Send>,
        contract: ModelContract,
        s: &PlannerSettings,
    ) -> Result<Self, PlanError> {
        let max_horizon = contract.max_tokens.saturating_sub(1);
        let horizon = s.horizon_tokens.unwrap_or(max_horizon);
        if horizon == 0 || horizon > max_horizon {
            return Err(invalid(
                "planner.horizon_tokens",
                format!("1..={max_horizon} (max_tokens - 1)"),
                horizon,
            ));
        }
        if s.samples == 0 {
            return Err(invalid("planner.samples", ">= 1", 0));
        }
        let matrix = SchedulingMatrix::build(s.matrix, horizon, s.sampling_steps)?;
        let rows = matrix.to_timesteps(1, contract.diffusion.timesteps);
        let warm = match s.warm_start_level {
            None => None,
            Some(level) if level > s.sampling_steps => {
                return Err(invalid(
                    "planner.warm_start_level",
                    format!("0..={}", s.sampling_steps),
                    level,
                ));
            }
            Some(_) if s.warm_shift_tokens == 0 || s.warm_shift_tokens >= horizon => {
                return Err(invalid(
                    "planner.replan_every",
                    format!(
                        "a whole number of tokens (frame_stack = {}) below the horizon",
                        contract.layout.frame_stack
                    ),
                    format!("{} tokens", s.warm_shift_tokens),
                ));
            }
            Some(level) => {
                let carried = horizon - s.warm_shift_tokens;
                let t = crate::diffusion::level_to_timestep(level, contract.diffusion.timesteps, s.sampling_steps);
                Some((
                    matrix
                        .capped(carried, level)
                        .to_timesteps(1, contract.diffusion.timesteps),
                    t,
                ))
            }
        };
        let tokens = horizon + 1;
        let settings = SamplerSettings {
            eta: s.eta,
            stabilization_level: contract.diffusion.stabilization_level,
            noise_clip: contract.diffusion.noise_clip,
            guidance_scale: s.guidance_scale,
            guidance_form: s.guidance_form,
            shared_tokens: if s.samples > 1 {
                (1 + s.shared_tokens).min(tokens)
            } else {
                0
            },
        };
        let d = contract.layout.token_dim;
        let sampler = Sampler::new(settings, contract.alpha_bar()?, (s.samples, tokens, d))?;
        let fd = contract.layout.frame_dim;
        Ok(Self {
            model,
            sampler,
            rows,
            warm,
            warm_shift: s.warm_shift_tokens,
            horizon,
            x: Array3::zeros((s.samples, tokens, d)),
            previous: Array3::zeros((s.samples, tokens, d)),
            has_previous: false,
            noise: SeededNoise::new(s.seed),
            init_rng: ChaCha8Rng::seed_from_u64(s.seed ^ 0x9e37_79b9_7f4a_7c15),
            history: vec![0.0; contract.layout.frame_stack * fd],
            frames_seen: 0,
            frame: vec![0.0; fd],
            contract,
        })
    }

    pub fn contract(&self) -> &ModelContract {
        &self.contract
    }

    /// Actions in a full plan: horizon tokens × frame_stack.
    pub fn plan_len(&self) -> usize {
        self.horizon * self.contract.layout.frame_stack
    }

    /// Forget the history and the previous plan (a new episode).
    pub fn reset(&mut self) {
        self.frames_seen = 0;
        self.has_previous = false;
    }

    /// Append one frame: the action executed during the last step and the observation now.
    pub fn push_frame(&mut self, prev_action: &[f64], observation: &[f64]) -> Result<(), PlanError> {
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
        for (field, values) in [(Field::Action, prev_action), (Field::Observation, observation)] {
            let off = l.offset(field).expect("layout has action and observation");
            self.frame[off..off + values.len()].copy_from_slice(values);
        }
        let fd = l.frame_dim;
        let n = &self.contract.normalization;
        let normalized = self
            .frame
            .iter()
            .enumerate()
            .map(|(i, v)| ((v - n.mean[i]) / n.std[i]) as f32);
        if self.frames_seen == 0 {
            // Before frame_stack frames exist the context repeats the first one.
            let first: Vec<f32> = normalized.collect();
            for chunk in self.history.chunks_mut(fd) {
                chunk.copy_from_slice(&first);
            }
        } else {
            self.history.copy_within(fd.., 0);
            let len = self.history.len();
            for (dst, v) in self.history[len - fd..].iter_mut().zip(normalized) {
                *dst = v;
            }
        }
        self.frames_seen += 1;
        Ok(())
    }

    /// Sample a plan from the current history into `plan` (actions in physical units).
    pub fn plan(&mut self, guidance: Option<&dyn Guidance>, plan: &mut Plan) -> Result<(), PlanError> {
        if self.frames_seen == 0 {
            return Err(PlanError::NoHistory);
        }
        let l = &self.contract.layout;
        if plan.action_dim != l.action_dim || plan.capacity() < self.plan_len() {
            return Err(invalid(
                "plan buffer",
                format!("{} actions of {}", self.plan_len(), l.action_dim),
                format!("{} of {}", plan.capacity(), plan.action_dim),
            ));
        }
        let warm = self.warm.as_ref().filter(|_| self.has_previous);
        let carried = if warm.is_some() {
            self.horizon - self.warm_shift
        } else {
            0
        };
        // Carried-over tokens are re-noised as √ᾱ·x + √(1 − ᾱ)·ε at the warm level.
        let (a, b) = match warm {
            Some(&(_, t)) if t >= 0 => {
                let ab = self.contract.diffusion.alphas_cumprod[t as usize];
                (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32)
            }
            Some(_) => (1.0, 0.0),
            None => (0.0, 1.0),
        };
        let shift = self.warm_shift;
        for (mut sample, prev) in self.x.outer_iter_mut().zip(self.previous.outer_iter()) {
            for (dst, &v) in sample.slice_mut(s![0, ..]).iter_mut().zip(&self.history) {
                *dst = v;
            }
            let shifted = prev.slice(s![1 + shift..1 + shift + carried, ..]);
            for (dst, &v) in sample.slice_mut(s![1..1 + carried, ..]).iter_mut().zip(shifted.iter()) {
                let eps: f32 = StandardNormal.sample(&mut self.init_rng);
                *dst = a * v + b * eps;
            }
            for v in sample.slice_mut(s![1 + carried.., ..]).iter_mut() {
                *v = StandardNormal.sample(&mut self.init_rng);
            }
        }
        let rows = warm.map_or(&self.rows, |(rows, _)| rows);
        let span = tracing::trace_span!("infer");
        let _enter = span.enter();
        self.sampler.run(
            self.model.as_mut(),
            &mut self.x,
            rows,
            guidance,
            &mut self.noise,
            |_, _| {},
        )?;
        drop(_enter);
        self.previous.assign(&self.x);
        self.has_previous = true;

        let (fs, fd) = (l.frame_stack, l.frame_dim);
        let act = l.offset(Field::Action).expect("layout has an action");
        let obs = l.offset(Field::Observation).expect("layout has an observation");
        let n = &self.contract.normalization;
        let best = self.x.slice(s![0, .., ..]);
        let value = |token: usize, frame: usize, field: usize| {
            f64::from(best[[token + 1, frame * fd + field]]) * n.std[field] + n.mean[field]
        };
        // Planned frame k holds (a_{t+k}, o_{t+k+1}): the action and where it should lead.
        for token in 0..self.horizon {
            for f in 0..fs {
                let k = token * fs + f;
                for (j, dst) in plan.action_mut(k).iter_mut().enumerate() {
                    *dst = value(token, f, act + j);
                }
                for (j, dst) in plan.observation_mut(k).iter_mut().enumerate() {
                    *dst = value(token, f, obs + j);
                }
            }
        }
        plan.set_len(self.plan_len());
        for (dst, &v) in plan.first_token.iter_mut().zip(best.slice(s![1, ..])) {
            *dst = v;
        }
        Ok(())
    }
}
