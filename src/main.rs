//! `df_planner`: Diffusion Forcing planning controller.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::sync::Arc;
use std::time::Duration;

use df_planner::bridge::Bridge;
use df_planner::config::NodeConfig;
use df_planner::control::live::{self, Clock, LiveParts, SystemClock};
use df_planner::control::{
    ActionSink, Diagnostics, Fault, Histogram, MeasuredPlanTimes, PlanTimes, StateCell, StateSample, TickReport,
};
use df_planner::diffusion::{
    Denoiser, MatrixError, MatrixKind, Sampler, SamplerSettings, SchedulingMatrix, SeededNoise,
};
use df_planner::frames::ImageView;
use df_planner::model::{available_providers, Field, ModelContract, OnnxDenoiser, Provider, RuntimeConfig};
use df_planner::node::node_parts;
use df_planner::planner::Plan;
use df_planner::serve::Server;
use ndarray::{Array2, Array3};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "df_planner",
    version,
    about = "Diffusion Forcing planning controller (ONNX Runtime, Monte Carlo Guidance)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a model's contract: token layout, schedule, parameterization, max tokens, providers.
    Inspect {
        /// The denoise graph (its .vjp.onnx sibling is found from the metadata).
        model: PathBuf,
        /// Print the raw contract JSON instead of the summary.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Sample a token sequence from noise along a scheduling matrix and write it as JSON.
    Sample(SampleArgs),
    /// Measure denoise / denoise_vjp latency (median, p99, max over many calls), or with
    /// --config the live control loop (tick and plan latency, deadline misses).
    Bench(BenchArgs),
    /// Run as a ROS 2 node (needs a build with `--features ros` in a sourced ROS 2 workspace).
    ///
    /// Subscribes sensor_msgs/Image on topics.image, or for a camera model on each camera's topic
    /// (camera.topics[role], else the model contract's) (rgb8, bgr8, rgba8, bgra8, mono8; other
    /// encodings are rejected and counted, other sizes too unless camera.resize is area) and
    /// sensor_msgs/JointState on topics.state (positions then velocities form the observation),
    /// and, when topics.goal is set, geometry_msgs/PoseStamped goals on topics.goal.topic (x, y
    /// replace planner.goal.target, and a goal that moves is planned for at the next step; one
    /// outside serve.goal_bounds, in a serve.goal_keepout box or stamped in a frame other than
    /// topics.goal.frame_id is refused and counted). Publishes one action per control tick on
    /// topics.action as topics.action_type (float64_multi_array, joint_trajectory: the rest of
    /// the plan ending at rest, or pose_stamped), each plan's first token on topics.plan, and
    /// diagnostic_msgs/DiagnosticArray on topics.diagnostics
    /// once a second (latency p50/p99/max, fault counters, frame counters, the goal, whether
    /// it guides, the distance to it, whether it was reached (planner.goal.reached_within),
    /// the ticks that held it at rest (serve.hold_radius), and the goals received, refused
    /// and dropped).
    ///
    /// ROS parameters: `config` (path of the node YAML, used when --config is not given) and
    /// `use_sim_time` (stamps and staleness follow /clock). The YAML has the sections model
    /// (path, runtime: providers, require_providers, intra_threads, onnxruntime_library),
    /// planner (matrix, sampling, MCG, guidance and its goal reward, warm start, replanning,
    /// seed), control (rate, fallback hold|stop), safety (action limits, rate limit, input
    /// timeouts), camera, topics and serve (how plans are executed: their actions, a PD
    /// controller tracking them, arrive-and-hold at the goal; and the goal checks); every field is
    /// documented in src/config.rs and commented in config/*.yaml, and an unknown field is an
    /// error.
    Run(RunArgs),
    /// Serve plans over a line protocol on stdin/stdout (JSON per line: reset, step, stats,
    /// score_path) for a simulator that steps the world itself; see src/serve.rs for the
    /// protocol. A camera model is served through the node's own loop (frame rings, planner
    /// task, control tick) instead, and a state model with --node-loop: the simulator sends the
    /// state (and camera frames); see src/bridge.rs. The flags override the config, for
    /// ablations.
    Serve(ServeArgs),
    /// Replay a ROS 2 bag (MCAP file, .db3, or rosbag2 folder) through the control loop on the
    /// bag's clock; write actions, plans and diagnostics to an MCAP file and print a summary.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Node configuration (YAML); default: the `config` ROS parameter.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Arguments for ROS (`--ros-args ...`), passed through by `ros2 launch` / `ros2 run`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    ros_args: Vec<String>,
}

#[derive(Args)]
// `--hold-radius -1` reaches the value check instead of reading as another flag.
#[command(allow_negative_numbers = true)]
struct ServeArgs {
    /// Node configuration (YAML), e.g. config/maze2d_umaze.yaml.
    #[arg(long)]
    config: PathBuf,
    /// Override planner.samples (Monte Carlo Guidance samples; 1 = no MCG).
    #[arg(long)]
    samples: Option<usize>,
    /// Override planner.mcg (futures, prior_futures or redraws).
    #[arg(long)]
    mcg: Option<String>,
    /// Override planner.mcg_temperature; `none` for an even average.
    #[arg(long)]
    mcg_temperature: Option<String>,
    /// Override planner.guidance_scale (0 = no guidance).
    #[arg(long)]
    guidance_scale: Option<f64>,
    /// Override the matrix kind (pyramid, autoregressive, full_sequence, trapezoid).
    #[arg(long)]
    matrix: Option<String>,
    /// Override planner.warm_start_level; `none` for cold starts.
    #[arg(long)]
    warm_start_level: Option<String>,
    /// Override serve.execute (diffused_actions or pd_controller).
    #[arg(long)]
    execute: Option<String>,
    /// Override serve.hold_radius; `none`: no hold at the goal (plans run as serve.execute says).
    #[arg(long)]
    hold_radius: Option<String>,
    /// Override planner.seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override planner.context_tokens (memory; 1 = the present token only).
    #[arg(long)]
    context_tokens: Option<usize>,
    /// Override planner.image_level (camera models: > 0 tells the model its images are noisy).
    #[arg(long)]
    image_level: Option<i64>,
    /// Serve a state model through the robot node's own loop (planner task, control tick with
    /// its safety filter and fallbacks, on a virtual clock) instead of serve's planner loop:
    /// the protocol of src/bridge.rs. Camera models are always served so.
    #[arg(long)]
    node_loop: bool,
    /// Through the node's loop: each plan takes this many ms of the simulator's clock, as a
    /// planner that slow would in real time (the ticks run the previous plan meanwhile, late
    /// steps run as of their time, a replan interval or an input timeout behind the planner
    /// skips steps); default: a plan lands at the step that made it.
    #[arg(long, conflicts_with = "plan_times")]
    plan_time_ms: Option<f64>,
    /// Through the node's loop: each plan takes a time drawn from the plan latencies measured
    /// by `df_planner bench --config C` (its JSON report saved to this file: the
    /// `plan_latency_buckets`), by a generator seeded with the episode's seed, so the spread
    /// and the tail of the live planner's times are met, not one figure.
    #[arg(long)]
    plan_times: Option<PathBuf>,
}

#[derive(Args)]
// `--rate -1` reaches the value check instead of reading as another flag.
#[command(allow_negative_numbers = true)]
struct ReplayArgs {
    /// The bag: a .mcap file, a .db3 file or a rosbag2 folder.
    #[arg(long)]
    bag: PathBuf,
    /// Node configuration (YAML), e.g. config/pointmass.yaml.
    #[arg(long)]
    config: PathBuf,
    /// Output MCAP file.
    #[arg(long)]
    out: PathBuf,
    /// Pace the replay at this multiple of real time (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of log time a message may be stored after later ones and still replay in its
    /// place (later ones are skipped and counted); memory holds this much of the inputs.
    #[arg(long, default_value_t = 2.0)]
    reorder_window: f64,
    /// The namespace the recorded node ran in (its launch `namespace`): the config's relative
    /// and private topic names (~/action) resolve in it, as on the robot.
    #[arg(long, default_value = "/")]
    namespace: String,
    /// The recorded node's name (its launch `name`): private names (~/action) resolve under it.
    #[arg(long, default_value = df_planner::ros::names::NODE_NAME)]
    node_name: String,
    /// A remap rule of the recorded node, FROM:=TO as its launch remappings or `--ros-args -r`
    /// gave it (NODE:FROM:=TO for that node only); repeat for several, first match wins.
    #[arg(long = "remap", value_name = "FROM:=TO")]
    remaps: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RuntimeArgs {
    /// Execution providers in order of preference (tensorrt, cuda, cpu).
    #[arg(long, value_delimiter = ',', default_value = "tensorrt,cuda,cpu")]
    providers: Vec<Provider>,
    /// Fail when a listed provider cannot be registered, instead of falling back.
    #[arg(long)]
    require_providers: bool,
    /// libonnxruntime.so to load (default: $ORT_DYLIB_PATH, else the one scripts/setup.sh
    /// installed).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// ORT intra-op threads (0 = ORT default; capped at this machine's cores).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Let ORT's intra-op threads spin-wait between operators (ORT's default) instead of
    /// sleeping, which leaves the cores to other threads.
    #[arg(long)]
    intra_spinning: bool,
}

impl RuntimeArgs {
    fn config(&self) -> RuntimeConfig {
        RuntimeConfig {
            onnxruntime_library: self.ort_lib.clone(),
            providers: self.providers.clone(),
            require_providers: self.require_providers,
            intra_threads: self.threads,
            intra_spinning: self.intra_spinning,
        }
    }
}

#[derive(Args)]
// `--eta -1` reaches the value check instead of reading as another flag.
#[command(allow_negative_numbers = true)]
struct SampleArgs {
    /// The denoise graph (.onnx with df_planner metadata), e.g. onnx/models/pointmass.onnx.
    #[arg(long)]
    model: PathBuf,
    /// pyramid, autoregressive, full_sequence or trapezoid.
    #[arg(long, default_value = "pyramid")]
    matrix: String,
    /// Pyramid / trapezoid slope u: token t starts floor(u·t) rows late.
    #[arg(long, default_value_t = 1.0)]
    uncertainty: f64,
    /// Sampling steps S (levels per token).
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Tokens to sample (default: the model's max_tokens).
    #[arg(long)]
    horizon: Option<usize>,
    /// Independent samples.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// DDIM η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Seed of the initial noise and of DDIM's noise (η > 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output JSON: normalized tokens and denormalized frames per sample.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["model", "config"])))]
// With --config the runtime is the config's model.runtime; a runtime flag would be ignored.
#[command(group(clap::ArgGroup::new("runtime_flags").multiple(true)
    .args(["providers", "require_providers", "ort_lib", "threads"]).conflicts_with("config")))]
// Each benchmark's own flags would be ignored by the other. `--seconds -1` reaches its check.
#[command(allow_negative_numbers = true)]
#[command(group(clap::ArgGroup::new("loop_flags").multiple(true)
    .args(["rate_hz", "seconds", "camera_size"]).conflicts_with("model")))]
#[command(group(clap::ArgGroup::new("model_flags").multiple(true)
    .args(["batch", "tokens", "iters", "warmup"]).conflicts_with("config")))]
struct BenchArgs {
    /// Benchmark one model's denoise / denoise_vjp calls.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Benchmark the live control loop of this node config (planner busy, synthetic inputs).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Control loop benchmark: tick rate (overrides control.rate_hz).
    #[arg(long, value_parser = parse_rate_hz)]
    rate_hz: Option<f64>,
    /// Control loop benchmark: how long to run.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    seconds: f64,
    /// Control loop benchmark: the synthetic camera frames' size, WIDTHxHEIGHT (default: the
    /// model's), e.g. 640x480 to time `camera.resize: area` on an arm camera's images.
    #[arg(long, value_parser = parse_size)]
    camera_size: Option<(u32, u32)>,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Window length (default: the model's max_tokens).
    #[arg(long)]
    tokens: Option<usize>,
    #[arg(long, default_value_t = 500)]
    iters: usize,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match Cli::parse().command {
        Command::Inspect { model, json, runtime } => inspect(model, json, &runtime.config()),
        Command::Sample(args) => sample(args),
        Command::Bench(args) => bench(args),
        Command::Replay(args) => replay(args),
        Command::Run(args) => run(args),
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(path: PathBuf, json: bool, runtime: &RuntimeConfig) -> Result<()> {
    let model = OnnxDenoiser::load(&path, runtime)?;
    let c = model.contract();
    if json {
        return emit(&(serde_json::to_string_pretty(c)? + "\n"));
    }
    let mut out = String::new();
    let l = &c.layout;
    let fields: Vec<String> = l
        .field_order
        .iter()
        .map(|&f| format!("{} {}", field_name(f), l.width(f)))
        .collect();
    let d = &c.diffusion;
    let ab = &d.alphas_cumprod;
    writeln!(out, "model        {} (contract {})", path.display(), c.contract_version)?;
    writeln!(
        out,
        "graphs       denoise {}, denoise_vjp {}",
        c.graphs.denoise,
        match (&c.graphs.denoise_vjp, model.has_vjp()) {
            (Some(name), true) => format!("{name} (loaded)"),
            (Some(name), false) => format!("{name} (MISSING: guidance unavailable)"),
            (None, _) => "none (guidance unavailable)".into(),
        }
    )?;
    writeln!(
        out,
        "layout       frame [{}] = {} floats; {} frames per token = token_dim {}",
        fields.join(", "),
        l.frame_dim,
        l.frame_stack,
        l.token_dim
    )?;
    writeln!(
        out,
        "tokens       max_tokens {}, causal {}, cond_dim {}",
        c.max_tokens, c.causal, c.cond_dim
    )?;
    if let Some(cameras) = &c.cameras {
        let inputs: Vec<String> = cameras
            .inputs
            .iter()
            .map(|i| format!("{} {} {} {}x{}", i.role, i.topic, i.encoding, i.width, i.height))
            .collect();
        writeln!(
            out,
            "cameras      {}; image levels 0..{} observed, {} absent",
            inputs.join(", "),
            cameras.image_levels - 1,
            cameras.image_levels
        )?;
    }
    writeln!(
        out,
        "diffusion    K {}, schedule {}, parameterization {}, stabilization level {}, noise clip {}",
        d.timesteps,
        serde_json::to_value(d.schedule)?,
        serde_json::to_value(d.parameterization)?,
        d.stabilization_level,
        d.noise_clip
    )?;
    writeln!(
        out,
        "alpha_bar    [0] {:.6}, [K/2] {:.6}, [K-1] {:.3e}",
        ab[0],
        ab[ab.len() / 2],
        ab[ab.len() - 1]
    )?;
    writeln!(out, "normalize    mean {:?}", round(&c.normalization.mean))?;
    writeln!(out, "             std  {:?}", round(&c.normalization.std))?;
    let p = &c.provenance;
    writeln!(
        out,
        "provenance   dataset {}, {} train steps, commit {}, exported {}, torch {}",
        short(&p.dataset_sha256),
        p.train_steps,
        short(&p.git_commit),
        p.exported_at,
        p.torch
    )?;
    for s in available_providers(runtime)? {
        let state = match (s.compiled, s.in_runtime) {
            (true, true) => "available",
            (false, true) => "in the runtime, not compiled in (cargo feature)",
            (true, false) => "compiled in, not in the loaded runtime",
            (false, false) => "unavailable",
        };
        writeln!(out, "provider     {:<9} {state}", s.provider.to_string())?;
    }
    emit(&out)
}

/// Write a command's output to stdout; a reader that has gone (`| head`) ends it quietly.
fn emit(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => Ok(result?),
    }
}

fn field_name(f: Field) -> &'static str {
    match f {
        Field::Action => "action",
        Field::Observation => "observation",
        Field::Reward => "reward",
    }
}

fn round(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 1e4).round() / 1e4).collect()
}

fn short(s: &str) -> &str {
    &s[..s.len().min(12)]
}

fn sample(a: SampleArgs) -> Result<()> {
    let mut model = OnnxDenoiser::load(&a.model, &a.runtime.config())?;
    let c = model.contract().clone();
    if c.cameras.is_some() {
        bail!(
            "--model: {} is a camera model (it plans from images), and `sample` draws from noise alone; \
             run it with `serve` or `replay` and its node config",
            a.model.display()
        );
    }
    let horizon = a.horizon.unwrap_or(c.max_tokens);
    if horizon > c.max_tokens {
        bail!(
            "--horizon: expected at most max_tokens = {}, got {horizon}",
            c.max_tokens
        );
    }
    if a.batch == 0 {
        bail!("--batch: expected >= 1, got 0");
    }
    let kind = MatrixKind::from_name(&a.matrix, a.uncertainty).context("--matrix / --uncertainty")?;
    let rows = SchedulingMatrix::build(kind, horizon, a.steps)
        .map_err(|e| {
            let flag = match e {
                MatrixError::NoSteps(_) => "--steps",
                MatrixError::EmptyHorizon(_) => "--horizon",
                MatrixError::BadUncertainty(_) => "--uncertainty",
                MatrixError::UnknownKind(_) => "--matrix",
            };
            anyhow::Error::new(e).context(flag)
        })?
        .to_timesteps(0, c.diffusion.timesteps);
    let settings = SamplerSettings {
        eta: a.eta,
        stabilization_level: c.diffusion.stabilization_level,
        noise_clip: c.diffusion.noise_clip,
        guidance_scale: 0.0,
        guidance_form: Default::default(),
        context_tokens: 0,
        shared_tokens: 0,
        redraws: 0,
        guided_tokens: None,
        mcg_temperature: None,
    };
    let shape = (a.batch, horizon, c.layout.token_dim);
    let mut sampler = Sampler::new(settings, c.alpha_bar()?, shape)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let mut x = Array3::from_shape_simple_fn(shape, || StandardNormal.sample(&mut rng));
    let mut noise = SeededNoise::new(a.seed.wrapping_add(1));
    let start = Instant::now();
    sampler.run(&mut model, &mut x, &rows, None, &mut noise, |_, _| {})?;
    let elapsed_ms = start.elapsed().as_secs_f64() * 1e3;

    let frames = denormalized_frames(&c, &x);
    let samples: Vec<_> = frames
        .outer_iter()
        .map(|sample| {
            sample
                .outer_iter()
                .map(|frame| {
                    let mut obj = serde_json::Map::new();
                    for &f in &c.layout.field_order {
                        let off = c.layout.offset(f).expect("field from the layout");
                        let vals: Vec<f32> = frame.iter().skip(off).take(c.layout.width(f)).copied().collect();
                        obj.insert(field_name(f).into(), json!(vals));
                    }
                    serde_json::Value::Object(obj)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let doc = json!({
        "model": a.model, "matrix": kind.to_string(), "steps": a.steps, "rows": rows.rows(), "seed": a.seed,
        "eta": a.eta, "horizon_tokens": horizon, "frame_stack": c.layout.frame_stack, "sample_ms": elapsed_ms,
        "tokens_normalized": x.outer_iter().map(|s| s.outer_iter().map(|t| t.to_vec()).collect::<Vec<_>>()).collect::<Vec<_>>(),
        "frames": samples,
    });
    std::fs::write(&a.out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    emit(&format!(
        "wrote {} ({} samples x {} tokens, {} rows of {}, {:.1} ms)\n",
        a.out.display(),
        a.batch,
        horizon,
        rows.rows(),
        kind,
        elapsed_ms
    ))
}

/// Tokens [B, T, D] -> frames [B, T·frame_stack, frame_dim] in physical units.
fn denormalized_frames(c: &ModelContract, x: &Array3<f32>) -> Array3<f32> {
    let (b, t, _) = x.dim();
    let fd = c.layout.frame_dim;
    let mut frames = x
        .to_owned()
        .into_shape_with_order((b, t * c.layout.frame_stack, fd))
        .expect("token_dim = frame_stack * frame_dim");
    for mut frame in frames.rows_mut() {
        for (i, v) in frame.iter_mut().enumerate() {
            *v = (f64::from(*v) * c.normalization.std[i] + c.normalization.mean[i]) as f32;
        }
    }
    frames
}

fn percentiles(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    json!({"median_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ms[ms.len() - 1], "iters": ms.len()})
}

fn bench(a: BenchArgs) -> Result<()> {
    let Some(model_path) = a.model.clone() else {
        return bench_control(&a);
    };
    let mut model = OnnxDenoiser::load(&model_path, &a.runtime.config())?;
    let c = model.contract().clone();
    if c.cameras.is_some() {
        bail!(
            "--model: {} is a camera model (its calls need a window's images); time it through its node \
             config: `bench --config config/fruit_swap.yaml`",
            model_path.display()
        );
    }
    let t = a.tokens.unwrap_or(c.max_tokens);
    for (flag, value, max) in [
        ("--batch", a.batch, usize::MAX),
        ("--tokens", t, c.max_tokens),
        ("--iters", a.iters, usize::MAX),
    ] {
        if !(1..=max).contains(&value) {
            let expected = if max == usize::MAX {
                ">= 1".to_string()
            } else {
                format!("1 to max_tokens = {max}")
            };
            bail!("{flag}: expected {expected}, got {value}");
        }
    }
    let shape = (a.batch, t, c.layout.token_dim);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let x = Array3::from_shape_simple_fn(shape, || StandardNormal.sample(&mut rng));
    let k = Array2::from_elem((a.batch, t), (c.diffusion.timesteps / 2) as i64);
    let (mut x0, mut eps, mut grad) = (Array3::zeros(shape), Array3::zeros(shape), Array3::zeros(shape));
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<serde_json::Value> {
        let mut ms = Vec::with_capacity(a.iters);
        for i in 0..a.warmup + a.iters {
            let start = Instant::now();
            f()?;
            if i >= a.warmup {
                ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(percentiles(ms))
    };
    let denoise = time(&mut || Ok(model.denoise(x.view(), k.view(), x0.view_mut(), eps.view_mut())?))?;
    let vjp = if model.has_vjp() {
        Some(time(&mut || {
            Ok(model.denoise_vjp(
                x.view(),
                k.view(),
                x.view(),
                x0.view_mut(),
                eps.view_mut(),
                grad.view_mut(),
            )?)
        })?)
    } else {
        None
    };
    emit(&format!(
        "{}\n",
        json!({"backend": "onnxruntime", "model": model_path, "threads": a.runtime.config().intra_threads_capped(), "intra_spinning": a.runtime.intra_spinning, "batch": a.batch, "tokens": t,
               "denoise": denoise, "denoise_vjp": vjp})
    ))
}

fn replay(a: ReplayArgs) -> Result<()> {
    let cfg = NodeConfig::load(&a.config)?;
    let options = df_planner::replay::ReplayOptions {
        rate: a.rate,
        reorder_window_s: a.reorder_window,
        namespace: a.namespace,
        node_name: a.node_name,
        remaps: a.remaps,
    };
    // A config the model or the planner refuses is named by its file, as `serve` names it.
    let s = df_planner::replay::replay(&cfg, &a.bag, &a.out, &options).map_err(|e| match e {
        df_planner::replay::ReplayError::Node(e) => anyhow::Error::new(e).context(a.config.display().to_string()),
        other => other.into(),
    })?;
    if a.json {
        return emit(&(serde_json::to_string_pretty(&s)? + "\n"));
    }
    let mut out = String::new();
    writeln!(out, "bag          {} ({})", s.bag, s.storage)?;
    if let Some(e) = &s.bag_read_error {
        writeln!(out, "bag damage   {e}")?;
    }
    if s.gaps_jumped > 0 {
        writeln!(
            out,
            "gaps         {} gaps between input messages over 60 s jumped, not ticked through ({:.1} s in all)",
            s.gaps_jumped, s.gap_s_jumped
        )?;
    }
    if s.reordered_by_log_time > 0 {
        writeln!(
            out,
            "reordered    {} input messages were out of log-time order in storage",
            s.reordered_by_log_time
        )?;
    }
    for (topic, c) in &s.topics {
        writeln!(out, "topic        {topic}: read {}, used {}", c.read, c.used)?;
        for (reason, n) in &c.skipped {
            writeln!(out, "  skipped    {n} x {reason}")?;
        }
    }
    let d = &s.diagnostics;
    writeln!(
        out,
        "ticks        {} in {:.3} s wall ({:.0} ticks/s); {} plans, {} plan errors",
        s.ticks, s.wall_s, s.ticks_per_s, d.plans, d.plan_errors
    )?;
    writeln!(
        out,
        "actions      from plan {}, hold {}, stop {}, none (waiting for the first state) {}; clipped {}, rate-limited {}, late dropped {}",
        s.ticks - d.hold - d.stop - d.waiting,
        d.hold,
        d.stop,
        d.waiting,
        d.clipped,
        d.rate_limited,
        d.late_actions_dropped
    )?;
    let faults: Vec<String> = d.faults.iter().map(|(n, c)| format!("{n} {c}")).collect();
    writeln!(out, "faults       {}", faults.join(", "))?;
    let f = &d.frames;
    writeln!(out, "frames       received {}, delivered {}, superseded {}, rejected: encoding {}, size {}, malformed {}, out of order {}, duplicate {}; clock resets {}",
        f.received, f.delivered, f.superseded, f.rejected_encoding, f.rejected_size, f.rejected_malformed, f.rejected_out_of_order, f.rejected_duplicate, f.clock_resets)?;
    match d.goal {
        Some(g) => writeln!(
            out,
            "goal         {} at the end{}{}{}; {} goal messages, {} refused",
            g.target.map_or_else(|| "none".into(), |t| format!("{t:?}")),
            match (g.guided, g.target) {
                (false, _) => " (unguided: guidance_scale 0)",
                (true, None) => " (unguided)",
                (true, Some(_)) => "",
            },
            g.distance
                .map_or_else(String::new, |d| format!(", {d:.3} from the last state")),
            match g.reached {
                Some(true) => ", reached",
                Some(false) => ", not reached",
                None => "",
            },
            g.received,
            g.rejected
        )?,
        None => writeln!(out, "goal         no goal reward: unguided")?,
    }
    for (name, l) in [("tick latency", s.tick_latency), ("plan latency", s.plan_latency)] {
        writeln!(
            out,
            "{name:<12} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
            l.p50_ms, l.p99_ms, l.max_ms, l.count
        )?;
    }
    match &s.planned_vs_recorded {
        Some(e) => writeln!(
            out,
            "vs recorded  {} actions compared: RMSE {:.4} (per dimension {:.4?}), max abs {:.4}",
            e.compared, e.rmse, e.rmse_per_dim, e.max_abs
        )?,
        None => writeln!(
            out,
            "vs recorded  none compared (no recorded actions in the bag, or all before the first tick)"
        )?,
    }
    if let Some(e) = &s.last_plan_error {
        writeln!(out, "plan error   {e}")?;
    }
    writeln!(out, "wrote        {}", a.out.display())?;
    emit(&out)
}

/// Output port that only counts: the benchmark measures the loop, not a transport.
struct CountingSink {
    actions: u64,
    /// The latest report: the last comes when the node stops.
    diagnostics: Arc<parking_lot::Mutex<Option<Diagnostics>>>,
}

impl ActionSink for CountingSink {
    fn action(&mut self, _: &TickReport, _: &[f64], _: Option<&Plan>) {
        self.actions += 1;
    }
    fn plan(&mut self, _: &Plan) {}
    fn diagnostics(&mut self, _: i64, d: &Diagnostics) {
        *self.diagnostics.lock() = Some(d.clone());
    }
}

/// The live loop with its real planner, fed synthetic state (100 Hz) and camera frames (30 Hz).
fn bench_control(a: &BenchArgs) -> Result<()> {
    let mut cfg = NodeConfig::load(a.config.as_ref().expect("clap requires model or config"))?;
    if let Some(hz) = a.rate_hz {
        cfg.control.rate_hz = hz;
    }
    let (task, core) =
        node_parts(&cfg).with_context(|| a.config.as_ref().expect("bench --config").display().to_string())?;
    let obs_dim = task.planner().contract().layout.observation_dim;
    // What each plan costs depends on whether it is guided (a denoise_vjp per sample and step).
    let goal = task
        .goal_status()
        .map(|g| json!({"target": g.target, "guided": g.guided}));
    let rings = df_planner::node::camera_rings(&cfg, task.planner().contract())?;
    let (mut frames_in, frames) = df_planner::frames::camera_rings(&rings);
    let state = Arc::new(StateCell::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let diagnostics = Arc::new(parking_lot::Mutex::new(None));
    let parts = LiveParts {
        task,
        core,
        frames,
        state: state.clone(),
        sink: Box::new(CountingSink {
            actions: 0,
            diagnostics: diagnostics.clone(),
        }),
        clock: clock.clone(),
        goals: Default::default(),
        tick: cfg.control.tick(),
        step: cfg.control.step(),
    };
    let node = live::spawn(parts)?;
    let sizes: Vec<(u32, u32)> = rings
        .iter()
        .map(|r| a.camera_size.unwrap_or((r.width, r.height)))
        .collect();
    let pixels: Vec<Vec<u8>> = sizes.iter().map(|&(w, h)| vec![128u8; (w * h * 3) as usize]).collect();
    let mut frame_writes = Histogram::default();
    let joints = vec![0.1; obs_dim / 2];
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut next_frame = Instant::now();
    while Instant::now() < end {
        let now = clock.now_ns();
        state.publish(StateSample::new(now, &joints, &joints).context("state sample")?);
        if Instant::now() >= next_frame {
            for ((&(width, height), writer), data) in sizes.iter().zip(&mut frames_in).zip(&pixels) {
                let started = Instant::now();
                writer.write(&ImageView {
                    encoding: "rgb8",
                    width,
                    height,
                    step: width * 3,
                    data,
                    stamp_ns: now,
                })?;
                frame_writes.record(started.elapsed().as_nanos() as u64);
            }
            next_frame += Duration::from_millis(33);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (stats, plan_latency) = node.stop();
    let c = &stats.counters;
    let planner = diagnostics
        .lock()
        .as_ref()
        .map(|d| json!({"plan_errors": d.plan_errors, "steps_recorded_late": d.steps_recorded_late, "steps_skipped": d.steps_skipped}));
    emit(&format!(
        "{}\n",
        json!({
            "rate_hz": cfg.control.rate_hz, "seconds": a.seconds, "ticks": c.ticks,
            "samples": cfg.planner.samples, "goal": goal,
            "deadline_misses": stats.deadline_misses, "records_dropped": stats.records_dropped,
            "tick_latency": stats.tick_latency.summary_ms(), "tick_jitter": stats.tick_jitter.summary_ms(),
            // A plan still on its way to the tick when the run ends is timed but not installed.
            "plan_latency": plan_latency.summary_ms(), "plans": c.plans_installed,
            // The whole distribution: `serve --plan-times` draws each plan's time from it.
            "plan_latency_buckets": plan_latency.buckets_ms(), "hold": c.hold, "stop": c.stop,
            "waiting": c.waiting, "clipped": c.clipped, "rate_limited": c.rate_limited,
            "late_actions_dropped": c.late_dropped, "goal_held": c.goal_held, "planner": planner,
            "camera_size": sizes, "frame_write_latency": frame_writes.summary_ms(),
            "faults": Fault::ALL.iter().map(|f| (f.name(), c.faults[*f as usize])).collect::<std::collections::BTreeMap<_, _>>(),
        })
    ))
}

#[cfg(feature = "ros")]
fn run(a: RunArgs) -> Result<()> {
    // r2r reads the ROS arguments from the process command line itself.
    let _ = a.ros_args;
    df_planner::ros::run(a.config.as_deref())
}

#[cfg(not(feature = "ros"))]
fn run(a: RunArgs) -> Result<()> {
    if let Some(config) = &a.config {
        NodeConfig::load(config)?;
    }
    bail!(
        "this df_planner was built without the `ros` feature: build it in a sourced ROS 2 workspace \
         (colcon build, see README) or with `cargo build --features ros`; offline, use `df_planner replay`"
    )
}

/// `WIDTHxHEIGHT`, both at least 1.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parsed = text
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|&(w, h)| w >= 1 && h >= 1 && u64::from(w) * u64::from(h) * 3 <= u64::from(u32::MAX));
    parsed.ok_or_else(|| format!("expected WIDTHxHEIGHT such as 640x480, got {text:?}"))
}

/// A tick rate whose period is from 1 µs to 1 day, as the config's control.rate_hz.
fn parse_rate_hz(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|hz| (1.0 / 86_400.0..=1e6).contains(hz))
        .ok_or_else(|| format!("expected a rate from 1/86400 to 1e6 Hz, got {text:?}"))
}

/// A duration from 1 ms to 1 day.
fn parse_seconds(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| (0.001..=86_400.0).contains(s))
        .ok_or_else(|| format!("expected seconds from 0.001 to 86400, got {text:?}"))
}

/// An override that is either a value or `none` (unset).
fn value_or_none<T: std::str::FromStr>(flag: &str, expected: &str, text: &str) -> Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match text {
        "none" => Ok(None),
        value => {
            Ok(Some(value.parse().with_context(|| {
                format!("{flag}: expected {expected} or none, got {value}")
            })?))
        }
    }
}

/// An override naming a variant of a config enum, spelled as in the YAML.
fn variant<T: serde::de::DeserializeOwned>(flag: &str, expected: &str, text: &str) -> Result<T> {
    serde_json::from_value(json!(text)).with_context(|| format!("{flag}: expected {expected}, got {text}"))
}

/// How long each plan takes through the node's loop (`--plan-time-ms`, `--plan-times`).
fn plan_times(a: &ServeArgs) -> Result<Option<PlanTimes>> {
    if let Some(ms) = a.plan_time_ms {
        let d = Duration::try_from_secs_f64(ms / 1e3)
            .map_err(|_| anyhow::anyhow!("--plan-time-ms: expected a duration >= 0, got {ms}"))?;
        return Ok(Some(PlanTimes::Fixed(d.as_nanos() as i64)));
    }
    let Some(path) = &a.plan_times else { return Ok(None) };
    let origin = || format!("--plan-times {}", path.display());
    let text = std::fs::read_to_string(path).with_context(origin)?;
    let report: serde_json::Value = serde_json::from_str(&text).with_context(origin)?;
    let measured = MeasuredPlanTimes::from_bench_report(&report)
        .map_err(anyhow::Error::msg)
        .with_context(origin)?;
    Ok(Some(PlanTimes::Measured(measured)))
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut cfg = NodeConfig::load(&a.config)?;
    // A bad value given by a flag is reported by the config key it sets: name the flags too.
    let given = [
        ("--samples", a.samples.is_some()),
        ("--mcg", a.mcg.is_some()),
        ("--mcg-temperature", a.mcg_temperature.is_some()),
        ("--guidance-scale", a.guidance_scale.is_some()),
        ("--matrix", a.matrix.is_some()),
        ("--warm-start-level", a.warm_start_level.is_some()),
        ("--execute", a.execute.is_some()),
        ("--hold-radius", a.hold_radius.is_some()),
        ("--seed", a.seed.is_some()),
        ("--context-tokens", a.context_tokens.is_some()),
        ("--image-level", a.image_level.is_some()),
    ];
    let flags: Vec<&str> = given.iter().filter(|(_, on)| *on).map(|(flag, _)| *flag).collect();
    let origin = match flags.as_slice() {
        [] => a.config.display().to_string(),
        _ => format!("{} with {}", a.config.display(), flags.join(", ")),
    };
    let p = &mut cfg.planner;
    if let Some(n) = a.samples {
        p.samples = n;
    }
    if let Some(m) = &a.mcg {
        p.mcg = variant("--mcg", "futures, prior_futures or redraws", m)?;
    }
    if let Some(t) = &a.mcg_temperature {
        p.mcg_temperature = value_or_none("--mcg-temperature", "a temperature", t)?;
    }
    if let Some(g) = a.guidance_scale {
        p.guidance_scale = g;
    }
    if let Some(m) = &a.matrix {
        let u = match p.matrix {
            MatrixKind::Pyramid { uncertainty } | MatrixKind::Trapezoid { uncertainty } => uncertainty,
            _ => 1.0,
        };
        p.matrix = MatrixKind::from_name(m, u)?;
    }
    if let Some(w) = &a.warm_start_level {
        p.warm_start_level = value_or_none("--warm-start-level", "a level", w)?;
    }
    if let Some(seed) = a.seed {
        p.seed = seed;
    }
    if let Some(e) = &a.execute {
        cfg.serve.get_or_insert_with(Default::default).execute =
            variant("--execute", "diffused_actions or pd_controller", e)?;
    }
    if let Some(r) = &a.hold_radius {
        cfg.serve.get_or_insert_with(Default::default).hold_radius = value_or_none("--hold-radius", "a distance", r)?;
    }
    if let Some(n) = a.context_tokens {
        p.context_tokens = n;
    }
    if let Some(level) = a.image_level {
        p.image_level = level;
    }
    let planner = df_planner::node::planner(&cfg).context(origin.clone())?;
    let stdin = std::io::stdin();
    let plan_times = plan_times(&a)?;
    if planner.has_cameras() || a.node_loop {
        drop(planner);
        let mut bridge = Bridge::new(&cfg, plan_times)
            .map_err(anyhow::Error::msg)
            .context(origin)?;
        df_planner::serve::run(|line| bridge.handle(line), stdin.lock(), std::io::stdout().lock())?;
    } else if plan_times.is_some() {
        anyhow::bail!("--plan-time-ms / --plan-times: only through the node's loop (--node-loop, or a camera model)");
    } else {
        let mut server = Server::new(&cfg, planner).map_err(anyhow::Error::msg).context(origin)?;
        df_planner::serve::run(|line| server.handle(line), stdin.lock(), std::io::stdout().lock())?;
    }
    Ok(())
}
