//! The ONNX model: loading ONNX Runtime, choosing execution providers, reading and checking
//! the contract, and running the *denoise* / *denoise_vjp* graphs behind [`Denoiser`].
//!
//! [`Denoiser`]: crate::diffusion::Denoiser

mod contract;
mod runtime;
mod session;

use std::path::PathBuf;

use thiserror::Error;

#[cfg(test)]
pub(crate) use contract::example_json;
pub use contract::{
    CameraInput, CameraSpec, ContractError, DiffusionSpec, Field, Graphs, ModelContract, Normalization,
    Parameterization, Provenance, ScheduleName, TokenLayout, CONTRACT_MAJOR, MAX_STANDARD_DEVIATIONS, METADATA_KEY,
};
pub use runtime::{available_providers, Provider, ProviderStatus, RuntimeConfig};
pub use session::OnnxDenoiser;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model file {path}: not found")]
    MissingFile { path: PathBuf },
    #[error("ONNX Runtime library: {0}")]
    Runtime(String),
    #[error("execution provider {provider}: {reason}")]
    Provider { provider: Provider, reason: String },
    #[error("{path}: no `{METADATA_KEY}` metadata; export the model with `df-train export`")]
    NoContract { path: PathBuf },
    #[error("{path}: {source}")]
    Contract { path: PathBuf, source: ContractError },
    #[error("{path}: graph {field}: expected {expected}, got {got}")]
    Graph {
        path: PathBuf,
        field: String,
        expected: String,
        got: String,
    },
    #[error("{path}: {message}")]
    Ort { path: PathBuf, message: String },
}
