//! Shared test support: the repository root and a CPU-only model loader.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use df_planner::model::{OnnxDenoiser, Provider, RuntimeConfig};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cpu() -> RuntimeConfig {
    RuntimeConfig {
        providers: vec![Provider::Cpu],
        ..RuntimeConfig::default()
    }
}

/// Load a model given relative to the repository root.
pub fn load(rel: &Path) -> OnnxDenoiser {
    OnnxDenoiser::load(&repo().join(rel), &cpu()).unwrap_or_else(|e| panic!("{}: {e}", rel.display()))
}
