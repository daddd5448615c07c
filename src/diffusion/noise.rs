//! Where the sampler's Gaussian draws come from: a seeded generator on the robot, or draws
//! recorded by the PyTorch reference so that a test can replay them exactly.

use ndarray::{Array3, ArrayViewMut3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub trait NoiseSource {
    /// Fill `out` [B, T, D] with standard normal draws for the step leaving row `row`.
    fn fill(&mut self, row: usize, out: ArrayViewMut3<f32>);
}

pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn fill(&mut self, _row: usize, mut out: ArrayViewMut3<f32>) {
        out.iter_mut().for_each(|v| *v = StandardNormal.sample(&mut self.rng));
    }
}

/// One recorded [B, T, D] draw per step.
pub struct RecordedNoise {
    pub draws: Vec<Array3<f32>>,
}

impl NoiseSource for RecordedNoise {
    fn fill(&mut self, row: usize, mut out: ArrayViewMut3<f32>) {
        out.assign(&self.draws[row]);
    }
}
