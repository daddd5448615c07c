//! The goal reward: be at the goal during the plan. Its gradient with respect to the
//! network's clean-token estimate is computed here (nalgebra) and pulled back through the
//! network by the sampler (`denoise_vjp`).
//!
//! Per planned frame f, with position p_f (physical units, from the token's observation) and
//! distance d_f = ‖p_f − g‖, a closeness s_f, squashed into [0, 1] or not:
//!   gaussian: s_f = exp(−d_f² / 2σ²)        tanh: s_f = 1 − tanh(d_f / σ)
//!   linear:   s_f = −d_f / σ                (the paper branch of the official code: its pull
//!                                           does not fade with distance)
//! and l_f = γ^f · s_f aggregated over the plan's steps:
//!   mean:     r = weight · (1/F) Σ_f l_f            (every step counts: get there early and
//!                                                   stay; the official `main` branch's maze
//!                                                   guidance is this with tanh and σ = 2 in
//!                                                   normalized coordinates, 2 std per axis)
//!   soft_max: r = weight · τ ln Σ_f exp(l_f / τ)    (reach the goal at any one step)
//! The gradient ∂r/∂p_f = weight · ∂r/∂l_f · γ^f · ∂s_f/∂p_f is chained through the
//! normalization (x = (p − mean)/std) to the normalized token.

use nalgebra::Vector2;
use ndarray::{ArrayView2, ArrayView3, ArrayViewMut3};

use crate::diffusion::Guidance;
use crate::model::{Field, ModelContract};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Squash {
    Gaussian,
    Tanh,
    Linear,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Aggregate {
    Mean,
    SoftMax { temperature: f64 },
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalRewardConfig {
    /// Observation indices of the (x, y) position.
    pub position_dims: [usize; 2],
    /// gaussian, tanh or linear (the formulas above).
    pub squash: Squash,
    /// Distance scale σ of the squashing (physical units).
    pub sigma: f64,
    pub aggregate: Aggregate,
    /// Per-step discount γ (< 1 prefers reaching early).
    #[serde(default = "one")]
    pub discount: f64,
    #[serde(default = "one")]
    pub weight: f64,
    /// The goal (x, y) the robot node plans toward: `run`, `replay` and `bench --config` guide
    /// their plans to it until a goal arrives on `topics.goal`. `serve` ignores it: each
    /// episode's reset names its goal. None: the node plans without guidance until then.
    #[serde(default)]
    pub target: Option<[f64; 2]>,
    /// The robot node reports its goal reached (diagnostics `goal_reached`, and the log once
    /// per goal) from the first state within this distance of it; D4RL counts 0.5. None: no
    /// such report.
    #[serde(default)]
    pub reached_within: Option<f64>,
}

fn one() -> f64 {
    1.0
}

pub struct GoalReward {
    cfg: GoalRewardConfig,
    goal: Vector2<f64>,
    /// Offsets of x and y inside a frame, and their normalization.
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
        let temperature = match cfg.aggregate {
            Aggregate::SoftMax { temperature } => temperature,
            Aggregate::Mean => 1.0,
        };
        for (name, v) in [
            ("goal.sigma", cfg.sigma),
            ("goal.aggregate.temperature", temperature),
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

    /// The observation indices of the (x, y) position.
    pub fn position_dims(&self) -> [usize; 2] {
        self.cfg.position_dims
    }

    fn position(&self, token: &[f32], frame: usize) -> Vector2<f64> {
        let at = |i: usize| f64::from(token[frame * self.frame_dim + self.offsets[i]]) * self.std[i] + self.mean[i];
        Vector2::new(at(0), at(1))
    }

    /// (s, ∂s/∂p) at position p.
    fn squash(&self, p: &Vector2<f64>) -> (f64, Vector2<f64>) {
        let (sigma, delta) = (self.cfg.sigma, self.goal - p);
        let d = delta.norm();
        match self.cfg.squash {
            Squash::Gaussian => {
                let s = (-d * d / (2.0 * sigma * sigma)).exp();
                (s, delta * (s / (sigma * sigma)))
            }
            Squash::Tanh => {
                let t = (d / sigma).tanh();
                let slope = if d > 0.0 { (1.0 - t * t) / (sigma * d) } else { 0.0 };
                (1.0 - t, delta * slope)
            }
            Squash::Linear => {
                let slope = if d > 0.0 { 1.0 / (sigma * d) } else { 0.0 };
                (-d / sigma, delta * slope)
            }
        }
    }

    /// (l_f, ∂l_f/∂p_f) for every planned frame of one sample.
    fn frames<'a>(&'a self, sample: &'a ArrayView2<'a, f32>) -> impl Iterator<Item = (f64, Vector2<f64>)> + Clone + 'a {
        sample.outer_iter().enumerate().flat_map(move |(j, token)| {
            (0..self.frame_stack).map(move |f| {
                let p = self.position(token.as_slice().expect("tokens are contiguous"), f);
                self.frame(j * self.frame_stack + f, &p)
            })
        })
    }

    /// (l_f, ∂l_f/∂p_f) of planned frame f at position p.
    fn frame(&self, f: usize, p: &Vector2<f64>) -> (f64, Vector2<f64>) {
        let (s, ds) = self.squash(p);
        let discount = self.cfg.discount.powi(f as i32);
        (discount * s, ds * discount)
    }

    /// The aggregate of the logits l_f, in passes over them (`logits` is iterated once more
    /// for the soft max's normalizer) so that neither the reward nor its gradient allocates.
    fn aggregated(&self, logits: impl Iterator<Item = f64> + Clone) -> Aggregated {
        match self.cfg.aggregate {
            Aggregate::Mean => {
                let (sum, count) = logits.fold((0.0, 0.0), |(sum, count), l| (sum + l, count + 1.0));
                Aggregated::Mean { sum, count }
            }
            Aggregate::SoftMax { temperature } => {
                let max = logits.clone().fold(f64::NEG_INFINITY, f64::max);
                let total = logits.map(|l| ((l - max) / temperature).exp()).sum();
                Aggregated::SoftMax {
                    max,
                    total,
                    temperature,
                }
            }
        }
    }

    /// The reward of a path the planner did not plan: one position (physical units) per
    /// frame, as if they were a plan's planned frames (`serve`'s score_path).
    pub fn path_reward(&self, positions: &[[f64; 2]]) -> f64 {
        let logits = positions
            .iter()
            .enumerate()
            .map(|(f, &p)| self.frame(f, &Vector2::from(p)).0);
        self.cfg.weight * self.aggregated(logits).value()
    }
}

/// The logits l_f aggregated: r / weight, and what ∂r/∂l_f needs.
enum Aggregated {
    Mean { sum: f64, count: f64 },
    SoftMax { max: f64, total: f64, temperature: f64 },
}

impl Aggregated {
    /// r / weight.
    fn value(&self) -> f64 {
        match *self {
            Self::Mean { sum, count } => sum / count,
            Self::SoftMax {
                max,
                total,
                temperature,
            } => max + temperature * total.ln(),
        }
    }

    /// ∂r/∂l / weight of a frame with logit l.
    fn slope(&self, l: f64) -> f64 {
        match *self {
            Self::Mean { count, .. } => 1.0 / count,
            Self::SoftMax {
                max,
                total,
                temperature,
            } => ((l - max) / temperature).exp() / total,
        }
    }
}

impl Guidance for GoalReward {
    /// The reward of one sample's planned tokens.
    fn reward(&self, sample: ArrayView2<f32>) -> f64 {
        self.cfg.weight * self.aggregated(self.frames(&sample).map(|(l, _)| l)).value()
    }

    fn cotangent(&self, x0: ArrayView3<f32>, mut out: ArrayViewMut3<f32>) {
        out.fill(0.0);
        for (b, sample) in x0.outer_iter().enumerate() {
            let aggregated = self.aggregated(self.frames(&sample).map(|(l, _)| l));
            for (f, (l, dl)) in self.frames(&sample).enumerate() {
                let grad_p = dl * (self.cfg.weight * aggregated.slope(l));
                let (token, frame) = (f / self.frame_stack, f % self.frame_stack);
                for i in 0..2 {
                    out[[b, token, frame * self.frame_dim + self.offsets[i]]] = (grad_p[i] * self.std[i]) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// A goal reward over position dims (0, 1), without a target.
    pub(crate) fn config(squash: Squash, aggregate: Aggregate) -> GoalRewardConfig {
        GoalRewardConfig {
            position_dims: [0, 1],
            squash,
            sigma: 0.7,
            aggregate,
            discount: 0.9,
            weight: 2.0,
            target: None,
            reached_within: None,
        }
    }

    #[test]
    fn cotangent_is_the_gradient_of_the_reward() {
        for squash in [Squash::Gaussian, Squash::Tanh, Squash::Linear] {
            for aggregate in [Aggregate::Mean, Aggregate::SoftMax { temperature: 0.2 }] {
                let reward = GoalReward::new(config(squash, aggregate), &contract(), [0.5, -0.8]).unwrap();
                let mut x = Array3::<f32>::zeros((2, 3, 12));
                for (i, v) in x.iter_mut().enumerate() {
                    *v = ((i * 37 % 23) as f32 / 23.0 - 0.5) * 1.5;
                }
                let mut grad = Array3::<f32>::zeros(x.dim());
                reward.cotangent(x.view(), grad.view_mut());
                for b in 0..2 {
                    for idx in [(0, 3), (1, 2), (1, 3), (1, 8), (2, 9), (2, 0)] {
                        let h = 1e-3;
                        let at = |delta: f32| {
                            let mut y = x.clone();
                            y[[b, idx.0, idx.1]] += delta;
                            reward.reward(y.slice(ndarray::s![b, .., ..]))
                        };
                        let numeric = (at(h) - at(-h)) / (2.0 * f64::from(h));
                        let analytic = f64::from(grad[[b, idx.0, idx.1]]);
                        assert!(
                            (numeric - analytic).abs() < 1e-3 * (1.0 + numeric.abs()),
                            "{squash:?} {aggregate:?} {b} {idx:?}: {numeric} vs {analytic}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_path_scores_as_the_plan_through_its_positions() {
        let contract = contract();
        for squash in [Squash::Gaussian, Squash::Tanh, Squash::Linear] {
            for aggregate in [Aggregate::Mean, Aggregate::SoftMax { temperature: 0.2 }] {
                let reward = GoalReward::new(config(squash, aggregate), &contract, [0.5, -0.8]).unwrap();
                let mut x = Array3::<f32>::zeros((1, 3, 12));
                for (i, v) in x.iter_mut().enumerate() {
                    *v = ((i * 37 % 23) as f32 / 23.0 - 0.5) * 1.5;
                }
                let sample = x.slice(ndarray::s![0, .., ..]);
                // The planned frames' positions (the sampler hands the reward no context).
                let positions: Vec<[f64; 2]> = (0..3)
                    .flat_map(|token| (0..2).map(move |f| (token, f)))
                    .map(|(token, f)| {
                        let p = reward.position(sample.row(token).as_slice().unwrap(), f);
                        [p.x, p.y]
                    })
                    .collect();
                let (path, plan) = (reward.path_reward(&positions), reward.reward(sample.view()));
                assert!((path - plan).abs() < 1e-9, "{squash:?} {aggregate:?}: {path} vs {plan}");
            }
        }
    }

    #[test]
    fn bad_settings_are_named() {
        let mut cfg = config(Squash::Tanh, Aggregate::Mean);
        cfg.position_dims = [0, 4];
        let err = GoalReward::new(cfg, &contract(), [0.0, 0.0]).err().unwrap();
        assert_eq!(
            err,
            "goal.position_dims: expected indices < observation_dim = 4, got [0, 4]"
        );
        let cfg = config(Squash::Tanh, Aggregate::SoftMax { temperature: 0.0 });
        let err = GoalReward::new(cfg, &contract(), [0.0, 0.0]).err().unwrap();
        assert_eq!(err, "goal.aggregate.temperature: expected a finite number > 0, got 0");
    }
}
