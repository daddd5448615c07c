//! Pure diffusion math over per-token noise levels: no I/O, no ONNX.
//!
//! The sampler sees the network only through the [`Denoiser`] trait, so the ORT session, a
//! test double or another backend are interchangeable.

mod ddim;
mod denoiser;
mod guidance;
mod matrix;
mod noise;
mod sampler;
mod schedule;

pub use ddim::{ddim_coefficients, DdimCoefficients};
pub use denoiser::{DenoiseError, Denoiser};
pub use guidance::{Guidance, GuidanceForm, QuadraticTarget};
pub use matrix::{MatrixError, MatrixKind, SchedulingMatrix, TimestepRows};
pub use noise::{NoiseSource, NoiseStreams, RecordedNoise, SeededNoise, SeededStreams};
pub use sampler::{McgReport, SampleError, Sampler, SamplerSettings};
pub use schedule::{level_to_timestep, AlphaBar, ScheduleError};
