//! The network as the sampler sees it: a denoiser conditioned on per-token noise levels.

use ndarray::{ArrayView1, ArrayView2, ArrayView3, ArrayView5, ArrayViewMut3};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DenoiseError {
    #[error("denoiser backend: {0}")]
    Backend(String),
    #[error("guidance needs the denoise_vjp graph, which this model does not provide ({0})")]
    NoVjp(String),
    #[error("this model has no camera inputs: it takes no images")]
    NoCameras,
    #[error("camera inputs `{field}`: expected {expected}, got {got}")]
    Images {
        field: &'static str,
        expected: String,
        got: String,
    },
    #[error("denoiser output `{name}`: expected shape {expected:?}, got {got:?}")]
    OutputShape {
        name: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
}

/// A Diffusion Forcing denoiser over tokens `x_t` [B, T, D] at timesteps `k` [B, T] (0..K-1).
pub trait Denoiser {
    /// D, floats per token.
    fn token_dim(&self) -> usize;
    /// The longest window the network accepts.
    fn max_tokens(&self) -> usize;
    /// Writes the clean-token estimate x0 and the noise estimate eps.
    fn denoise(
        &mut self,
        x_t: ArrayView3<f32>,
        k: ArrayView2<i64>,
        x0: ArrayViewMut3<f32>,
        eps: ArrayViewMut3<f32>,
    ) -> Result<(), DenoiseError>;
    /// Camera models only: the images the window's tokens see in the calls that follow,
    /// `images` `[T, cameras, H, W, 3]` in [0, 1] and their image `levels` `[T]` (0 clean, higher
    /// noisier; `cameras.image_levels` for a token without images: the future).
    fn set_images(&mut self, images: ArrayView5<f32>, levels: ArrayView1<i64>) -> Result<(), DenoiseError> {
        let _ = (images, levels);
        Err(DenoiseError::NoCameras)
    }
    /// As `denoise`, plus `grad` = (∂x0/∂x_t)ᵀ · cotangent through the network.
    fn denoise_vjp(
        &mut self,
        x_t: ArrayView3<f32>,
        k: ArrayView2<i64>,
        cotangent: ArrayView3<f32>,
        x0: ArrayViewMut3<f32>,
        eps: ArrayViewMut3<f32>,
        grad: ArrayViewMut3<f32>,
    ) -> Result<(), DenoiseError>;
}
