//! Where the sampler's Gaussian draws come from: a seeded generator on the robot, or draws
//! recorded by the PyTorch reference so that a test can replay them exactly.

use ndarray::{Array3, ArrayViewMut3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub trait NoiseSource {
    /// Fill `out` [B, T, D] with standard normal draws for the step leaving row `row` (or,
    /// with MCG redraws, [R, T, D] for that row's redrawn windows).
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

/// Recorded draws, served in the order the sampler asks for them: per row, the redrawn
/// windows' [R, T, D] (MCG redraws only), then the step's [B, T, D].
pub struct RecordedNoise {
    draws: std::vec::IntoIter<Array3<f32>>,
}

impl RecordedNoise {
    pub fn new(draws: Vec<Array3<f32>>) -> Self {
        Self {
            draws: draws.into_iter(),
        }
    }
}

impl NoiseSource for RecordedNoise {
    fn fill(&mut self, row: usize, mut out: ArrayViewMut3<f32>) {
        let draw = self
            .draws
            .next()
            .unwrap_or_else(|| panic!("recorded noise: no draw left for row {row}"));
        // `assign` would broadcast a [1, T, D] draw into [R, T, D]: a draw out of order.
        assert_eq!(draw.dim(), out.dim(), "recorded noise: draw shape at row {row}");
        out.assign(&draw);
    }
}
