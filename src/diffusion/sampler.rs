//! The Diffusion Forcing sampler: walk a scheduling matrix over a token window, one DDIM
//! step per row, each token at its own noise level.
//!
//! Per row r -> r+1 (CONTRACT.md, "Sampling"):
//! 1. Clean tokens (timestep -1) are shown to the network at the stabilization level s:
//!    input √ᾱ_s·x, level s. Noisy tokens are shown as they are.
//! 2. Guidance: cotangent c = ∂r/∂x0 at the network's x0, pulled back through the network
//!    with `denoise_vjp` to g = (∂x0/∂x_t)ᵀc. Monte Carlo Guidance: tokens [0, shared) are
//!    common to every sample of the batch; their g is the batch mean (the expected reward
//!    over the sampled futures) and their noise draw is sample 0's.
//! 3. Tokens whose level falls take a DDIM step with ε̂ = clamp(ε, ±noise_clip) and
//!    x̂0 = x0 + scale·gain(ᾱ_t)·g (`GuidanceForm`); tokens whose level stays are not touched.

use ndarray::{s, Array2, Array3, ArrayView3, Axis};
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
    /// Tokens [0, shared_tokens) are shared by all samples (Monte Carlo Guidance).
    pub shared_tokens: usize,
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
    /// Over the last run: Σ‖ḡ − g₀‖² and Σ‖g₀‖² on the shared tokens (`mcg_shift`).
    mcg_moved: f64,
    mcg_own: f64,
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
        if !(settings.eta.is_finite() && settings.eta >= 0.0) {
            return Err(mismatch("eta", ">= 0", settings.eta));
        }
        if let GuidanceForm::Score { max_gain } = settings.guidance_form {
            if max_gain.is_nan() || max_gain <= 0.0 {
                return Err(mismatch("guidance_form.max_gain", "> 0", max_gain));
            }
        }
        if !settings.guidance_scale.is_finite() {
            return Err(mismatch("guidance_scale", "a finite number", settings.guidance_scale));
        }
        if settings.shared_tokens > shape.1 {
            return Err(mismatch(
                "shared_tokens",
                format!("<= {} tokens", shape.1),
                settings.shared_tokens,
            ));
        }
        Ok(Self {
            settings,
            alpha_bar,
            x_in: Array3::zeros(shape),
            k_in: Array2::zeros((shape.0, shape.1)),
            x0: Array3::zeros(shape),
            eps: Array3::zeros(shape),
            grad: Array3::zeros(shape),
            cotangent: Array3::zeros(shape),
            z: Array3::zeros(shape),
            mcg_moved: 0.0,
            mcg_own: 0.0,
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
        (self.mcg_moved, self.mcg_own) = (0.0, 0.0);
        on_row(0, x.view());
        let guidance = guidance.filter(|_| self.settings.guidance_scale != 0.0);
        for r in 0..rows.rows() - 1 {
            self.step(denoiser, x, rows.row(r), rows.row(r + 1), r, guidance, noise)?;
            on_row(r + 1, x.view());
        }
        Ok(())
    }

    /// How much Monte Carlo Guidance changed the guidance of the tokens all samples share,
    /// over the last run: ‖ḡ − g₀‖ / ‖g₀‖, the batch mean ḡ against sample 0's own gradient
    /// g₀ (what plain guidance would have used). Near 0, the sampled futures agree and MCG
    /// is plain guidance at N times the cost. None without MCG or guidance.
    pub fn mcg_shift(&self) -> Option<f64> {
        (self.mcg_own > 0.0).then(|| (self.mcg_moved / self.mcg_own).sqrt())
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
            g.cotangent(self.x0.view(), self.cotangent.view_mut());
            denoiser.denoise_vjp(
                self.x_in.view(),
                self.k_in.view(),
                self.cotangent.view(),
                self.x0.view_mut(),
                self.eps.view_mut(),
                self.grad.view_mut(),
            )?;
            let (moved, own) = average_shared_guidance(&mut self.grad, s.shared_tokens, |t| cur[t] != next[t]);
            self.mcg_moved += moved;
            self.mcg_own += own;
        }
        noise.fill(row, self.z.view_mut());
        share_first_sample(&mut self.z, s.shared_tokens);

        let batch = x.dim().0;
        for (token, (&t, &t_next)) in cur.iter().zip(next).enumerate() {
            if t == t_next {
                continue;
            }
            let ab_t = self.alpha_bar.at(t);
            let c = ddim_coefficients(ab_t, self.alpha_bar.at(t_next), s.eta);
            let shift = if guidance.is_some() {
                (s.guidance_scale * s.guidance_form.gain(ab_t)) as f32
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
}

/// Make tokens [0, n) identical across the batch: sample 0's value.
fn share_first_sample(a: &mut Array3<f32>, n: usize) {
    let (head, mut rest) = a.view_mut().split_at(Axis(0), 1);
    let first = head.slice(s![0, ..n, ..]);
    for mut other in rest.outer_iter_mut() {
        other.slice_mut(s![..n, ..]).assign(&first);
    }
}

/// Monte Carlo Guidance: the guidance of tokens [0, n) becomes its batch mean, the gradient of
/// the reward expected over the sampled futures. Returns Σ‖ḡ − g₀‖² and Σ‖g₀‖² over the
/// `stepping` tokens: how far averaging moved sample 0's own gradient.
fn average_shared_guidance(grad: &mut Array3<f32>, n: usize, stepping: impl Fn(usize) -> bool) -> (f64, f64) {
    let (batch, _, dim) = grad.dim();
    let (mut moved, mut own) = (0.0, 0.0);
    if batch < 2 {
        return (moved, own);
    }
    for token in 0..n {
        for d in 0..dim {
            let g0 = grad[[0, token, d]];
            let mean = (0..batch).map(|b| grad[[b, token, d]]).sum::<f32>() / batch as f32;
            for b in 0..batch {
                grad[[b, token, d]] = mean;
            }
            if stepping(token) {
                moved += f64::from(mean - g0).powi(2);
                own += f64::from(g0).powi(2);
            }
        }
    }
    (moved, own)
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

    #[test]
    fn mcg_averages_the_shared_guidance_and_measures_how_far_it_moved_sample_zero() {
        // Two samples, two shared tokens of one dimension, a third token per sample.
        let mut grad = Array3::from_shape_vec((2, 3, 1), vec![1.0, 2.0, 5.0, 3.0, 2.0, 7.0]).unwrap();
        let (moved, own) = average_shared_guidance(&mut grad, 2, |_| true);
        assert_eq!(grad.into_raw_vec_and_offset().0, vec![2.0, 2.0, 5.0, 2.0, 2.0, 7.0]);
        // Token 0: sample 0 had 1, the mean is 2; token 1: both 2.
        assert_eq!((moved, own), (1.0, 1.0 + 4.0));

        // Tokens that do not step this row (clean context) are averaged but not measured.
        let mut grad = Array3::from_shape_vec((2, 2, 1), vec![1.0, 0.0, 3.0, 0.0]).unwrap();
        assert_eq!(average_shared_guidance(&mut grad, 2, |t| t == 1), (0.0, 0.0));

        // Identical futures: MCG changes nothing.
        let mut grad = Array3::from_elem((4, 2, 3), 0.5_f32);
        assert_eq!(average_shared_guidance(&mut grad, 2, |_| true).0, 0.0);
    }
}
