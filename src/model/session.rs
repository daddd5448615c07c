//! ORT sessions for the *denoise* and *denoise_vjp* graphs, checked against the contract.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array5, ArrayView1, ArrayView2, ArrayView3, ArrayView5, ArrayViewMut3};
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionOutputs};
use ort::value::{PrimitiveTensorElementType, Tensor, TensorElementType, ValueType};

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
    /// The ORT values of each window shape seen so far, per graph (`WindowIo`).
    denoise_io: Vec<WindowIo>,
    vjp_io: Vec<WindowIo>,
    /// Camera models: the images of the window's tokens (`set_images`).
    cameras: Option<CameraInputs>,
}

/// The ORT values of one graph for one window shape [b, t]: the inputs a call copies into and
/// the outputs ORT writes into (preallocated in the run options), made on the first call with
/// that shape and kept (at most one per batch size and window length). A warm call then
/// allocates nothing on the Rust side (tests/realtime.rs counts it); ONNX Runtime's own C++
/// allocations are out of Rust's sight.
struct WindowIo {
    b: usize,
    t: usize,
    x_t: Tensor<f32>,
    k: Tensor<i64>,
    /// *denoise_vjp* only.
    cotangent: Option<Tensor<f32>>,
    /// Camera models: `images` and `image_level`, every sample seeing the same tokens.
    images: Option<(Tensor<f32>, Tensor<i64>)>,
    run: RunOptions<HasSelectedOutputs>,
}

impl WindowIo {
    /// The values `session`'s graph takes and gives (its ports, checked at load).
    fn new(session: &Session, (b, t, d): (usize, usize, usize), cameras: Option<&CameraInputs>) -> ort::Result<Self> {
        let cpu = Allocator::default();
        let mut selector = OutputSelector::default();
        for output in session.outputs() {
            selector = selector.preallocate(output.name(), Tensor::<f32>::new(&cpu, [b, t, d])?);
        }
        let cotangent = session.inputs().iter().any(|input| input.name() == "cotangent");
        let images = match cameras {
            Some(c) => {
                let (_, n, h, w, ch) = c.token_images.dim();
                Some((
                    Tensor::<f32>::new(&cpu, [b, t, n, h, w, ch])?,
                    Tensor::<i64>::new(&cpu, [b, t])?,
                ))
            }
            None => None,
        };
        Ok(Self {
            b,
            t,
            x_t: Tensor::new(&cpu, [b, t, d])?,
            k: Tensor::new(&cpu, [b, t])?,
            cotangent: if cotangent {
                Some(Tensor::new(&cpu, [b, t, d])?)
            } else {
                None
            },
            images,
            run: RunOptions::new()?.with_outputs(selector),
        })
    }

    /// The values for `x_t`'s shape in `cache` (`session`'s), made on the first call with it.
    fn for_window<'c>(
        cache: &'c mut Vec<WindowIo>,
        session: &Session,
        x_t: &ArrayView3<f32>,
        cameras: Option<&CameraInputs>,
    ) -> ort::Result<&'c mut WindowIo> {
        let (b, t, d) = x_t.dim();
        let index = match cache.iter().position(|io| (io.b, io.t) == (b, t)) {
            Some(i) => i,
            None => {
                cache.push(Self::new(session, (b, t, d), cameras)?);
                cache.len() - 1
            }
        };
        Ok(&mut cache[index])
    }

    /// Copy the call's inputs in; the camera inputs come from `cameras`.
    fn fill(
        &mut self,
        x_t: ArrayView3<f32>,
        k: ArrayView2<i64>,
        cotangent: Option<ArrayView3<f32>>,
        cameras: Option<&CameraInputs>,
    ) -> Result<(), DenoiseError> {
        copy_in(&mut self.x_t, x_t.iter());
        copy_in(&mut self.k, k.iter());
        if let (Some(dst), Some(src)) = (self.cotangent.as_mut(), cotangent) {
            copy_in(dst, src.iter());
        }
        if let (Some((images, levels)), Some(c)) = (self.images.as_mut(), cameras) {
            c.broadcast(self.b, self.t, images, levels)?;
        }
        Ok(())
    }

    /// Run `session` on these values; the graph's inputs are in contract order (checked at load).
    fn run<'r>(&'r self, session: &'r mut Session) -> ort::Result<SessionOutputs<'r>> {
        let (x, k, run) = (&self.x_t, &self.k, &self.run);
        match (&self.cotangent, &self.images) {
            (None, None) => session.run_with_options(ort::inputs![x, k], run),
            (Some(c), None) => session.run_with_options(ort::inputs![x, k, c], run),
            (None, Some((i, l))) => session.run_with_options(ort::inputs![x, k, i, l], run),
            (Some(c), Some((i, l))) => session.run_with_options(ort::inputs![x, k, c, i, l], run),
        }
    }
}

fn copy_in<'a, T: PrimitiveTensorElementType + Copy + std::fmt::Debug + 'a>(
    dst: &mut Tensor<T>,
    src: impl Iterator<Item = &'a T>,
) {
    for (d, s) in dst.extract_tensor_mut().1.iter_mut().zip(src) {
        *d = *s;
    }
}

/// A camera model's `images` and `image_level` inputs, per window token as the planner sets them.
struct CameraInputs {
    token_images: Array5<f32>,
    token_levels: Array1<i64>,
    /// Tokens set by the last `set_images` (0: none yet).
    tokens: usize,
    absent_level: i64,
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

    /// Write the images and levels of a [b, t] window into `images` and `levels`, every sample
    /// seeing the same tokens.
    fn broadcast(
        &self,
        b: usize,
        t: usize,
        images: &mut Tensor<f32>,
        levels: &mut Tensor<i64>,
    ) -> Result<(), DenoiseError> {
        if t != self.tokens {
            return Err(DenoiseError::Images {
                field: "images",
                expected: format!("images for the window's {t} tokens (set_images before denoising)"),
                got: format!("images for {} tokens", self.tokens),
            });
        }
        let (_, n, h, w, c) = self.token_images.dim();
        let per_sample = t * n * h * w * c;
        let tokens = &self.token_images.as_slice().expect("owned arrays are contiguous")[..per_sample];
        let token_levels = &self.token_levels.as_slice().expect("owned arrays are contiguous")[..t];
        let (_, images) = images.extract_tensor_mut();
        let (_, levels) = levels.extract_tensor_mut();
        for i in 0..b {
            images[i * per_sample..(i + 1) * per_sample].copy_from_slice(tokens);
            levels[i * t..(i + 1) * t].copy_from_slice(token_levels);
        }
        Ok(())
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
        let threads = runtime.intra_threads_capped();
        if threads != runtime.intra_threads {
            tracing::warn!(
                requested = runtime.intra_threads,
                using = threads,
                "runtime.intra_threads exceeds this machine's cores; using one thread per core"
            );
        }
        let open = |p: &Path| -> Result<Session, ModelError> {
            let ort_err = |e: String| ModelError::Ort {
                path: p.to_owned(),
                message: e,
            };
            Session::builder(env)
                .map_err(|e| ort_err(e.to_string()))?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(|e| ort_err(e.to_string()))?
                .with_intra_threads(threads)
                .map_err(|e| ort_err(e.to_string()))?
                .with_intra_op_spinning(runtime.intra_spinning)
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
            denoise_io: Vec::new(),
            vjp_io: Vec::new(),
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
        // The usual mistake: the .vjp.onnx given where the model (its denoise graph) goes.
        let vjp_given = names.contains(&"cotangent") && !wanted.contains(&"cotangent");
        let hint = if vjp_given {
            " (this is a denoise_vjp graph: give the model's denoise graph, its contract's graphs.denoise)"
        } else {
            ""
        };
        return Err(graph_err(
            path,
            format!("{kind}s"),
            format!("{wanted:?}{hint}"),
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
        // Every port is [B, T, ...]: the planner's windows vary in length (the first steps of
        // an episode) and in batch (MCG's futures), so fixed axes fail only once it runs.
        if shape[..2] != [-1, -1] {
            return Err(graph_err(
                path,
                field,
                "dynamic batch and token axes (onnx/CONTRACT.md: [B, T, ...])",
                got,
            ));
        }
    }
    Ok(())
}

fn copy_out(outputs: &SessionOutputs<'_>, name: &'static str, mut dst: ArrayViewMut3<f32>) -> Result<(), DenoiseError> {
    let (shape, data) = outputs[name]
        .try_extract_tensor::<f32>()
        .map_err(|e| DenoiseError::Backend(format!("output `{name}`: {e}")))?;
    let (b, t, d) = dst.dim();
    if shape[..] != [b as i64, t as i64, d as i64] {
        let got = shape.iter().map(|&n| n as usize).collect();
        return Err(DenoiseError::OutputShape {
            name,
            expected: dst.shape().to_vec(),
            got,
        });
    }
    dst.assign(&ArrayView3::from_shape((b, t, d), data).expect("shape checked above"));
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
        let cameras = self.cameras.as_ref();
        let io = WindowIo::for_window(&mut self.denoise_io, &self.denoise, &x_t, cameras).map_err(&err)?;
        io.fill(x_t, k, None, cameras)?;
        let outputs = io.run(&mut self.denoise).map_err(&err)?;
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
        if cotangent.dim() != x_t.dim() {
            return Err(DenoiseError::Backend(format!(
                "{}: cotangent {:?}: expected the shape of x_t, {:?}",
                self.path.display(),
                cotangent.dim(),
                x_t.dim()
            )));
        }
        let err = backend(&self.path);
        let Some(session) = self.vjp.as_mut() else {
            return Err(DenoiseError::NoVjp(format!(
                "{}: graphs.denoise_vjp missing or not found",
                self.path.display()
            )));
        };
        let cameras = self.cameras.as_ref();
        let io = WindowIo::for_window(&mut self.vjp_io, session, &x_t, cameras).map_err(&err)?;
        io.fill(x_t, k, Some(cotangent), cameras)?;
        let outputs = io.run(session).map_err(&err)?;
        copy_out(&outputs, "x0", x0)?;
        copy_out(&outputs, "eps", eps)?;
        copy_out(&outputs, "grad_x_t", grad)
    }
}
