//! ORT sessions for the *denoise* and *denoise_vjp* graphs, checked against the contract.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array5, ArrayView1, ArrayView2, ArrayView3, ArrayView5, ArrayView6, ArrayViewMut3, Ix3};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::contract::{CameraSpec, ModelContract, METADATA_KEY};
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
    /// Camera models: the images of the window's tokens (`set_images`).
    cameras: Option<CameraInputs>,
}

/// A camera model's `images` and `image_level` inputs: per window token as the planner sets
/// them, and the batch-broadcast copies ORT reads (grown on the first call of the largest
/// batch, reused after). The `ort` run itself allocates its input list and output map on every
/// call (22 allocations per call with the Maze2D model; tests/realtime.rs counts them apart from
/// the planner's own).
struct CameraInputs {
    token_images: Array5<f32>,
    token_levels: Array1<i64>,
    /// Tokens set by the last `set_images` (0: none yet).
    tokens: usize,
    absent_level: i64,
    batch_images: Vec<f32>,
    batch_levels: Vec<i64>,
}

impl CameraInputs {
    fn new(spec: &CameraSpec, max_tokens: usize) -> Self {
        let (n, h, w) = spec.frame_shape();
        let shape = (max_tokens, n, h, w, 3);
        Self {
            token_images: Array5::zeros(shape),
            token_levels: Array1::from_elem(max_tokens, spec.image_levels),
            tokens: 0,
            absent_level: spec.image_levels,
            batch_images: Vec::new(),
            batch_levels: Vec::new(),
        }
    }

    fn set(&mut self, images: ArrayView5<f32>, levels: ArrayView1<i64>) -> Result<(), DenoiseError> {
        let (_, n, h, w, c) = self.token_images.dim();
        let (t, gn, gh, gw, gc) = images.dim();
        let err = |field, expected: String, got: String| DenoiseError::Images { field, expected, got };
        if t == 0 || t > self.token_images.dim().0 || (gn, gh, gw, gc) != (n, h, w, c) {
            return Err(err(
                "images",
                format!("[1..={} tokens, {n} cameras, {h}, {w}, 3]", self.token_images.dim().0),
                format!("{:?}", images.shape()),
            ));
        }
        if levels.len() != t {
            return Err(err(
                "image_level",
                format!("{t} levels (one per token)"),
                levels.len().to_string(),
            ));
        }
        if let Some(bad) = levels.iter().find(|&&l| !(0..=self.absent_level).contains(&l)) {
            return Err(err(
                "image_level",
                format!("0..={}", self.absent_level),
                bad.to_string(),
            ));
        }
        if let Some(bad) = images.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(err("images", "values in [0, 1]".into(), bad.to_string()));
        }
        self.token_images
            .slice_mut(ndarray::s![..t, .., .., .., ..])
            .assign(&images);
        self.token_levels.slice_mut(ndarray::s![..t]).assign(&levels);
        self.tokens = t;
        Ok(())
    }

    /// Append `images` and `image_level` for a [b, t] window to a session's inputs.
    fn push_inputs<'a>(
        &'a mut self,
        inputs: &mut Vec<(std::borrow::Cow<'static, str>, SessionInputValue<'a>)>,
        b: usize,
        t: usize,
        err: &impl Fn(ort::Error) -> DenoiseError,
    ) -> Result<(), DenoiseError> {
        let (images, levels) = self.batch(b, t)?;
        inputs.push(("images".into(), TensorRef::from_array_view(images).map_err(err)?.into()));
        inputs.push((
            "image_level".into(),
            TensorRef::from_array_view(levels).map_err(err)?.into(),
        ));
        Ok(())
    }

    /// The images and levels of a [b, t] window, every sample seeing the same tokens.
    fn batch(&mut self, b: usize, t: usize) -> Result<(ArrayView6<'_, f32>, ArrayView2<'_, i64>), DenoiseError> {
        if t != self.tokens {
            return Err(DenoiseError::Images {
                field: "images",
                expected: format!("images for the window's {t} tokens (set_images before denoising)"),
                got: format!("images for {} tokens", self.tokens),
            });
        }
        let (_, n, h, w, c) = self.token_images.dim();
        let per_sample = t * n * h * w * c;
        if self.batch_images.len() < b * per_sample {
            self.batch_images.resize(b * per_sample, 0.0);
        }
        if self.batch_levels.len() < b * t {
            self.batch_levels.resize(b * t, 0);
        }
        let tokens = self.token_images.as_slice().expect("owned arrays are contiguous");
        let levels = self.token_levels.as_slice().expect("owned arrays are contiguous");
        for i in 0..b {
            self.batch_images[i * per_sample..(i + 1) * per_sample].copy_from_slice(&tokens[..per_sample]);
            self.batch_levels[i * t..(i + 1) * t].copy_from_slice(&levels[..t]);
        }
        let images =
            ArrayView6::from_shape((b, t, n, h, w, c), &self.batch_images[..b * per_sample]).expect("sized above");
        let levels = ArrayView2::from_shape((b, t), &self.batch_levels[..b * t]).expect("sized above");
        Ok((images, levels))
    }
}

#[derive(Clone)]
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
        let camera_ports = || -> Vec<Port> {
            match &contract.cameras {
                Some(_) => vec![
                    Port {
                        name: "images",
                        ty: TensorElementType::Float32,
                        rank: 6,
                        last: Some(3),
                    },
                    Port {
                        name: "image_level",
                        ty: TensorElementType::Int64,
                        rank: 2,
                        last: None,
                    },
                ],
                None => Vec::new(),
            }
        };
        check_ports(
            &denoise,
            path,
            true,
            &[[f32_3("x_t"), levels].as_slice(), &camera_ports()].concat(),
        )?;
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
                    let inputs = [f32_3("x_t"), levels, f32_3("cotangent")];
                    check_ports(
                        &session,
                        &vjp_path,
                        true,
                        &[inputs.as_slice(), &camera_ports()].concat(),
                    )?;
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
        let cameras = contract
            .cameras
            .as_ref()
            .map(|spec| CameraInputs::new(spec, contract.max_tokens));
        Ok(Self {
            contract,
            path: path.to_owned(),
            denoise,
            vjp,
            cameras,
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
        let (b, t, _) = x_t.dim();
        let mut inputs = ort::inputs! {
            "x_t" => TensorRef::from_array_view(x_t).map_err(&err)?,
            "k" => TensorRef::from_array_view(k).map_err(&err)?,
        };
        if let Some(cameras) = self.cameras.as_mut() {
            cameras.push_inputs(&mut inputs, b, t, &err)?;
        }
        let outputs = self.denoise.run(inputs).map_err(&err)?;
        copy_out(&outputs, "x0", x0)?;
        copy_out(&outputs, "eps", eps)
    }

    fn set_images(&mut self, images: ArrayView5<f32>, levels: ArrayView1<i64>) -> Result<(), DenoiseError> {
        self.cameras
            .as_mut()
            .ok_or(DenoiseError::NoCameras)?
            .set(images, levels)
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
        let (b, t, _) = x_t.dim();
        let mut inputs = ort::inputs! {
            "x_t" => TensorRef::from_array_view(x_t).map_err(&err)?,
            "k" => TensorRef::from_array_view(k).map_err(&err)?,
            "cotangent" => TensorRef::from_array_view(cotangent).map_err(&err)?,
        };
        if let Some(cameras) = self.cameras.as_mut() {
            cameras.push_inputs(&mut inputs, b, t, &err)?;
        }
        let outputs = session.run(inputs).map_err(&err)?;
        copy_out(&outputs, "x0", x0)?;
        copy_out(&outputs, "eps", eps)?;
        copy_out(&outputs, "grad_x_t", grad)
    }
}
