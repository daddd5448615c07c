//! Reward guidance as the sampler sees it: the gradient of a reward with respect to the
//! clean-token estimate x0. The sampler pulls it back to x_t through `denoise_vjp`.

use ndarray::{ArrayView3, ArrayViewMut3, Axis};

pub trait Guidance {
    /// Writes ∂r/∂x0 for a reward r to maximize; `out` has the shape of `x0`.
    fn cotangent(&self, x0: ArrayView3<f32>, out: ArrayViewMut3<f32>);
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
}
