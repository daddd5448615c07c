//! The cumulative signal fraction ᾱ_t over training timesteps t = 0..K-1.
//!
//! Timestep -1 is clean data (ᾱ = 1); the network never sees it (clean tokens are presented
//! at the stabilization level, see `Sampler`).

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum ScheduleError {
    #[error("diffusion.alphas_cumprod: expected at least 1 entry, got 0")]
    Empty,
    #[error("diffusion.alphas_cumprod[{index}]: expected a value in (0, 1), got {value}")]
    OutOfRange { index: usize, value: f64 },
    #[error("diffusion.alphas_cumprod[{index}]: expected strictly decreasing values, got {value} after {previous}")]
    NotDecreasing { index: usize, value: f64, previous: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlphaBar {
    table: Vec<f64>,
}

impl AlphaBar {
    pub fn new(table: Vec<f64>) -> Result<Self, ScheduleError> {
        if table.is_empty() {
            return Err(ScheduleError::Empty);
        }
        for (index, &value) in table.iter().enumerate() {
            if !(value > 0.0 && value < 1.0) {
                return Err(ScheduleError::OutOfRange { index, value });
            }
            if index > 0 && value >= table[index - 1] {
                let previous = table[index - 1];
                return Err(ScheduleError::NotDecreasing { index, value, previous });
            }
        }
        Ok(Self { table })
    }

    /// K, the number of training timesteps.
    pub fn timesteps(&self) -> usize {
        self.table.len()
    }

    /// ᾱ at timestep `t` in -1..K-1 (-1 = clean).
    pub fn at(&self, t: i64) -> f64 {
        if t < 0 {
            1.0
        } else {
            self.table[t as usize]
        }
    }
}

/// Scheduling-matrix level `m` in 0..=S (0 = clean, S = pure noise) to a timestep in -1..K-1.
/// Integer arithmetic, so that the Rust and PyTorch samplers agree exactly.
pub fn level_to_timestep(level: u32, timesteps: usize, sampling_steps: u32) -> i64 {
    (i64::from(level) * timesteps as i64) / i64::from(sampling_steps) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_onto_the_full_timestep_range() {
        assert_eq!(level_to_timestep(0, 1000, 50), -1);
        assert_eq!(level_to_timestep(50, 1000, 50), 999);
        assert_eq!(level_to_timestep(1, 1000, 50), 19);
        assert_eq!(level_to_timestep(3, 10, 4), 6);
    }

    #[test]
    fn rejects_tables_that_are_not_a_schedule() {
        assert_eq!(AlphaBar::new(vec![]), Err(ScheduleError::Empty));
        assert!(matches!(
            AlphaBar::new(vec![0.9, 1.0]),
            Err(ScheduleError::OutOfRange { index: 1, .. })
        ));
        assert!(matches!(
            AlphaBar::new(vec![0.9, 0.95]),
            Err(ScheduleError::NotDecreasing { index: 1, .. })
        ));
        let ab = AlphaBar::new(vec![0.99, 0.5, 0.01]).unwrap();
        assert_eq!(ab.at(-1), 1.0);
        assert_eq!(ab.at(2), 0.01);
        assert_eq!(ab.timesteps(), 3);
    }
}
