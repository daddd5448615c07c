//! ONNX Runtime as a shared library (ort `load-dynamic`) and execution-provider selection.
//!
//! The library is found from the config, else `ORT_DYLIB_PATH` (scripts/setup.sh points it
//! at the PyPI wheel's copy). Providers are tried in the configured order; each result is
//! reported through tracing. With `require_providers`, a provider that cannot be registered
//! is an error instead of a silent fall back to the next one.

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use serde::Deserialize;

use super::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tensorrt => "tensorrt",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        })
    }
}

impl Provider {
    /// The name ONNX Runtime uses for this provider.
    pub fn ort_name(self) -> &'static str {
        match self {
            Self::Tensorrt => "TensorrtExecutionProvider",
            Self::Cuda => "CUDAExecutionProvider",
            Self::Cpu => "CPUExecutionProvider",
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tensorrt" => Ok(Self::Tensorrt),
            "cuda" => Ok(Self::Cuda),
            "cpu" => Ok(Self::Cpu),
            other => Err(format!(
                "provider: unknown {other:?}, expected one of tensorrt, cuda, cpu"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Path of libonnxruntime.so; empty means the ORT_DYLIB_PATH environment variable.
    pub onnxruntime_library: Option<PathBuf>,
    /// Execution providers in order of preference; CPU is always the last resort.
    pub providers: Vec<Provider>,
    /// Fail instead of falling back when a listed provider cannot be registered.
    pub require_providers: bool,
    /// ORT intra-op threads (0 = ORT's default).
    pub intra_threads: usize,
    /// Let the intra-op worker threads spin-wait between operators (ORT's own default) rather
    /// than sleep. Off by default: on a robot they share the cores with the control tick, and
    /// with 2 threads on 2 cores spinning doubled the live plan time (README, "Measured").
    pub intra_spinning: bool,
}

impl RuntimeConfig {
    /// The intra-op threads ORT is asked for: `intra_threads` capped at this machine's cores, since
    /// more only slow inference down, and a slip such as 100000 left ORT's session builder
    /// spawning threads for minutes. 0 stays 0 (ORT's default).
    pub fn intra_threads_capped(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.intra_threads.min(cores)
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            onnxruntime_library: None,
            providers: vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            require_providers: false,
            intra_threads: 1,
            intra_spinning: false,
        }
    }
}

/// Whether a provider is compiled into this binary and present in the loaded ORT build.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderStatus {
    pub provider: Provider,
    pub compiled: bool,
    pub in_runtime: bool,
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// The process-wide ORT environment, created on first use.
pub(crate) fn environment(cfg: &RuntimeConfig) -> Result<&'static Environment, ModelError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    // An empty ORT_DYLIB_PATH is unset (the launch files pass their argument's empty default).
    let from_env = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty());
    let path = match (&cfg.onnxruntime_library, from_env) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => setup_venv_library().ok_or_else(|| {
            ModelError::Runtime(
                "not found: set runtime.onnxruntime_library or ORT_DYLIB_PATH to libonnxruntime.so \
                 (scripts/setup.sh installs it from the PyPI onnxruntime wheel)"
                    .into(),
            )
        })?,
    };
    if !path.is_file() {
        return Err(ModelError::Runtime(format!("{}: no such file", path.display())));
    }
    // Never build an ort::Error after a failed load: that would make ort load its default
    // library and panic. Keep the load error as text.
    let builder = ort::init_from(&path).map_err(|e| ModelError::Runtime(e.to_string()))?;
    let env = builder
        .with_name("df_planner")
        .with_telemetry(false)
        .build()
        .map_err(|e| ModelError::Runtime(format!("{}: {e}", path.display())))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// The library from the PyPI wheel in the virtualenv that scripts/setup.sh makes
/// ($DF_VENV, else ~/.cache/df_planner/venv), so the installed binary runs without set-up.
fn setup_venv_library() -> Option<PathBuf> {
    let venv = std::env::var_os("DF_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/df_planner/venv")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|python| python.path().join("site-packages/onnxruntime/capi"))
        .filter_map(|capi| std::fs::read_dir(capi).ok())
        .flat_map(|dir| dir.flatten().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Providers compiled into this binary and present in the loaded runtime.
pub fn available_providers(cfg: &RuntimeConfig) -> Result<Vec<ProviderStatus>, ModelError> {
    environment(cfg)?;
    let in_runtime = runtime_provider_names()?;
    Ok([Provider::Tensorrt, Provider::Cuda, Provider::Cpu]
        .into_iter()
        .map(|provider| ProviderStatus {
            provider,
            compiled: compiled(provider),
            in_runtime: in_runtime.iter().any(|n| n == provider.ort_name()),
        })
        .collect())
}

/// ORT's own list of the providers its build contains (GetAvailableProviders). ort's typed
/// query only exists for providers compiled in, but `inspect` should say what the library has.
fn runtime_provider_names() -> Result<Vec<String>, ModelError> {
    let api = ort::api();
    let mut names: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut count: std::ffi::c_int = 0;
    // SAFETY: the environment exists, so the API table is loaded; ORT owns `names` until the
    // matching ReleaseAvailableProviders below, and every entry is a NUL-terminated string.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut names, &mut count);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err(ModelError::Runtime("GetAvailableProviders failed".into()));
        }
        let list = (0..count as usize)
            .map(|i| std::ffi::CStr::from_ptr(*names.add(i)).to_string_lossy().into_owned())
            .collect();
        let _ = (api.ReleaseAvailableProviders)(names, count);
        Ok(list)
    }
}

fn compiled(provider: Provider) -> bool {
    match provider {
        Provider::Tensorrt => cfg!(feature = "tensorrt"),
        Provider::Cuda => cfg!(feature = "cuda"),
        Provider::Cpu => true,
    }
}

/// The dispatch list for a session, in order, after checking what can be registered.
pub(crate) fn execution_providers(cfg: &RuntimeConfig) -> Result<Vec<ExecutionProviderDispatch>, ModelError> {
    let statuses = available_providers(cfg)?;
    let mut dispatch = Vec::new();
    for &provider in &cfg.providers {
        let status = statuses
            .iter()
            .find(|s| s.provider == provider)
            .expect("every provider has a status");
        let reason = if !status.compiled {
            Some(format!(
                "not compiled into this binary (build with `--features {provider}`)"
            ))
        } else if !status.in_runtime {
            Some("not in the loaded ONNX Runtime build (install onnxruntime-gpu and point ORT_DYLIB_PATH at it)".into())
        } else {
            None
        };
        if let Some(reason) = reason {
            if cfg.require_providers {
                return Err(ModelError::Provider { provider, reason });
            }
            // A provider this binary was built without is the expected case on a CPU build;
            // one that was built in but is missing from the runtime is a misconfiguration.
            if status.compiled {
                tracing::warn!(%provider, %reason, "execution provider skipped, falling back to the next one");
            } else {
                tracing::info!(%provider, %reason, "execution provider skipped, falling back to the next one");
            }
            continue;
        }
        let d = match provider {
            Provider::Tensorrt => tensorrt(),
            Provider::Cuda => cuda(),
            Provider::Cpu => ep::CPU::default().with_arena_allocator(true).build(),
        };
        tracing::info!(%provider, "execution provider requested");
        dispatch.push(if cfg.require_providers { d.error_on_failure() } else { d });
    }
    Ok(dispatch)
}

#[cfg(feature = "tensorrt")]
fn tensorrt() -> ExecutionProviderDispatch {
    ep::TensorRT::default().with_device_id(0).build()
}
#[cfg(not(feature = "tensorrt"))]
fn tensorrt() -> ExecutionProviderDispatch {
    unreachable!("tensorrt is filtered out when not compiled")
}
#[cfg(feature = "cuda")]
fn cuda() -> ExecutionProviderDispatch {
    ep::CUDA::default().with_device_id(0).build()
}
#[cfg(not(feature = "cuda"))]
fn cuda() -> ExecutionProviderDispatch {
    unreachable!("cuda is filtered out when not compiled")
}
