//! Reward guidance as the sampler sees it: the gradient of a reward with respect to the
//! clean-token estimate x0. The sampler pulls it back to x_t through `denoise_vjp`.

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut3, Axis};

/// How the reward gradient g = ∂r/∂x_t (through the network) moves the clean estimate:
/// x̂0 = x0 + scale · gain(ᾱ_t) · g.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(tag = "form", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuidanceForm {
    /// gain = 1 − ᾱ_t: Diffuser's mean shift (variance times gradient). Weak at high noise,
    /// where the network barely depends on x_t.
    #[default]
    MeanShift,
    /// gain = min((1 − ᾱ_t)/√ᾱ_t, max_gain): the x̂0 shift of classifier guidance on the score
    /// (ε̂ − √(1−ᾱ)·g), capped because 1/√ᾱ explodes at the noisiest levels of a cosine
    /// schedule. ε̂ stays the network's: full classifier guidance would move the step's ε̂ term
    /// too.
    Score { max_gain: f64 },
}

impl GuidanceForm {
    pub fn gain(self, ab_t: f64) -> f64 {
        match self {
            Self::MeanShift => 1.0 - ab_t,
            Self::Score { max_gain } => ((1.0 - ab_t) / ab_t.sqrt()).min(max_gain),
        }
    }
}

/// A reward of the planned tokens: the sampler hands it the window without its clean context.
pub trait Guidance {
    /// Writes ∂r/∂x0 for a reward r to maximize; `out` has the shape of `x0`.
    fn cotangent(&self, x0: ArrayView3<f32>, out: ArrayViewMut3<f32>);
    /// The reward r of one sample's planned tokens [T, D].
    fn reward(&self, sample: ArrayView2<f32>) -> f64;
}

/// r(x0) = −½ Σ_tokens Σ_d w_d (x0_d − target_d)², in normalized token space.
#[derive(Debug, Clone)]
pub struct QuadraticTarget {
    pub target: Vec<f32>,
    pub weights: Vec<f32>,
}

impl Guidance for QuadraticTarget {
    fn cotangent(&self, x0: ArrayView3<f32>, mut out: ArrayViewMut3<f32>) {
        for (x_lane, mut o_lane) in x0.lanes(Axis(2)).into_iter().zip(out.lanes_mut(Axis(2))) {
            for (d, (x, o)) in x_lane.iter().zip(o_lane.iter_mut()).enumerate() {
                *o = -self.weights[d] * (x - self.target[d]);
            }
        }
    }

    fn reward(&self, sample: ArrayView2<f32>) -> f64 {
        sample
            .lanes(Axis(1))
            .into_iter()
            .flat_map(|lane| lane.into_iter().enumerate())
            .map(|(d, x)| -0.5 * f64::from(self.weights[d] * (x - self.target[d]).powi(2)))
            .sum()
    }
}
