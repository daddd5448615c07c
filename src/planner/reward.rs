//! The goal reward: reach the goal at any step of the plan. Its gradient with respect to the
//! network's clean-token estimate is computed here (nalgebra) and pulled back through the
//! network by the sampler (`denoise_vjp`).
//!
//! Per planned frame f, with position p_f (physical units, from the token's observation):
//!   s_f = exp(−‖p_f − g‖² / 2σ²)                    (squashed distance, in (0, 1])
//!   r   = weight · τ · ln Σ_f exp(γ^f s_f / τ)      (soft maximum over the plan's steps)
//! so ∂r/∂p_f = weight · softmax_f(γ^f s/τ) · γ^f · s_f · (g − p_f)/σ², chained through the
//! normalization (x = (p − mean)/std) to the normalized token.

use nalgebra::Vector2;
use ndarray::{ArrayView3, ArrayViewMut3};

use crate::diffusion::Guidance;
use crate::model::{Field, ModelContract};

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalRewardConfig {
    /// Observation indices of the (x, y) position.
    pub position_dims: [usize; 2],
    /// Distance scale σ of the squashing (physical units).
    pub sigma: f64,
    /// Soft-maximum temperature τ (small: the best step dominates).
    pub temperature: f64,
    /// Per-step discount γ (< 1 prefers reaching early).
    #[serde(default = "one")]
    pub discount: f64,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

pub struct GoalReward {
    cfg: GoalRewardConfig,
    goal: Vector2<f64>,
    /// Offsets inside a frame of x and y, frame stack and frame size.
    offsets: [usize; 2],
    mean: [f64; 2],
    std: [f64; 2],
    frame_stack: usize,
    frame_dim: usize,
}

impl GoalReward {
    pub fn new(cfg: GoalRewardConfig, contract: &ModelContract, goal: [f64; 2]) -> Result<Self, String> {
        let l = &contract.layout;
        if cfg.position_dims.iter().any(|&d| d >= l.observation_dim) {
            return Err(format!(
                "goal.position_dims: expected indices < observation_dim = {}, got {:?}",
                l.observation_dim, cfg.position_dims
            ));
        }
        for (name, v) in [
            ("goal.sigma", cfg.sigma),
            ("goal.temperature", cfg.temperature),
            ("goal.discount", cfg.discount),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name}: expected a finite number > 0, got {v}"));
            }
        }
        let obs = l.offset(Field::Observation).expect("layout has observations");
        let offsets = cfg.position_dims.map(|d| obs + d);
        let n = &contract.normalization;
        Ok(Self {
            goal: Vector2::new(goal[0], goal[1]),
            mean: offsets.map(|o| n.mean[o]),
            std: offsets.map(|o| n.std[o]),
            offsets,
            frame_stack: l.frame_stack,
            frame_dim: l.frame_dim,
            cfg,
        })
    }

    pub fn set_goal(&mut self, goal: [f64; 2]) {
        self.goal = Vector2::new(goal[0], goal[1]);
    }

    fn position(&self, token: &[f32], frame: usize) -> Vector2<f64> {
        let at = |i: usize| f64::from(token[frame * self.frame_dim + self.offsets[i]]) * self.std[i] + self.mean[i];
        Vector2::new(at(0), at(1))
    }

    /// The reward of one sample's planned tokens (token 0 is the context and does not count).
    pub fn reward(&self, sample: &ndarray::ArrayView2<f32>) -> f64 {
        let c = &self.cfg;
        let logits: Vec<f64> = self
            .frame_positions(sample)
            .map(|(f, p)| c.discount.powi(f as i32) * self.squash(&p) / c.temperature)
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        c.weight * c.temperature * (max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln())
    }

    fn squash(&self, p: &Vector2<f64>) -> f64 {
        (-(p - self.goal).norm_squared() / (2.0 * self.cfg.sigma * self.cfg.sigma)).exp()
    }

    /// (planned frame index, position) over the planned tokens of one sample.
    fn frame_positions<'a>(
        &'a self,
        sample: &'a ndarray::ArrayView2<'a, f32>,
    ) -> impl Iterator<Item = (usize, Vector2<f64>)> + 'a {
        sample.outer_iter().skip(1).enumerate().flat_map(move |(j, token)| {
            (0..self.frame_stack).map(move |f| {
                (
                    j * self.frame_stack + f,
                    self.position(token.as_slice().expect("tokens are contiguous"), f),
                )
            })
        })
    }
}

impl Guidance for GoalReward {
    fn cotangent(&self, x0: ArrayView3<f32>, mut out: ArrayViewMut3<f32>) {
        out.fill(0.0);
        let c = &self.cfg;
        let mut scores = Vec::new();
        let mut logits = Vec::new();
        for (b, sample) in x0.outer_iter().enumerate() {
            scores.clear();
            logits.clear();
            for (f, p) in self.frame_positions(&sample) {
                let s = self.squash(&p);
                scores.push((p, s));
                logits.push(c.discount.powi(f as i32) * s / c.temperature);
            }
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            for (f, ((p, s), l)) in scores.iter().zip(&logits).enumerate() {
                let w = ((l - max).exp() / total) * c.discount.powi(f as i32);
                let grad_p = (self.goal - p) * (c.weight * w * s / (c.sigma * c.sigma));
                let (token, frame) = (1 + f / self.frame_stack, f % self.frame_stack);
                for i in 0..2 {
                    out[[b, token, frame * self.frame_dim + self.offsets[i]]] = (grad_p[i] * self.std[i]) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelContract;
    use ndarray::Array3;

    fn contract() -> ModelContract {
        let json = serde_json::json!({
            "contract_version": "1.0",
            "graphs": {"denoise": "m.onnx", "denoise_vjp": null},
            "layout": {"observation_dim": 4, "action_dim": 2, "frame_stack": 2, "reward": false,
                       "field_order": ["action", "observation"], "frame_dim": 6, "token_dim": 12},
            "normalization": {"mean": [0.0, 0.0, 1.0, -1.0, 0.0, 0.0], "std": [1.0, 1.0, 2.0, 0.5, 1.0, 1.0]},
            "diffusion": {"timesteps": 2, "schedule": "cosine", "alphas_cumprod": [0.9, 0.1],
                          "parameterization": "v", "stabilization_level": 0, "noise_clip": 6.0},
            "max_tokens": 4, "causal": true, "cond_dim": 0,
            "provenance": {"dataset_sha256": "", "train_steps": 0, "git_commit": "", "exported_at": "", "torch": ""}
        });
        ModelContract::from_json(&json.to_string()).unwrap()
    }

    #[test]
    fn cotangent_is_the_gradient_of_the_reward() {
        let cfg = GoalRewardConfig {
            position_dims: [0, 1],
            sigma: 0.7,
            temperature: 0.2,
            discount: 0.9,
            weight: 2.0,
        };
        let reward = GoalReward::new(cfg, &contract(), [0.5, -0.8]).unwrap();
        let mut x = Array3::<f32>::zeros((2, 3, 12));
        for (i, v) in x.iter_mut().enumerate() {
            *v = ((i * 37 % 23) as f32 / 23.0 - 0.5) * 1.5;
        }
        let mut grad = Array3::<f32>::zeros(x.dim());
        reward.cotangent(x.view(), grad.view_mut());
        assert!(
            grad.slice(ndarray::s![.., 0, ..]).iter().all(|&g| g == 0.0),
            "the context token gets no gradient"
        );
        for b in 0..2 {
            for idx in [(1, 2), (1, 3), (1, 8), (2, 9), (2, 0)] {
                let h = 1e-3;
                let at = |delta: f32| {
                    let mut y = x.clone();
                    y[[b, idx.0, idx.1]] += delta;
                    reward.reward(&y.slice(ndarray::s![b, .., ..]))
                };
                let numeric = (at(h) - at(-h)) / (2.0 * f64::from(h));
                let analytic = f64::from(grad[[b, idx.0, idx.1]]);
                assert!(
                    (numeric - analytic).abs() < 1e-3 * (1.0 + numeric.abs()),
                    "{b} {idx:?}: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let cfg = GoalRewardConfig {
            position_dims: [0, 4],
            sigma: 1.0,
            temperature: 1.0,
            discount: 1.0,
            weight: 1.0,
        };
        let err = GoalReward::new(cfg, &contract(), [0.0, 0.0]).err().unwrap();
        assert_eq!(
            err,
            "goal.position_dims: expected indices < observation_dim = 4, got [0, 4]"
        );
    }
}
