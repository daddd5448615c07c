//! Where the sampler's Gaussian draws come from: a seeded generator on the robot, or draws
//! recorded by the PyTorch reference so that a test can replay them exactly.

use ndarray::{Array3, ArrayViewMut3};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub trait NoiseSource {
    /// Fill `out` [B, T, D] with standard normal draws for the step leaving row `row`.
    fn fill(&mut self, row: usize, out: ArrayViewMut3<f32>);

    /// Fill `out` [R, T, D] with the draws for MCG redraws' windows at row `row` (asked for
    /// before that row's step).
    fn fill_redraws(&mut self, row: usize, out: ArrayViewMut3<f32>) {
        self.fill(row, out);
    }
}

/// How a seeded planner's batch draws its noise (config `planner.noise_streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseStreams {
    /// One stream for the whole batch, sample after sample: how every result before
    /// `per_sample` existed was drawn, so it stays the default.
    #[default]
    Shared,
    /// One stream per sample: sample 0 draws exactly what a one-sample planner with the same
    /// seed draws, so turning MCG on changes the executed plan by what MCG does and not by
    /// other noise (common random numbers for a paired comparison).
    PerSample,
}

/// Seeded generators: one shared, or one per index (ChaCha stream b of the seed; stream 0 is
/// what a single generator with the seed draws from).
pub struct SeededStreams {
    rngs: Vec<ChaCha8Rng>,
}

impl SeededStreams {
    /// `count` streams (at least one); one is shared by every index.
    pub fn new(seed: u64, count: usize) -> Self {
        let mut streams = Self {
            rngs: vec![ChaCha8Rng::seed_from_u64(seed); count.max(1)],
        };
        streams.reseed(seed);
        streams
    }

    /// Restart every stream from `seed`, as `new` starts them (no allocation).
    pub fn reseed(&mut self, seed: u64) {
        for (stream, rng) in self.rngs.iter_mut().enumerate() {
            *rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(stream as u64);
        }
    }

    /// The generator of index `b` (the shared one when there is one).
    pub fn rng(&mut self, b: usize) -> &mut ChaCha8Rng {
        let i = if self.rngs.len() == 1 { 0 } else { b };
        &mut self.rngs[i]
    }
}

pub struct SeededNoise {
    streams: SeededStreams,
    /// Samples in the batch: per sample, redraw r draws from stream `batch + r`.
    batch: usize,
}

impl SeededNoise {
    /// One stream for every draw.
    pub fn new(seed: u64) -> Self {
        Self {
            streams: SeededStreams::new(seed, 1),
            batch: 1,
        }
    }

    /// One stream per sample of a `batch` and per MCG redraw.
    pub fn per_sample(seed: u64, batch: usize, redraws: usize) -> Self {
        Self {
            streams: SeededStreams::new(seed, batch + redraws),
            batch,
        }
    }

    /// Restart the streams from `seed`, as the constructors start them.
    pub fn reseed(&mut self, seed: u64) {
        self.streams.reseed(seed);
    }

    fn fill_from(&mut self, first_stream: usize, mut out: ArrayViewMut3<f32>) {
        for (b, mut sample) in out.outer_iter_mut().enumerate() {
            let rng = self.streams.rng(first_stream + b);
            sample.iter_mut().for_each(|v| *v = StandardNormal.sample(&mut *rng));
        }
    }
}

impl NoiseSource for SeededNoise {
    fn fill(&mut self, _row: usize, out: ArrayViewMut3<f32>) {
        self.fill_from(0, out);
    }

    fn fill_redraws(&mut self, _row: usize, out: ArrayViewMut3<f32>) {
        self.fill_from(self.batch, out);
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array3};

    /// Rows of draws from `noise` for a batch of `batch`: [rows, batch, T, D].
    fn draws(noise: &mut SeededNoise, batch: usize, rows: usize) -> Vec<Array3<f32>> {
        (0..rows)
            .map(|row| {
                let mut z = Array3::zeros((batch, 3, 2));
                noise.fill(row, z.view_mut());
                z
            })
            .collect()
    }

    #[test]
    fn per_sample_streams_give_sample_zero_a_single_samples_draws() {
        let single = draws(&mut SeededNoise::new(7), 1, 4);
        let mut per_sample = SeededNoise::per_sample(7, 4, 0);
        let batch = draws(&mut per_sample, 4, 4);
        for (one, four) in single.iter().zip(&batch) {
            assert_eq!(one.slice(s![0, .., ..]), four.slice(s![0, .., ..]));
            // The other samples draw their own.
            assert_ne!(four.slice(s![0, .., ..]), four.slice(s![1, .., ..]));
        }
        // A shared stream gives sample 0 a single sample's draws only on the first row.
        let shared = draws(&mut SeededNoise::new(7), 4, 2);
        assert_eq!(single[0].slice(s![0, .., ..]), shared[0].slice(s![0, .., ..]));
        assert_ne!(single[1].slice(s![0, .., ..]), shared[1].slice(s![0, .., ..]));
    }

    #[test]
    fn a_per_sample_stream_of_one_draws_what_the_shared_stream_draws() {
        assert_eq!(
            draws(&mut SeededNoise::new(3), 1, 3),
            draws(&mut SeededNoise::per_sample(3, 1, 0), 1, 3)
        );
    }

    #[test]
    fn per_sample_redraws_leave_the_samples_streams_alone() {
        let single = draws(&mut SeededNoise::new(5), 1, 2);
        let mut noise = SeededNoise::per_sample(5, 1, 3);
        let mut redrawn = Array3::zeros((3, 3, 2));
        noise.fill_redraws(0, redrawn.view_mut());
        assert_eq!(draws(&mut noise, 1, 2), single);
        assert_ne!(redrawn.slice(s![0, .., ..]), single[0].slice(s![0, .., ..]));
    }
}
