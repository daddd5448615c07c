//! The Diffusion Forcing sampler: walk a scheduling matrix over a token window, one DDIM
//! step per row, each token at its own noise level.
//!
//! Per row r -> r+1 (CONTRACT.md, "Sampling"):
//! 1. Clean tokens (timestep -1) are shown to the network at the stabilization level s:
//!    input √ᾱ_s·x, level s. Noisy tokens are shown as they are.
//! 2. Guidance: cotangent c = ∂r/∂x0 at the network's x0, pulled back through the network
//!    with `denoise_vjp` to g = (∂x0/∂x_t)ᵀc. Monte Carlo Guidance: tokens [0, shared) are
//!    common to every sample of the batch; their g is the batch mean (the expected reward
//!    over the sampled futures), or with `mcg_temperature` τ the mean weighted by
//!    softmax(r_b / τ) of each sample's reward, and their noise draw is sample 0's. Redraws
//!    (modelled on the official code's `ddim_repeats`, whose redraws are chained) instead average the reward over R extra x0 draws of the same
//!    plan: every noisy token re-noised from x0 to its level t, x_t' = √ᾱ_t·x0 + √(1−ᾱ_t)·ε,
//!    and denoised again; the cotangent on x0 becomes (c(x0) + Σ_r √ᾱ_t·(∂x0'_r/∂x_t')ᵀc(x0'_r))
//!    / (R + 1) before the pull-back.
//! 3. Tokens whose level falls take a DDIM step with ε̂ = clamp(ε, ±noise_clip) and
//!    x̂0 = x0 + scale·gain(ᾱ_t)·g (`GuidanceForm`), for the guided tokens only when
//!    `guided_tokens` limits them; tokens whose level stays are not touched.

use ndarray::{s, Array2, Array3, ArrayView3, ArrayViewMut3, Axis};
use thiserror::Error;

use super::ddim::ddim_coefficients;
use super::denoiser::{DenoiseError, Denoiser};
use super::guidance::{Guidance, GuidanceForm};
use super::matrix::TimestepRows;
use super::noise::NoiseSource;
use super::schedule::AlphaBar;

#[derive(Debug, Error)]
pub enum SampleError {
    #[error(transparent)]
    Denoise(#[from] DenoiseError),
    #[error("{field}: expected {expected}, got {got}")]
    Mismatch {
        field: &'static str,
        expected: String,
        got: String,
    },
    #[error("window of {tokens} tokens exceeds the model's max_tokens = {max_tokens}")]
    TooManyTokens { tokens: usize, max_tokens: usize },
    #[error("scheduling rows: token {token} rises from timestep {from} to {to} at row {row}; levels may only fall")]
    RisingLevel {
        row: usize,
        token: usize,
        from: i64,
        to: i64,
    },
    #[error("scheduling rows: timestep {value} at row {row}, token {token} is outside -1..{timesteps}")]
    LevelOutOfRange {
        row: usize,
        token: usize,
        value: i64,
        timesteps: usize,
    },
    #[error("{what} is not finite at sample {sample}, token {token} (row {row}); expected finite values")]
    NonFinite {
        what: &'static str,
        row: usize,
        sample: usize,
        token: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSettings {
    /// DDIM η: 0 is deterministic DDIM, 1 is DDPM's posterior variance.
    pub eta: f64,
    /// Timestep at which clean tokens are shown to the network.
    pub stabilization_level: i64,
    /// |ε̂| is clamped to this.
    pub noise_clip: f32,
    /// Guidance strength; 0 turns guidance off even when a reward is given.
    pub guidance_scale: f64,
    /// How the guidance gradient scales with the noise level.
    pub guidance_form: GuidanceForm,
    /// Clean history tokens at the front of the window: the guidance reads and pulls only the
    /// tokens after them (the plan).
    pub context_tokens: usize,
    /// Tokens [0, shared_tokens) are shared by all samples (Monte Carlo Guidance).
    pub shared_tokens: usize,
    /// Extra x0 draws R per row whose reward is averaged in (0: none; see the module doc).
    pub redraws: usize,
    /// Only tokens [0, n) take the guidance shift (None: every token). The others follow the
    /// model unguided, while the reward still reads them (MCG over prior futures).
    pub guided_tokens: Option<usize>,
    /// MCG weighting of the futures: None averages their guidance evenly (the expected
    /// reward); Some(τ) weights future b by softmax(r_b / τ) of its own reward at that row,
    /// the gradient of τ·ln E[exp(r / τ)]: the futures the planner can choose, not endure.
    pub mcg_temperature: Option<f64>,
}

/// Preallocated buffers for one window shape; reuse it across plans.
pub struct Sampler {
    settings: SamplerSettings,
    alpha_bar: AlphaBar,
    x_in: Array3<f32>,
    k_in: Array2<i64>,
    x0: Array3<f32>,
    eps: Array3<f32>,
    grad: Array3<f32>,
    cotangent: Array3<f32>,
    z: Array3<f32>,
    /// Over the last run: MCG's average against plain guidance (`mcg_report`).
    mcg: McgSums,
    /// Per row, each sample's weight in the average of the shared guidance.
    future_weights: Vec<f64>,
    redraw: Option<Redraw>,
}

/// Buffers of the R redrawn windows [R, T, D].
struct Redraw {
    x_in: Array3<f32>,
    k_in: Array2<i64>,
    eps_draw: Array3<f32>,
    x0: Array3<f32>,
    eps: Array3<f32>,
    cotangent: Array3<f32>,
    grad: Array3<f32>,
}

impl Sampler {
    pub fn new(
        settings: SamplerSettings,
        alpha_bar: AlphaBar,
        shape: (usize, usize, usize),
    ) -> Result<Self, SampleError> {
        let k = alpha_bar.timesteps();
        if !(0..k as i64).contains(&settings.stabilization_level) {
            return Err(mismatch(
                "stabilization_level",
                format!("0..{k}"),
                settings.stabilization_level,
            ));
        }
        if settings.noise_clip.is_nan() || settings.noise_clip <= 0.0 {
            return Err(mismatch("noise_clip", "> 0", settings.noise_clip));
        }
        // Above 1 the DDIM noise σ can exceed what the step leaves room for (√(1 − ᾱ' − σ²)).
        if !(0.0..=1.0).contains(&settings.eta) {
            return Err(mismatch(
                "eta",
                "0..=1 (0 deterministic DDIM, 1 DDPM's variance)",
                settings.eta,
            ));
        }
        if let GuidanceForm::Score { max_gain } = settings.guidance_form {
            if max_gain.is_nan() || max_gain <= 0.0 {
                return Err(mismatch("guidance_form.max_gain", "> 0", max_gain));
            }
        }
        // A negative scale would push the plans away from the reward.
        if !(settings.guidance_scale.is_finite() && settings.guidance_scale >= 0.0) {
            return Err(mismatch(
                "guidance_scale",
                "a finite number >= 0",
                settings.guidance_scale,
            ));
        }
        if settings.shared_tokens > shape.1 {
            return Err(mismatch(
                "shared_tokens",
                format!("<= {} tokens", shape.1),
                settings.shared_tokens,
            ));
        }
        if let Some(n) = settings.guided_tokens.filter(|&n| n > shape.1) {
            return Err(mismatch("guided_tokens", format!("<= {} tokens", shape.1), n));
        }
        if let Some(t) = settings.mcg_temperature.filter(|t| !(t.is_finite() && *t > 0.0)) {
            return Err(mismatch("mcg_temperature", "a finite number > 0", t));
        }
        if settings.redraws > 0 && shape.0 != 1 {
            return Err(mismatch("redraws: batch of samples", 1, shape.0));
        }
        Ok(Self {
            alpha_bar,
            x_in: Array3::zeros(shape),
            k_in: Array2::zeros((shape.0, shape.1)),
            x0: Array3::zeros(shape),
            eps: Array3::zeros(shape),
            grad: Array3::zeros(shape),
            cotangent: Array3::zeros(shape),
            z: Array3::zeros(shape),
            mcg: McgSums::default(),
            future_weights: vec![1.0 / shape.0 as f64; shape.0],
            redraw: (settings.redraws > 0).then(|| {
                let shape = (settings.redraws, shape.1, shape.2);
                Redraw {
                    x_in: Array3::zeros(shape),
                    k_in: Array2::zeros((shape.0, shape.1)),
                    eps_draw: Array3::zeros(shape),
                    x0: Array3::zeros(shape),
                    eps: Array3::zeros(shape),
                    cotangent: Array3::zeros(shape),
                    grad: Array3::zeros(shape),
                }
            }),
            settings,
        })
    }

    /// Denoise `x` [B, T, D] in place along `rows`; `on_row(r, x)` sees the state after row r
    /// (r = 0 is the initial state, whose shared tokens are made sample 0's).
    pub fn run(
        &mut self,
        denoiser: &mut dyn Denoiser,
        x: &mut Array3<f32>,
        rows: &TimestepRows,
        guidance: Option<&dyn Guidance>,
        noise: &mut dyn NoiseSource,
        mut on_row: impl FnMut(usize, ArrayView3<f32>),
    ) -> Result<(), SampleError> {
        self.check(denoiser, x, rows)?;
        share_first_sample(x, self.settings.shared_tokens);
        self.mcg = McgSums::default();
        on_row(0, x.view());
        let guidance = guidance.filter(|_| self.settings.guidance_scale != 0.0);
        for r in 0..rows.rows() - 1 {
            self.step(denoiser, x, rows.row(r), rows.row(r + 1), r, guidance, noise)?;
            on_row(r + 1, x.view());
        }
        Ok(())
    }

    /// What Monte Carlo Guidance did to the guidance over the last run (`McgReport`); None
    /// without MCG or guidance.
    pub fn mcg_report(&self) -> Option<McgReport> {
        let McgSums { moved, own, averaged } = self.mcg;
        (own > 0.0).then(|| McgReport {
            shift: (moved / own).sqrt(),
            pull: (averaged / own).sqrt(),
            guidance: own.sqrt(),
        })
    }

    fn check(&self, denoiser: &dyn Denoiser, x: &Array3<f32>, rows: &TimestepRows) -> Result<(), SampleError> {
        let shape = self.x0.dim();
        if x.dim() != shape {
            return Err(mismatch(
                "token window shape [B, T, D]",
                format!("{shape:?}"),
                format!("{:?}", x.dim()),
            ));
        }
        if shape.2 != denoiser.token_dim() {
            return Err(mismatch("token_dim", denoiser.token_dim(), shape.2));
        }
        if shape.1 > denoiser.max_tokens() {
            return Err(SampleError::TooManyTokens {
                tokens: shape.1,
                max_tokens: denoiser.max_tokens(),
            });
        }
        if rows.tokens() != shape.1 {
            return Err(mismatch("scheduling rows: tokens per row", shape.1, rows.tokens()));
        }
        if rows.rows() < 1 {
            return Err(mismatch("scheduling rows", ">= 1 row", 0));
        }
        let k = self.alpha_bar.timesteps();
        for r in 0..rows.rows() {
            for (token, &value) in rows.row(r).iter().enumerate() {
                if !(-1..k as i64).contains(&value) {
                    return Err(SampleError::LevelOutOfRange {
                        row: r,
                        token,
                        value,
                        timesteps: k,
                    });
                }
                if r > 0 && value > rows.row(r - 1)[token] {
                    return Err(SampleError::RisingLevel {
                        row: r,
                        token,
                        from: rows.row(r - 1)[token],
                        to: value,
                    });
                }
            }
        }
        check_finite("input token", x.view(), 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        denoiser: &mut dyn Denoiser,
        x: &mut Array3<f32>,
        cur: &[i64],
        next: &[i64],
        row: usize,
        guidance: Option<&dyn Guidance>,
        noise: &mut dyn NoiseSource,
    ) -> Result<(), SampleError> {
        let s = &self.settings;
        let stab_scale = self.alpha_bar.at(s.stabilization_level).sqrt() as f32;
        for (token, &t) in cur.iter().enumerate() {
            let (level, scale) = if t < 0 {
                (s.stabilization_level, stab_scale)
            } else {
                (t, 1.0)
            };
            self.k_in.column_mut(token).fill(level);
            let src = x.slice(s![.., token, ..]);
            self.x_in
                .slice_mut(s![.., token, ..])
                .zip_mut_with(&src, |d, &v| *d = v * scale);
        }
        denoiser.denoise(
            self.x_in.view(),
            self.k_in.view(),
            self.x0.view_mut(),
            self.eps.view_mut(),
        )?;
        if let Some(g) = guidance {
            planned_cotangent(
                g,
                self.settings.context_tokens,
                self.x0.view(),
                self.cotangent.view_mut(),
            );
            if self.redraw.is_some() {
                let redrawn = self.average_over_redraws(denoiser, cur, next, row, g, noise)?;
                self.mcg += redrawn;
            }
            denoiser.denoise_vjp(
                self.x_in.view(),
                self.k_in.view(),
                self.cotangent.view(),
                self.x0.view_mut(),
                self.eps.view_mut(),
                self.grad.view_mut(),
            )?;
            if let Some(temperature) = self.settings.mcg_temperature {
                let planned = self.x0.slice(s![.., self.settings.context_tokens.., ..]);
                softmax_of_rewards(g, planned, temperature, &mut self.future_weights);
            }
            let shared = self.settings.shared_tokens;
            let shift = average_shared_guidance(&mut self.grad, shared, &self.future_weights, |t| cur[t] != next[t]);
            if tracing::enabled!(tracing::Level::TRACE) {
                // Where along the rows the guidance acts and how far MCG moves it there
                // (docs/maze2d.md, "Where the guidance acts"); off unless RUST_LOG asks for it.
                if let Some(token) = (0..shared).find(|&token| cur[token] != next[token]) {
                    let timestep = cur[token];
                    let (ab_t, ab_next) = (self.alpha_bar.at(timestep), self.alpha_bar.at(next[token]));
                    let gain = self.settings.guidance_form.gain(ab_t, ab_next, self.settings.eta);
                    tracing::trace!(row, timestep, gain, moved = shift.moved, own = shift.own, "mcg row");
                }
            }
            self.mcg += shift;
        }
        let s = &self.settings;
        noise.fill(row, self.z.view_mut());
        share_first_sample(&mut self.z, s.shared_tokens);

        let batch = x.dim().0;
        for (token, (&t, &t_next)) in cur.iter().zip(next).enumerate() {
            if t == t_next {
                continue;
            }
            let (ab_t, ab_next) = (self.alpha_bar.at(t), self.alpha_bar.at(t_next));
            let c = ddim_coefficients(ab_t, ab_next, s.eta);
            let shift = if guidance.is_some() && s.guided_tokens.is_none_or(|n| token < n) {
                (s.guidance_scale * s.guidance_form.gain(ab_t, ab_next, s.eta)) as f32
            } else {
                0.0
            };
            for b in 0..batch {
                let x0 = self.x0.slice(s![b, token, ..]);
                let eps = self.eps.slice(s![b, token, ..]);
                if x0.iter().chain(eps.iter()).any(|v| !v.is_finite()) {
                    return Err(SampleError::NonFinite {
                        what: "network output",
                        row,
                        sample: b,
                        token,
                    });
                }
                let grad = self.grad.slice(s![b, token, ..]);
                let z = self.z.slice(s![b, token, ..]);
                let mut out = x.slice_mut(s![b, token, ..]);
                for (d, o) in out.iter_mut().enumerate() {
                    let e = eps[d].clamp(-s.noise_clip, s.noise_clip);
                    let x0_hat = x0[d] + shift * grad[d];
                    *o = c.x0 * x0_hat + c.eps * e + c.noise * z[d];
                }
            }
        }
        check_finite("sampled token", x.view(), row + 1)
    }

    /// Redraws: the cotangent on x0 becomes its average over the plan's own x0 and R redrawn
    /// ones (module doc). Returns their sums over the stepping tokens, c̄ against c.
    fn average_over_redraws(
        &mut self,
        denoiser: &mut dyn Denoiser,
        cur: &[i64],
        next: &[i64],
        row: usize,
        guidance: &dyn Guidance,
        noise: &mut dyn NoiseSource,
    ) -> Result<McgSums, SampleError> {
        let re = self.redraw.as_mut().expect("redraw buffers");
        noise.fill_redraws(row, re.eps_draw.view_mut());
        let (draws, _, dim) = re.x_in.dim();
        for (token, &t) in cur.iter().enumerate() {
            re.k_in.column_mut(token).fill(self.k_in[[0, token]]);
            // Clean context is shown as it is; noisy tokens are re-noised from x0 to level t.
            let renoise = (t >= 0).then(|| {
                let ab = self.alpha_bar.at(t);
                (ab.sqrt() as f32, (1.0 - ab).sqrt() as f32)
            });
            for r in 0..draws {
                for d in 0..dim {
                    re.x_in[[r, token, d]] = match renoise {
                        None => self.x_in[[0, token, d]],
                        Some((a, b)) => a * self.x0[[0, token, d]] + b * re.eps_draw[[r, token, d]],
                    };
                }
            }
        }
        denoiser.denoise(re.x_in.view(), re.k_in.view(), re.x0.view_mut(), re.eps.view_mut())?;
        planned_cotangent(
            guidance,
            self.settings.context_tokens,
            re.x0.view(),
            re.cotangent.view_mut(),
        );
        // A clean token's redraw is the plan's own x0 (its reward is counted in c): its
        // redrawn output carries none, or a clean token after noisy ones (trapezoid) would
        // pull on them through the redraw network as well.
        for (token, _) in cur.iter().enumerate().filter(|(_, &t)| t < 0) {
            re.cotangent.slice_mut(s![.., token, ..]).fill(0.0);
        }
        denoiser.denoise_vjp(
            re.x_in.view(),
            re.k_in.view(),
            re.cotangent.view(),
            re.x0.view_mut(),
            re.eps.view_mut(),
            re.grad.view_mut(),
        )?;
        let mut sums = McgSums::default();
        for (token, &t) in cur.iter().enumerate() {
            if t < 0 {
                continue;
            }
            let a = self.alpha_bar.at(t).sqrt() as f32;
            for d in 0..dim {
                let c = self.cotangent[[0, token, d]];
                let sum = (0..draws).map(|r| re.grad[[r, token, d]]).sum::<f32>();
                let mean = (c + a * sum) / (draws + 1) as f32;
                self.cotangent[[0, token, d]] = mean;
                if t != next[token] {
                    sums.add(mean, c);
                }
            }
        }
        Ok(sums)
    }
}

/// Make tokens [0, n) identical across the batch: sample 0's value.
fn share_first_sample(a: &mut Array3<f32>, n: usize) {
    let (head, mut rest) = a.view_mut().split_at(Axis(0), 1);
    let first = head.slice(s![0, ..n, ..]);
    for mut other in rest.outer_iter_mut() {
        other.slice_mut(s![..n, ..]).assign(&first);
    }
}

/// The guidance's ∂r/∂x0 of the planned tokens (after the first `context`) into `out`; the
/// clean context gets none.
fn planned_cotangent(guidance: &dyn Guidance, context: usize, x0: ArrayView3<f32>, mut out: ArrayViewMut3<f32>) {
    out.slice_mut(s![.., ..context, ..]).fill(0.0);
    guidance.cotangent(x0.slice(s![.., context.., ..]), out.slice_mut(s![.., context.., ..]));
}

/// `weights` = softmax(r_b / τ) over the samples b of each sample's reward at x0.
fn softmax_of_rewards(guidance: &dyn Guidance, x0: ArrayView3<f32>, temperature: f64, weights: &mut [f64]) {
    for (w, sample) in weights.iter_mut().zip(x0.outer_iter()) {
        *w = guidance.reward(sample) / temperature;
    }
    let max = weights.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    weights.iter_mut().for_each(|w| *w = (*w - max).exp());
    let total: f64 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= total);
}

/// MCG over one run: the average over samples ḡ against what plain guidance would have used,
/// g₀. Futures: the pulled-back gradient of the shared tokens (sample 0's own); redraws: the
/// cotangent on x0 of the stepping tokens (the plan's own). Each is over the run's rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct McgReport {
    /// ‖ḡ − g₀‖ / ‖g₀‖: how far averaging moved the guidance. Near 0, the draws agree and MCG
    /// is plain guidance at N times the cost.
    pub shift: f64,
    /// ‖ḡ‖ / ‖g₀‖: how strong the averaged guidance was. Futures that pull the shared tokens
    /// different ways average to a shorter ḡ: 1 when they agree, about 1/√N when their pulls
    /// are unrelated. ḡ's component along g₀ is (pull² + 1 − shift²)/2 of ‖g₀‖.
    pub pull: f64,
    /// ‖g₀‖: how strong plain guidance was. Weighting plans by its square pools them as one
    /// plan's rows are pooled (the eval's `mcg_*_weighted`): with a reward that some plans
    /// barely reach, ‖g₀‖ is often near 0 and a mean of their ratios says little.
    pub guidance: f64,
}

/// MCG's averaged guidance ḡ against what plain guidance would have used, g₀, summed over
/// the components it was measured on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct McgSums {
    /// Σ‖ḡ − g₀‖²: how far averaging moved the guidance.
    moved: f64,
    /// Σ‖g₀‖².
    own: f64,
    /// Σ‖ḡ‖².
    averaged: f64,
}

impl McgSums {
    fn add(&mut self, averaged: f32, own: f32) {
        self.moved += (f64::from(averaged) - f64::from(own)).powi(2);
        self.own += f64::from(own).powi(2);
        self.averaged += f64::from(averaged).powi(2);
    }
}

impl std::ops::AddAssign for McgSums {
    fn add_assign(&mut self, other: Self) {
        self.moved += other.moved;
        self.own += other.own;
        self.averaged += other.averaged;
    }
}

/// Monte Carlo Guidance: the guidance of tokens [0, n) becomes its batch average with the
/// samples' `weights` (summing to 1; even weights: the gradient of the reward expected over
/// the sampled futures). Returns the average against sample 0's own gradient over the
/// `stepping` tokens.
fn average_shared_guidance(
    grad: &mut Array3<f32>,
    n: usize,
    weights: &[f64],
    stepping: impl Fn(usize) -> bool,
) -> McgSums {
    let (batch, _, dim) = grad.dim();
    let mut sums = McgSums::default();
    if batch < 2 {
        return sums;
    }
    for token in 0..n {
        for d in 0..dim {
            let g0 = grad[[0, token, d]];
            let mean = (0..batch).map(|b| weights[b] as f32 * grad[[b, token, d]]).sum::<f32>();
            for b in 0..batch {
                grad[[b, token, d]] = mean;
            }
            if stepping(token) {
                sums.add(mean, g0);
            }
        }
    }
    sums
}

fn check_finite(what: &'static str, x: ArrayView3<f32>, row: usize) -> Result<(), SampleError> {
    for ((sample, token, _), v) in x.indexed_iter() {
        if !v.is_finite() {
            return Err(SampleError::NonFinite {
                what,
                row,
                sample,
                token,
            });
        }
    }
    Ok(())
}

fn mismatch(field: &'static str, expected: impl ToString, got: impl ToString) -> SampleError {
    SampleError::Mismatch {
        field,
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::{MatrixKind, QuadraticTarget, SchedulingMatrix, TimestepRows};
    use ndarray::{ArrayView2, ArrayViewMut3};

    /// x0 = x_t, ε = 0: its vector-Jacobian product is the cotangent itself.
    struct Identity;

    impl Denoiser for Identity {
        fn token_dim(&self) -> usize {
            2
        }
        fn max_tokens(&self) -> usize {
            4
        }
        fn denoise(
            &mut self,
            x_t: ArrayView3<f32>,
            _: ArrayView2<i64>,
            mut x0: ArrayViewMut3<f32>,
            mut eps: ArrayViewMut3<f32>,
        ) -> Result<(), DenoiseError> {
            x0.assign(&x_t);
            eps.fill(0.0);
            Ok(())
        }
        fn denoise_vjp(
            &mut self,
            x_t: ArrayView3<f32>,
            k: ArrayView2<i64>,
            cotangent: ArrayView3<f32>,
            x0: ArrayViewMut3<f32>,
            eps: ArrayViewMut3<f32>,
            mut grad: ArrayViewMut3<f32>,
        ) -> Result<(), DenoiseError> {
            grad.assign(&cotangent);
            self.denoise(x_t, k, x0, eps)
        }
    }

    /// Draws 0.5, 1.0, 1.5, ... in order, whatever the shape asked for.
    struct Counting(f32);

    impl NoiseSource for Counting {
        fn fill(&mut self, _: usize, mut out: ArrayViewMut3<f32>) {
            for v in out.iter_mut() {
                self.0 += 0.5;
                *v = self.0;
            }
        }
    }

    fn settings(guidance_scale: f64, redraws: usize, guided_tokens: Option<usize>) -> SamplerSettings {
        SamplerSettings {
            eta: 0.0,
            stabilization_level: 0,
            noise_clip: 6.0,
            guidance_scale,
            guidance_form: GuidanceForm::MeanShift,
            context_tokens: 0,
            shared_tokens: 0,
            redraws,
            guided_tokens,
            mcg_temperature: None,
        }
    }

    /// Sample `x` through `Identity` with the `Counting` draws, guided towards `target` in
    /// every dimension; returns the sampler (for `mcg_report`).
    fn sample_identity(
        settings: SamplerSettings,
        alpha_bar: &AlphaBar,
        rows: &TimestepRows,
        x: &mut Array3<f32>,
        target: f32,
    ) -> Sampler {
        let dim = x.dim().2;
        let reward = QuadraticTarget {
            target: vec![target; dim],
            weights: vec![1.0; dim],
        };
        let mut sampler = Sampler::new(settings, alpha_bar.clone(), x.dim()).unwrap();
        sampler
            .run(&mut Identity, x, rows, Some(&reward), &mut Counting(0.0), |_, _| {})
            .unwrap();
        sampler
    }

    #[test]
    fn redraws_average_the_reward_over_the_plan_and_its_renoised_draws() {
        let alpha_bar = AlphaBar::new(vec![0.9, 0.5, 0.1]).unwrap();
        let rows = SchedulingMatrix::build(MatrixKind::FullSequence, 1, 1)
            .unwrap()
            .to_timesteps(0, 3);
        let (t, t_next) = (rows.row(0)[0], rows.row(1)[0]);
        let (ab, ab_next) = (alpha_bar.at(t), alpha_bar.at(t_next));
        let x_init = [0.4_f32, -1.2];
        let mut x = Array3::from_shape_vec((1, 1, 2), x_init.to_vec()).unwrap();
        let sampler = sample_identity(settings(2.0, 2, None), &alpha_bar, &rows, &mut x, 0.0);

        // Draws r = 0, 1 re-noise x0 with ε = 0.5, 1.0 (dim 0) and 1.5, 2.0 (dim 1), stored
        // [r][d]: ε[0] = (0.5, 1.0), ε[1] = (1.5, 2.0). c(x) = −x; each draw's pull-back is
        // √ᾱ·c(x0'_r).
        let eps = [[0.5, 1.0], [1.5, 2.0]];
        let (a, b) = (ab.sqrt(), (1.0 - ab).sqrt());
        let (mut moved, mut own, mut averaged) = (0.0, 0.0, 0.0);
        for d in 0..2 {
            let x0 = f64::from(x_init[d]);
            let redrawn: f64 = eps.iter().map(|e| -a * (a * x0 + b * e[d])).sum();
            let cotangent = (-x0 + redrawn) / 3.0;
            let expected = ab_next.sqrt() * (x0 + 2.0 * (1.0 - ab) * cotangent);
            assert!(
                (f64::from(x[[0, 0, d]]) - expected).abs() < 1e-5,
                "dim {d}: {} vs {expected}",
                x[[0, 0, d]]
            );
            moved += (cotangent + x0).powi(2);
            own += x0.powi(2);
            averaged += cotangent.powi(2);
        }
        // How far averaging moved the plan's own cotangent c = −x0, and how long it left it.
        let report = sampler.mcg_report().unwrap();
        assert!((report.shift - (moved / own).sqrt()).abs() < 1e-5);
        assert!((report.pull - (averaged / own).sqrt()).abs() < 1e-5);
        assert!((report.guidance - own.sqrt()).abs() < 1e-5);
    }

    /// `Identity`, recording the cotangents of the redrawn windows (batch > 1) it pulls back.
    struct RedrawCotangents(Vec<Array3<f32>>);

    impl Denoiser for RedrawCotangents {
        fn token_dim(&self) -> usize {
            Identity.token_dim()
        }
        fn max_tokens(&self) -> usize {
            Identity.max_tokens()
        }
        fn denoise(
            &mut self,
            x_t: ArrayView3<f32>,
            k: ArrayView2<i64>,
            x0: ArrayViewMut3<f32>,
            eps: ArrayViewMut3<f32>,
        ) -> Result<(), DenoiseError> {
            Identity.denoise(x_t, k, x0, eps)
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
            if x_t.dim().0 > 1 {
                self.0.push(cotangent.to_owned());
            }
            Identity.denoise_vjp(x_t, k, cotangent, x0, eps, grad)
        }
    }

    #[test]
    fn a_clean_tokens_redraw_carries_no_reward() {
        // Trapezoid over 4 tokens: the last token goes clean with the first, before the middle.
        let alpha_bar = AlphaBar::new(vec![0.9, 0.7, 0.5, 0.3, 0.1]).unwrap();
        let rows = SchedulingMatrix::build(MatrixKind::Trapezoid { uncertainty: 1.5 }, 4, 4)
            .unwrap()
            .to_timesteps(0, 5);
        let reward = QuadraticTarget {
            target: vec![3.0; 2],
            weights: vec![1.0; 2],
        };
        let mut x = Array3::from_elem((1, 4, 2), 0.5_f32);
        let mut sampler = Sampler::new(settings(1.0, 2, None), alpha_bar, x.dim()).unwrap();
        let mut recorder = RedrawCotangents(vec![]);
        sampler
            .run(
                &mut recorder,
                &mut x,
                &rows,
                Some(&reward),
                &mut Counting(0.0),
                |_, _| {},
            )
            .unwrap();
        assert_eq!(recorder.0.len(), rows.rows() - 1, "one redraw pull-back per step");
        let mut clean_after_noisy = false;
        for (row, cotangent) in recorder.0.iter().enumerate() {
            let cur = rows.row(row);
            for (token, &t) in cur.iter().enumerate() {
                let pulled = cotangent.slice(s![.., token, ..]).iter().any(|&c| c != 0.0);
                assert_eq!(pulled, t >= 0, "row {row} {cur:?}, token {token}");
                clean_after_noisy |= t < 0 && cur[..token].iter().any(|&e| e >= 0);
            }
        }
        assert!(clean_after_noisy, "the case the trapezoid exists for");
    }

    #[test]
    fn guided_tokens_limits_the_guidance_shift_to_the_first_tokens() {
        let alpha_bar = AlphaBar::new(vec![0.9, 0.5, 0.1]).unwrap();
        let rows = SchedulingMatrix::build(MatrixKind::FullSequence, 2, 2)
            .unwrap()
            .to_timesteps(0, 3);
        let run = |guidance_scale: f64, guided_tokens: Option<usize>| {
            let mut x = Array3::from_shape_vec((1, 2, 2), vec![0.4, -1.2, -0.3, 0.8]).unwrap();
            let settings = settings(guidance_scale, 0, guided_tokens);
            sample_identity(settings, &alpha_bar, &rows, &mut x, 1.0);
            x
        };
        let (all, first, none) = (run(2.0, None), run(2.0, Some(1)), run(0.0, None));
        // Identity's tokens do not see each other, so each token is guided or not on its own.
        assert_eq!(first.slice(s![.., 0, ..]), all.slice(s![.., 0, ..]));
        assert_eq!(first.slice(s![.., 1, ..]), none.slice(s![.., 1, ..]));
        assert_ne!(all.slice(s![.., 1, ..]), none.slice(s![.., 1, ..]));
    }

    /// Pulls every value it is given up; checks it is given the planned tokens only.
    struct PlannedOnly(usize);

    impl Guidance for PlannedOnly {
        fn cotangent(&self, x0: ArrayView3<f32>, mut out: ArrayViewMut3<f32>) {
            assert_eq!(x0.dim().1, self.0, "the guidance sees the planned tokens only");
            out.fill(1.0);
        }
        fn reward(&self, sample: ndarray::ArrayView2<f32>) -> f64 {
            assert_eq!(sample.dim().0, self.0);
            0.0
        }
    }

    #[test]
    fn the_guidance_reads_and_pulls_only_the_tokens_after_the_context() {
        let alpha_bar = AlphaBar::new(vec![0.9, 0.5, 0.1]).unwrap();
        let (context, planned) = (2, 2);
        let rows = SchedulingMatrix::build(MatrixKind::FullSequence, planned, 2)
            .unwrap()
            .to_timesteps(context, 3);
        let run = |guidance_scale: f64| {
            let mut x = Array3::from_elem((2, context + planned, 2), 0.25_f32);
            let settings = SamplerSettings {
                context_tokens: context,
                mcg_temperature: Some(0.1),
                ..settings(guidance_scale, 0, None)
            };
            let mut sampler = Sampler::new(settings, alpha_bar.clone(), x.dim()).unwrap();
            sampler
                .run(
                    &mut Identity,
                    &mut x,
                    &rows,
                    Some(&PlannedOnly(planned)),
                    &mut Counting(0.0),
                    |_, _| {},
                )
                .unwrap();
            x
        };
        let (guided, unguided) = (run(2.0), run(0.0));
        assert_eq!(
            guided.slice(s![.., ..context, ..]),
            unguided.slice(s![.., ..context, ..])
        );
        assert!(guided
            .slice(s![.., context.., ..])
            .iter()
            .zip(unguided.slice(s![.., context.., ..]))
            .all(|(g, u)| g > u));
    }

    #[test]
    fn mcg_averages_the_shared_guidance_and_measures_how_far_it_moved_sample_zero() {
        // Two samples, two shared tokens of one dimension, a third token per sample.
        let mut grad = Array3::from_shape_vec((2, 3, 1), vec![1.0, 2.0, 5.0, 3.0, 2.0, 7.0]).unwrap();
        let sums = average_shared_guidance(&mut grad, 2, &[0.5, 0.5], |_| true);
        assert_eq!(grad.into_raw_vec_and_offset().0, vec![2.0, 2.0, 5.0, 2.0, 2.0, 7.0]);
        // Token 0: sample 0 had 1, the mean is 2; token 1: both 2.
        assert_eq!(
            sums,
            McgSums {
                moved: 1.0,
                own: 1.0 + 4.0,
                averaged: 4.0 + 4.0
            }
        );

        // Futures pulling opposite ways average to no pull.
        let mut grad = Array3::from_shape_vec((2, 1, 2), vec![1.0, -2.0, -1.0, 2.0]).unwrap();
        let sums = average_shared_guidance(&mut grad, 1, &[0.5, 0.5], |_| true);
        assert_eq!((sums.averaged, sums.own, sums.moved), (0.0, 5.0, 5.0));

        // Tokens that do not step this row (clean context) are averaged but not measured.
        let mut grad = Array3::from_shape_vec((2, 2, 1), vec![1.0, 0.0, 3.0, 0.0]).unwrap();
        assert_eq!(
            average_shared_guidance(&mut grad, 2, &[0.5, 0.5], |t| t == 1),
            McgSums::default()
        );

        // Identical futures: MCG changes nothing.
        let mut grad = Array3::from_elem((4, 2, 3), 0.5_f32);
        let sums = average_shared_guidance(&mut grad, 2, &[0.25; 4], |_| true);
        assert_eq!((sums.moved, sums.averaged), (0.0, sums.own));

        // Weighted: sample 1 counts three times as much as sample 0.
        let mut grad = Array3::from_shape_vec((2, 1, 1), vec![1.0, 5.0]).unwrap();
        average_shared_guidance(&mut grad, 1, &[0.25, 0.75], |_| true);
        assert_eq!(grad.into_raw_vec_and_offset().0, vec![4.0, 4.0]);
    }

    #[test]
    fn future_weights_are_the_softmax_of_the_samples_rewards() {
        // r_b = −½ Σ (x − 0)² per sample: sample 0 at 0 (r 0), sample 1 at 1 in 2 values (r −1).
        let reward = QuadraticTarget {
            target: vec![0.0],
            weights: vec![1.0],
        };
        let x0 = Array3::from_shape_vec((2, 2, 1), vec![0.0, 0.0, 1.0, 1.0]).unwrap();
        let mut weights = [0.0; 2];
        softmax_of_rewards(&reward, x0.view(), 0.5, &mut weights);
        let e = (-2.0_f64).exp();
        assert!((weights[0] - 1.0 / (1.0 + e)).abs() < 1e-12 && (weights[1] - e / (1.0 + e)).abs() < 1e-12);
        // A hot temperature weighs them nearly evenly; a cold one picks the best.
        softmax_of_rewards(&reward, x0.view(), 1e6, &mut weights);
        assert!((weights[0] - 0.5).abs() < 1e-6);
        softmax_of_rewards(&reward, x0.view(), 1e-3, &mut weights);
        assert_eq!(weights, [1.0, 0.0]);
    }
}
