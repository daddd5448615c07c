//! ORT sessions for the *denoise* and *denoise_vjp* graphs, checked against the contract.

use std::path::{Path, PathBuf};

use ndarray::{ArrayView2, ArrayView3, ArrayViewMut3, Ix3};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionOutputs};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::contract::{ModelContract, METADATA_KEY};
use super::runtime::{environment, execution_providers, RuntimeConfig};
use super::ModelError;
use crate::diffusion::{DenoiseError, Denoiser};

/// A contract-checked Diffusion Forcing model; `vjp` is absent when the model ships no
/// *denoise_vjp* graph (then guidance is refused with a clear error).
pub struct OnnxDenoiser {
    contract: ModelContract,
    path: PathBuf,
    denoise: Session,
    vjp: Option<Session>,
}

struct Port {
    name: &'static str,
    ty: TensorElementType,
    rank: usize,
    /// Required size of the last axis (token_dim), if any.
    last: Option<i64>,
}

impl OnnxDenoiser {
    pub fn load(path: &Path, runtime: &RuntimeConfig) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::MissingFile { path: path.to_owned() });
        }
        let env = environment(runtime)?;
        let providers = execution_providers(runtime)?;
        let open = |p: &Path| -> Result<Session, ModelError> {
            let ort_err = |e: String| ModelError::Ort {
                path: p.to_owned(),
                message: e,
            };
            Session::builder(env)
                .map_err(|e| ort_err(e.to_string()))?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(|e| ort_err(e.to_string()))?
                .with_intra_threads(runtime.intra_threads)
                .map_err(|e| ort_err(e.to_string()))?
                .with_execution_providers(providers.clone())
                .map_err(|e| ort_err(e.to_string()))?
                .commit_from_file(p)
                .map_err(|e| ort_err(e.to_string()))
        };
        let denoise = open(path)?;
        let contract = read_contract(&denoise, path)?;
        if let Some(cameras) = &contract.cameras {
            let roles: Vec<&str> = cameras.inputs.iter().map(|c| c.role.as_str()).collect();
            return Err(graph_err(
                path,
                "cameras",
                "a model without camera inputs: this planner does not feed images to the model yet",
                format!("a camera model (cameras {roles:?})"),
            ));
        }
        let d = contract.layout.token_dim as i64;
        let f32_3 = |name| Port {
            name,
            ty: TensorElementType::Float32,
            rank: 3,
            last: Some(d),
        };
        let levels = Port {
            name: "k",
            ty: TensorElementType::Int64,
            rank: 2,
            last: None,
        };
        check_ports(&denoise, path, true, &[f32_3("x_t"), levels])?;
        check_ports(&denoise, path, false, &[f32_3("x0"), f32_3("eps")])?;

        let vjp = match &contract.graphs.denoise_vjp {
            Some(name) => {
                let vjp_path = path.parent().unwrap_or(Path::new(".")).join(name);
                if vjp_path.is_file() {
                    let session = open(&vjp_path)?;
                    if read_contract(&session, &vjp_path)? != contract {
                        return Err(graph_err(
                            &vjp_path,
                            "metadata",
                            format!("the contract of {}", path.display()),
                            "a different one",
                        ));
                    }
                    let levels = Port {
                        name: "k",
                        ty: TensorElementType::Int64,
                        rank: 2,
                        last: None,
                    };
                    check_ports(&session, &vjp_path, true, &[f32_3("x_t"), levels, f32_3("cotangent")])?;
                    check_ports(
                        &session,
                        &vjp_path,
                        false,
                        &[f32_3("x0"), f32_3("eps"), f32_3("grad_x_t")],
                    )?;
                    Some(session)
                } else {
                    tracing::warn!(path = %vjp_path.display(), "denoise_vjp graph not found; guidance is unavailable");
                    None
                }
            }
            None => None,
        };
        Ok(Self {
            contract,
            path: path.to_owned(),
            denoise,
            vjp,
        })
    }

    pub fn contract(&self) -> &ModelContract {
        &self.contract
    }

    pub fn has_vjp(&self) -> bool {
        self.vjp.is_some()
    }

    fn check_window(&self, x_t: &ArrayView3<f32>, k: &ArrayView2<i64>) -> Result<(), DenoiseError> {
        let (b, t, d) = x_t.dim();
        if d != self.contract.layout.token_dim || t > self.contract.max_tokens || k.dim() != (b, t) {
            return Err(DenoiseError::Backend(format!(
                "{}: inputs x_t {:?} and k {:?}: expected [B, T <= {}, {}] and [B, T]",
                self.path.display(),
                x_t.dim(),
                k.dim(),
                self.contract.max_tokens,
                self.contract.layout.token_dim
            )));
        }
        Ok(())
    }
}

fn read_contract(session: &Session, path: &Path) -> Result<ModelContract, ModelError> {
    let meta = session.metadata().map_err(|e| ModelError::Ort {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let text = meta
        .custom(METADATA_KEY)
        .ok_or_else(|| ModelError::NoContract { path: path.to_owned() })?;
    ModelContract::from_json(&text).map_err(|source| ModelError::Contract {
        path: path.to_owned(),
        source,
    })
}

fn graph_err(path: &Path, field: impl Into<String>, expected: impl ToString, got: impl ToString) -> ModelError {
    ModelError::Graph {
        path: path.to_owned(),
        field: field.into(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

fn check_ports(session: &Session, path: &Path, inputs: bool, ports: &[Port]) -> Result<(), ModelError> {
    let kind = if inputs { "input" } else { "output" };
    let outlets = if inputs { session.inputs() } else { session.outputs() };
    let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
    let wanted: Vec<&str> = ports.iter().map(|p| p.name).collect();
    if names != wanted {
        return Err(graph_err(
            path,
            format!("{kind}s"),
            format!("{wanted:?}"),
            format!("{names:?}"),
        ));
    }
    for (outlet, port) in outlets.iter().zip(ports) {
        let field = format!("{kind} `{}`", port.name);
        let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
            return Err(graph_err(path, field, "a tensor", outlet.dtype()));
        };
        let expected = format!(
            "{:?} of rank {}{}",
            port.ty,
            port.rank,
            port.last.map(|d| format!(" with last axis {d}")).unwrap_or_default()
        );
        let got = format!("{ty:?} with shape {:?}", &shape[..]);
        let last_ok = port.last.is_none_or(|d| shape.last() == Some(&d));
        if *ty != port.ty || shape.len() != port.rank || !last_ok {
            return Err(graph_err(path, field, expected, got));
        }
    }
    Ok(())
}

fn copy_out(outputs: &SessionOutputs<'_>, name: &'static str, mut dst: ArrayViewMut3<f32>) -> Result<(), DenoiseError> {
    let value = outputs[name]
        .try_extract_array::<f32>()
        .map_err(|e| DenoiseError::Backend(format!("output `{name}`: {e}")))?;
    let value = value
        .into_dimensionality::<Ix3>()
        .map_err(|e| DenoiseError::Backend(format!("output `{name}`: {e}")))?;
    if value.dim() != dst.dim() {
        let (expected, got) = (dst.shape().to_vec(), value.shape().to_vec());
        return Err(DenoiseError::OutputShape { name, expected, got });
    }
    dst.assign(&value);
    Ok(())
}

fn backend(path: &Path) -> impl Fn(ort::Error) -> DenoiseError + '_ {
    move |e| DenoiseError::Backend(format!("{}: {e}", path.display()))
}

impl Denoiser for OnnxDenoiser {
    fn token_dim(&self) -> usize {
        self.contract.layout.token_dim
    }

    fn max_tokens(&self) -> usize {
        self.contract.max_tokens
    }

    fn denoise(
        &mut self,
        x_t: ArrayView3<f32>,
        k: ArrayView2<i64>,
        x0: ArrayViewMut3<f32>,
        eps: ArrayViewMut3<f32>,
    ) -> Result<(), DenoiseError> {
        self.check_window(&x_t, &k)?;
        let err = backend(&self.path);
        let inputs = ort::inputs! {
            "x_t" => TensorRef::from_array_view(x_t).map_err(&err)?,
            "k" => TensorRef::from_array_view(k).map_err(&err)?,
        };
        let outputs = self.denoise.run(inputs).map_err(&err)?;
        copy_out(&outputs, "x0", x0)?;
        copy_out(&outputs, "eps", eps)
    }

    fn denoise_vjp(
        &mut self,
        x_t: ArrayView3<f32>,
        k: ArrayView2<i64>,
        cotangent: ArrayView3<f32>,
        x0: ArrayViewMut3<f32>,
        eps: ArrayViewMut3<f32>,
        grad: ArrayViewMut3<f32>,
    ) -> Result<(), DenoiseError> {
        self.check_window(&x_t, &k)?;
        let err = backend(&self.path);
        let Some(session) = self.vjp.as_mut() else {
            return Err(DenoiseError::NoVjp(format!(
                "{}: graphs.denoise_vjp missing or not found",
                self.path.display()
            )));
        };
        let inputs = ort::inputs! {
            "x_t" => TensorRef::from_array_view(x_t).map_err(&err)?,
            "k" => TensorRef::from_array_view(k).map_err(&err)?,
            "cotangent" => TensorRef::from_array_view(cotangent).map_err(&err)?,
        };
        let outputs = session.run(inputs).map_err(&err)?;
        copy_out(&outputs, "x0", x0)?;
        copy_out(&outputs, "eps", eps)?;
        copy_out(&outputs, "grad_x_t", grad)
    }
}
