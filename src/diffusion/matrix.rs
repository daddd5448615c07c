//! Scheduling matrices: row r gives each of H tokens a level in 0..=S (S = pure noise,
//! 0 = clean). Walking rows r -> r+1 is one denoising step. Every matrix starts all-noise,
//! ends all-clean, and no level rises along a column.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use thiserror::Error;

use super::schedule::level_to_timestep;

#[derive(Debug, Error, PartialEq)]
pub enum MatrixError {
    #[error("matrix: horizon must be >= 1, got {0}")]
    EmptyHorizon(usize),
    #[error("matrix: sampling steps must be >= 1, got {0}")]
    NoSteps(u32),
    #[error("matrix.uncertainty: expected a finite value >= 0, got {0}")]
    BadUncertainty(f64),
    #[error("matrix.kind: unknown {0:?}, expected one of pyramid, autoregressive, full_sequence, trapezoid")]
    UnknownKind(String),
}

/// How the levels of a horizon of tokens fall over the sampling steps.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MatrixKind {
    /// Token t starts denoising floor(u·t) rows after token 0: near tokens get clean first.
    Pyramid { uncertainty: f64 },
    /// One token at a time, each fully denoised before the next starts.
    Autoregressive,
    /// All tokens share one level (a conventional full-sequence diffusion model).
    FullSequence,
    /// Both ends get clean first, offsets floor(u·min(t, H-1-t)); correct for even horizons.
    Trapezoid { uncertainty: f64 },
}

impl MatrixKind {
    /// Parse a CLI name; `uncertainty` is used by pyramid and trapezoid.
    pub fn from_name(name: &str, uncertainty: f64) -> Result<Self, MatrixError> {
        match name {
            "pyramid" => Ok(Self::Pyramid { uncertainty }),
            "autoregressive" => Ok(Self::Autoregressive),
            "full_sequence" => Ok(Self::FullSequence),
            "trapezoid" => Ok(Self::Trapezoid { uncertainty }),
            other => Err(MatrixError::UnknownKind(other.to_owned())),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Pyramid { .. } => "pyramid",
            Self::Autoregressive => "autoregressive",
            Self::FullSequence => "full_sequence",
            Self::Trapezoid { .. } => "trapezoid",
        }
    }
}

impl FromStr for MatrixKind {
    type Err = MatrixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s, 1.0)
    }
}

impl fmt::Display for MatrixKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pyramid { uncertainty } | Self::Trapezoid { uncertainty } => {
                write!(f, "{}(u={uncertainty})", self.name())
            }
            _ => f.write_str(self.name()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulingMatrix {
    horizon: usize,
    steps: u32,
    levels: Vec<u32>,
}

impl SchedulingMatrix {
    pub fn build(kind: MatrixKind, horizon: usize, steps: u32) -> Result<Self, MatrixError> {
        if horizon == 0 {
            return Err(MatrixError::EmptyHorizon(horizon));
        }
        if steps == 0 {
            return Err(MatrixError::NoSteps(steps));
        }
        let levels = match kind {
            MatrixKind::FullSequence => (0..=steps)
                .rev()
                .flat_map(|l| std::iter::repeat_n(l, horizon))
                .collect(),
            MatrixKind::Autoregressive => autoregressive(horizon, steps),
            MatrixKind::Pyramid { uncertainty } => {
                let u = check_uncertainty(uncertainty)?;
                staggered(steps, (0..horizon).map(|t| (u * t as f64).floor() as u32).collect())
            }
            MatrixKind::Trapezoid { uncertainty } => {
                let u = check_uncertainty(uncertainty)?;
                let offsets = (0..horizon).map(|t| (u * t.min(horizon - 1 - t) as f64).floor() as u32);
                staggered(steps, offsets.collect())
            }
        };
        Ok(Self { horizon, steps, levels })
    }

    pub fn rows(&self) -> usize {
        self.levels.len() / self.horizon
    }

    pub fn horizon(&self) -> usize {
        self.horizon
    }

    pub fn steps(&self) -> u32 {
        self.steps
    }

    pub fn row(&self, r: usize) -> &[u32] {
        &self.levels[r * self.horizon..(r + 1) * self.horizon]
    }

    /// The same schedule for a warm start: tokens [0, carried) begin at `level` (they are
    /// re-noised previous plans), so their levels are capped there; rows that change nothing
    /// are dropped.
    pub fn capped(&self, carried: usize, level: u32) -> Self {
        let h = self.horizon;
        let mut levels: Vec<u32> = Vec::with_capacity(self.levels.len());
        for r in 0..self.rows() {
            let start = levels.len();
            levels.extend(
                self.row(r)
                    .iter()
                    .enumerate()
                    .map(|(t, &l)| if t < carried { l.min(level) } else { l }),
            );
            if start > 0 && levels[start - h..start] == levels[start..] {
                levels.truncate(start);
            }
        }
        Self {
            horizon: h,
            steps: self.steps,
            levels,
        }
    }

    /// Timesteps for a window of `context` clean tokens followed by this matrix's horizon.
    pub fn to_timesteps(&self, context: usize, timesteps: usize) -> TimestepRows {
        let tokens = context + self.horizon;
        let mut data = Vec::with_capacity(self.rows() * tokens);
        for r in 0..self.rows() {
            data.extend(std::iter::repeat_n(-1, context));
            data.extend(self.row(r).iter().map(|&m| level_to_timestep(m, timesteps, self.steps)));
        }
        TimestepRows { tokens, data }
    }
}

fn check_uncertainty(u: f64) -> Result<f64, MatrixError> {
    if u.is_finite() && u >= 0.0 {
        Ok(u)
    } else {
        Err(MatrixError::BadUncertainty(u))
    }
}

fn autoregressive(horizon: usize, steps: u32) -> Vec<u32> {
    let mut row = vec![steps; horizon];
    let mut levels = row.clone();
    for token in 0..horizon {
        for level in (0..steps).rev() {
            row[token] = level;
            levels.extend_from_slice(&row);
        }
    }
    levels
}

/// Token t starts `offsets[t]` rows late and then falls one level per row. With u > 1 and
/// few steps a row can repeat the previous one; it is dropped (a network call for nothing).
fn staggered(steps: u32, offsets: Vec<u32>) -> Vec<u32> {
    let horizon = offsets.len();
    let height = steps + offsets.iter().copied().max().unwrap_or(0) + 1;
    let mut levels: Vec<u32> = Vec::with_capacity(height as usize * horizon);
    for m in 0..height {
        let start = levels.len();
        levels.extend(offsets.iter().map(|&o| (steps + o).saturating_sub(m).min(steps)));
        if start > 0 && levels[start - horizon..start] == levels[start..] {
            levels.truncate(start);
        }
    }
    levels
}

/// Per-row timesteps (-1 = clean) of a whole token window, context included.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestepRows {
    tokens: usize,
    data: Vec<i64>,
}

impl TimestepRows {
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.tokens
    }

    pub fn row(&self, r: usize) -> &[i64] {
        &self.data[r * self.tokens..(r + 1) * self.tokens]
    }

    /// Rows `first..first + n`: a part of the schedule to sample on its own (parity tests
    /// step one row from a reference state).
    pub fn window(&self, first: usize, n: usize) -> Self {
        Self {
            tokens: self.tokens,
            data: self.data[first * self.tokens..(first + n) * self.tokens].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> Vec<MatrixKind> {
        let mut kinds = vec![MatrixKind::Autoregressive, MatrixKind::FullSequence];
        for u in [0.0, 0.5, 1.0, 1.5, 3.0] {
            kinds.push(MatrixKind::Pyramid { uncertainty: u });
            kinds.push(MatrixKind::Trapezoid { uncertainty: u });
        }
        kinds
    }

    #[test]
    fn every_matrix_starts_noisy_ends_clean_and_never_rises() {
        for kind in kinds() {
            for horizon in 1..=9 {
                for steps in [1, 2, 5, 10] {
                    let m = SchedulingMatrix::build(kind, horizon, steps).unwrap();
                    let ctx = format!("{kind} H={horizon} S={steps}");
                    assert!(m.row(0).iter().all(|&l| l == steps), "{ctx}: first row not all noise");
                    assert!(
                        m.row(m.rows() - 1).iter().all(|&l| l == 0),
                        "{ctx}: last row not all clean"
                    );
                    for r in 1..m.rows() {
                        let (prev, cur) = (m.row(r - 1), m.row(r));
                        assert!(
                            prev.iter().zip(cur).all(|(p, c)| c <= p),
                            "{ctx}: level rises at row {r}"
                        );
                        assert!(prev != cur, "{ctx}: row {r} changes nothing");
                    }
                }
            }
        }
    }

    #[test]
    fn pyramid_matches_the_paper_shape() {
        let m = SchedulingMatrix::build(MatrixKind::Pyramid { uncertainty: 1.0 }, 3, 2).unwrap();
        let rows: Vec<&[u32]> = (0..m.rows()).map(|r| m.row(r)).collect();
        assert_eq!(
            rows,
            vec![&[2, 2, 2][..], &[1, 2, 2], &[0, 1, 2], &[0, 0, 1], &[0, 0, 0]]
        );
    }

    #[test]
    fn trapezoid_denoises_every_token_of_an_even_horizon() {
        let m = SchedulingMatrix::build(MatrixKind::Trapezoid { uncertainty: 1.0 }, 4, 2).unwrap();
        let rows: Vec<&[u32]> = (0..m.rows()).map(|r| m.row(r)).collect();
        assert_eq!(
            rows,
            vec![&[2, 2, 2, 2][..], &[1, 2, 2, 1], &[0, 1, 1, 0], &[0, 0, 0, 0]]
        );
    }

    #[test]
    fn autoregressive_and_full_sequence_row_counts() {
        let ar = SchedulingMatrix::build(MatrixKind::Autoregressive, 4, 5).unwrap();
        assert_eq!(ar.rows(), 4 * 5 + 1);
        let fs = SchedulingMatrix::build(MatrixKind::FullSequence, 4, 5).unwrap();
        assert_eq!(fs.rows(), 6);
    }

    #[test]
    fn capped_matrix_starts_carried_tokens_at_the_warm_level() {
        let m = SchedulingMatrix::build(MatrixKind::Pyramid { uncertainty: 1.0 }, 3, 4).unwrap();
        let w = m.capped(2, 2);
        assert_eq!(w.row(0), &[2, 2, 4]);
        assert_eq!(w.row(w.rows() - 1), &[0, 0, 0]);
        for r in 1..w.rows() {
            assert!(w.row(r).iter().zip(w.row(r - 1)).all(|(a, b)| a <= b) && w.row(r) != w.row(r - 1));
        }
        assert!(w.rows() < m.rows());
    }

    #[test]
    fn timesteps_prefix_clean_context() {
        let m = SchedulingMatrix::build(MatrixKind::FullSequence, 2, 2).unwrap();
        let t = m.to_timesteps(1, 10);
        assert_eq!(t.row(0), &[-1, 9, 9]);
        assert_eq!(t.row(1), &[-1, 4, 4]);
        assert_eq!(t.row(2), &[-1, -1, -1]);
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            SchedulingMatrix::build(MatrixKind::FullSequence, 0, 3),
            Err(MatrixError::EmptyHorizon(0))
        );
        assert_eq!(
            SchedulingMatrix::build(MatrixKind::FullSequence, 2, 0),
            Err(MatrixError::NoSteps(0))
        );
        let bad = SchedulingMatrix::build(MatrixKind::Pyramid { uncertainty: f64::NAN }, 2, 2);
        assert!(matches!(bad, Err(MatrixError::BadUncertainty(_))));
        assert_eq!(
            MatrixKind::from_name("zigzag", 1.0).unwrap_err().to_string(),
            "matrix.kind: unknown \"zigzag\", expected one of pyramid, autoregressive, full_sequence, trapezoid"
        );
    }
}
