//! The node's YAML configuration. Every field is documented here, with its default; unknown
//! fields are errors so that a typo cannot silently fall back to a default.
//!
//! A config may start from another: `base: other.yaml` (absolute, or relative to its own
//! folder) loads that config first, itself perhaps from a base, then lays this file over it.
//! Mappings merge key by key, except that one changing a variant (`kind:` or `form:`, as in
//! `matrix: {kind: trapezoid}`) replaces the base's, whose other fields belong to the old
//! variant; any other value (number, string, list, null) replaces the base's. A relative
//! `model.path` resolves from the package root of the config that names it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;
use thiserror::Error;

use crate::control::JointSelection;
use crate::diffusion::{GuidanceForm, MatrixKind, NoiseStreams};
use crate::frames::Resize;
use crate::model::RuntimeConfig;
use crate::planner::{GoalRewardConfig, McgForm};
use crate::ros::names::topic_name_error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("config {path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("config {path}: `{field}`: expected {expected}, got {got}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        expected: String,
        got: String,
    },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub model: ModelSection,
    #[serde(default)]
    pub planner: PlannerSection,
    pub control: ControlSection,
    pub safety: SafetySection,
    #[serde(default)]
    pub camera: CameraSection,
    #[serde(default)]
    pub topics: TopicsSection,
    /// How plans are executed between replans (the plan's actions, a PD controller tracking
    /// it, arrive-and-hold at the goal), by the node's control tick and `df_planner serve`
    /// alike; and where goals may lie (`goal_bounds`, `goal_keepout`).
    #[serde(default)]
    pub serve: Option<crate::serve::ServeSection>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The denoise graph; relative paths are resolved against the config file's folder's parent
    /// (the package root), so `onnx/models/x.onnx` works from a checkout and an install.
    pub path: PathBuf,
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlannerSection {
    /// Scheduling matrix over the planned tokens (default pyramid, u = 1).
    pub matrix: MatrixKind,
    /// Sampling steps S per token (default 10).
    pub sampling_steps: u32,
    /// Planned tokens after the context (default: max_tokens - context_tokens).
    pub horizon_tokens: Option<usize>,
    /// History tokens the window holds at most: the model's memory (default 1, the present
    /// token only).
    pub context_tokens: usize,
    /// Camera models: the image level given with observed images, 0 clean (default); > 0
    /// tells the model its images are noisy (the paper's trick for distractors).
    pub image_level: i64,
    /// Monte Carlo Guidance samples N; 1 = plain guidance (default 1).
    pub samples: usize,
    /// What the N samples are: `futures` (default; N futures share the executed tokens),
    /// `prior_futures` (the same, with only the executed tokens guided) or `redraws` (N draws
    /// of one plan's x0, after the official code's `ddim_repeats`); see planner::McgForm.
    pub mcg: McgForm,
    /// MCG's average over the futures: none (default) weights them evenly, the expected
    /// reward; τ > 0 weights each future's guidance by softmax(its reward / τ) at each row,
    /// towards the futures the planner can choose (sampler::SamplerSettings). A probe: it did
    /// not help on Medium (docs/maze2d.md, "Futures weighted by their reward").
    pub mcg_temperature: Option<f64>,
    /// Guidance strength (default 0: no guidance).
    pub guidance_scale: f64,
    /// {form: mean_shift} (default), {form: score, max_gain: G} or {form: next_state}; see
    /// onnx/CONTRACT.md.
    pub guidance_form: GuidanceForm,
    /// DDIM η (default 0).
    pub eta: f64,
    /// Replan every this many model steps (default 1), at most a plan's length (horizon_tokens
    /// × frame_stack); a plan that fails is retried once at the next step, off the schedule.
    pub replan_every: usize,
    /// Seed of the sampler's noise; replay is byte-identical for a seed (default 0).
    pub seed: u64,
    /// `shared` (default): the batch draws from one noise stream; `per_sample`: each sample
    /// from its own, sample 0 drawing what the same planner without MCG draws, so that MCG
    /// and no MCG compared on the same seeds differ only by MCG (common random numbers).
    pub noise_streams: NoiseStreams,
    /// Warm start: re-noise the previous plan (shifted by the executed tokens) to this matrix
    /// level instead of starting from pure noise (default: none, always cold).
    pub warm_start_level: Option<u32>,
    /// Goal reward for guidance (default: none).
    pub goal: Option<GoalRewardConfig>,
}

impl Default for PlannerSection {
    fn default() -> Self {
        Self {
            matrix: MatrixKind::Pyramid { uncertainty: 1.0 },
            sampling_steps: 10,
            horizon_tokens: None,
            context_tokens: 1,
            image_level: 0,
            samples: 1,
            mcg: McgForm::Futures,
            mcg_temperature: None,
            guidance_scale: 0.0,
            guidance_form: GuidanceForm::MeanShift,
            eta: 0.0,
            replan_every: 1,
            seed: 0,
            noise_streams: NoiseStreams::Shared,
            warm_start_level: None,
            goal: None,
        }
    }
}

/// What a tick publishes when the plan cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Repeat the last published action.
    Hold,
    /// Publish `control.stop_action`.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Control ticks per second; one action is published per tick.
    pub rate_hz: f64,
    /// Time between consecutive planned actions: the model's step (seconds).
    pub action_dt_s: f64,
    /// Hold or stop when the plan is missing, exhausted, stale or invalid.
    pub fallback: Fallback,
    /// The action `stop` publishes; also what `hold` holds before any plan exists, unless the
    /// actions are position targets (`measured_action`).
    pub stop_action: Vec<f64>,
    /// Holding longer than this (seconds) without a plan action publishes `stop_action`
    /// instead: a held force or velocity must not push on forever. Absent: hold indefinitely
    /// (position targets, where holding is the safe state).
    pub hold_timeout_s: Option<f64>,
    /// Actions that are position targets: for each action dimension, the index among the
    /// state's positions (`topics.state_joints` order) that measures it. The node publishes
    /// nothing until a fresh state says where the robot is; from there `hold` keeps it in
    /// place until a plan moves it, `stop` moves it to `stop_action` at `safety.max_rate`, and
    /// the first plan action is rate-limited from it; the same again after the clock goes back
    /// (a simulator reset). Empty (default): actions are not positions (forces, velocities);
    /// required for the position outputs `joint_trajectory` and `pose_stamped`.
    #[serde(default)]
    pub measured_action: Vec<usize>,
}

impl ControlSection {
    /// Time between control ticks.
    pub fn tick(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate_hz)
    }

    /// Time between planned actions (the model's step).
    pub fn step(&self) -> Duration {
        Duration::from_secs_f64(self.action_dt_s)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetySection {
    /// Per-dimension lower limits of the published action.
    pub action_min: Vec<f64>,
    /// Per-dimension upper limits.
    pub action_max: Vec<f64>,
    /// Per-dimension maximum change per second (rate limit).
    pub max_rate: Vec<f64>,
    /// A camera frame older than this is stale (seconds); ignored when the camera is not required.
    pub camera_timeout_s: f64,
    /// A robot state older than this is stale (seconds).
    pub state_timeout_s: f64,
    /// A plan whose first action is older than this (seconds) is not executed (fault
    /// plan_too_old): a hung or failing planner falls back instead of running its last plan
    /// open loop to the end. Absent: a plan runs to its end (fault plan_exhausted).
    pub max_plan_age_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraSection {
    /// Whether planning needs camera frames (a stale camera is then a fault).
    pub required: bool,
    /// Expected image size for a model without camera inputs (a camera model's contract gives
    /// its own); other sizes are rejected and counted, unless `resize` is `area`.
    pub width: u32,
    pub height: u32,
    /// Frames the ring buffer holds between the camera callback and the planner.
    pub ring_capacity: usize,
    /// An image of another size than the model's: `exact` rejects it (counted), `area` crops
    /// its centre to the model's aspect ratio and averages it down (or repeats it up).
    pub resize: Resize,
    /// Camera models: the topic of each camera role (`front: /arm/front/image_raw`), where it
    /// is not the one the model was trained with (its contract's `cameras.inputs[].topic`).
    pub topics: std::collections::BTreeMap<String, String>,
}

impl Default for CameraSection {
    fn default() -> Self {
        Self {
            required: false,
            width: 32,
            height: 32,
            ring_capacity: 4,
            resize: Resize::Exact,
            topics: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionType {
    /// std_msgs/Float64MultiArray: the action of the tick.
    Float64MultiArray,
    /// trajectory_msgs/JointTrajectory: the remaining plan as a time-stamped chunk ending at rest.
    JointTrajectory,
    /// geometry_msgs/PoseStamped: the action as an end-effector position (x, y[, z]); refused
    /// for an action of more dimensions (a gripper would be dropped).
    PoseStamped,
}

/// Topic names are ROS 2 names, checked when the config loads: absolute (`/joint_states`)
/// stays as written; relative (`joint_states`) goes under the node's namespace and private
/// (`~/action`, the default outputs) under the namespace and the node's name, so a launch
/// `namespace` moves them. Replay resolves them the same way (`replay --namespace`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsSection {
    /// sensor_msgs/Image input.
    pub image: String,
    /// sensor_msgs/JointState input: the observation is position then velocity.
    pub state: String,
    /// The state's joints by name, in the model's observation order; other joints in the
    /// message are ignored; a message without one of them, or naming one twice, is rejected.
    /// Empty: every joint, in the message's order.
    pub state_joints: Vec<String>,
    /// Action output.
    pub action: String,
    pub action_type: ActionType,
    /// Joint names for JointTrajectory output (one per action dimension).
    pub joint_names: Vec<String>,
    /// Frame id for PoseStamped output.
    pub frame_id: String,
    /// PoseStamped output: the orientation of every pose, a unit quaternion [x, y, z, w] in
    /// `frame_id` (default identity; a tool pointing down is usually [1, 0, 0, 0]); within 1e-3
    /// of unit length, normalized when sent.
    pub pose_orientation: [f64; 4],
    /// PoseStamped output: the z of a 2-D action's poses (the table's height, say).
    pub pose_z: f64,
    /// Goals from a topic; null: the goal stays `planner.goal.target`.
    pub goal: Option<GoalTopic>,
    /// diagnostic_msgs/DiagnosticArray output.
    pub diagnostics: String,
    /// Plans' first tokens (std_msgs/Float64MultiArray), for inspection.
    pub plan: String,
    /// Replay only: recorded actions (std_msgs/Float64MultiArray) to compare with.
    pub recorded_action: Option<String>,
}

/// geometry_msgs/PoseStamped goals (e.g. RViz's 2D Goal Pose on /goal_pose): a goal's x and y
/// replace the goal of `planner.goal` (whose `target` is the goal until one arrives), and the
/// planner replans at its next step, cold (the replan schedule keeps its phase). A goal
/// stamped in another frame than `frame_id` (goals are not transformed), outside
/// `serve.goal_bounds` or inside a `serve.goal_keepout` box is refused, logged and counted in
/// the diagnostics, and the goal before it stays. A message with an empty frame id passes the
/// frame check (`ros2 topic pub` leaves it empty).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalTopic {
    pub topic: String,
    /// The frame of planner.goal's position dims (a fixed frame such as map, not the robot's).
    pub frame_id: String,
}

impl TopicsSection {
    /// `pose_orientation` at unit length (the config may be 1e-3 off it).
    pub fn unit_pose_orientation(&self) -> [f64; 4] {
        let norm = quaternion_norm(self.pose_orientation);
        self.pose_orientation.map(|v| v / norm)
    }
}

fn quaternion_norm(q: [f64; 4]) -> f64 {
    q.iter().map(|v| v * v).sum::<f64>().sqrt()
}

impl Default for TopicsSection {
    fn default() -> Self {
        Self {
            image: "/camera/image_raw".into(),
            state: "/joint_states".into(),
            state_joints: Vec::new(),
            action: "~/action".into(),
            action_type: ActionType::Float64MultiArray,
            joint_names: Vec::new(),
            frame_id: "base_link".into(),
            pose_orientation: [0.0, 0.0, 0.0, 1.0],
            pose_z: 0.0,
            goal: None,
            diagnostics: "/diagnostics".into(),
            plan: "~/plan".into(),
            recorded_action: None,
        }
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let mut cfg = Self::parse(&text, path)?;
        if cfg.model.path.is_relative() {
            cfg.model.path = model_in_package(&package_root(path), &cfg.model.path);
        }
        Ok(cfg)
    }

    /// Parse and validate; `path` names the source in errors, and a `base` is found from its
    /// folder.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg = match serde_yaml_ng::from_str::<Value>(text) {
            // Not YAML: say where, before any field is looked at (a `base` would be refused as
            // an unknown field by the plain reading below).
            Err(e) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    message: e.to_string(),
                })
            }
            Ok(value) if value.get(BASE).is_some() => {
                let mut chain = vec![Link {
                    path: canonical(path),
                    text: text.to_owned(),
                }];
                let merged = over_bases(value, path, &mut chain)?;
                Self::deserialize_reporting(&merged, path).map_err(|e| match e {
                    ConfigError::Field { path, field, message } => ConfigError::Field {
                        path,
                        message: format!("{message} ({})", where_set(&chain, &merged, &field)),
                        field,
                    },
                    other => other,
                })?
            }
            // Without a base, straight from the text: errors keep their lines.
            Ok(_) => Self::deserialize_reporting(serde_yaml_ng::Deserializer::from_str(text), path)?,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Deserialize, naming the field that failed.
    fn deserialize_reporting<'de, D>(de: D, path: &Path) -> Result<Self, ConfigError>
    where
        D: serde::Deserializer<'de>,
        D::Error: std::fmt::Display,
    {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let message = e.into_inner().to_string();
            // serde_yaml_ng starts its message with the path (or its parent's).
            let mut message = match message.split_once(": ") {
                Some((head, rest)) if field.starts_with(head) => rest.to_owned(),
                _ => message,
            };
            if field == MERGE_KEY || field.ends_with(&format!(".{MERGE_KEY}")) {
                message += "; YAML merge keys are not applied, a config can start from another with `base: other.yaml`";
            }
            if field == "." {
                ConfigError::Read {
                    path: path.to_owned(),
                    message,
                }
            } else {
                ConfigError::Field {
                    path: path.to_owned(),
                    field,
                    message,
                }
            }
        })
    }

    /// Action dimension, as the limits give it.
    pub fn action_dim(&self) -> usize {
        self.safety.action_min.len()
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field, expected: String, got: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            expected,
            got,
        };
        let n = self.action_dim();
        for (field, v) in [
            ("safety.action_max", &self.safety.action_max),
            ("safety.max_rate", &self.safety.max_rate),
            ("control.stop_action", &self.control.stop_action),
        ] {
            if v.len() != n {
                return Err(bad(
                    field,
                    format!("{n} values, as many as safety.action_min has"),
                    format!("{}", v.len()),
                ));
            }
        }
        if n == 0 {
            return Err(bad("safety.action_min", "at least one dimension".into(), "[]".into()));
        }
        let measured = self.control.measured_action.len();
        if measured != 0 && measured != n {
            return Err(bad(
                "control.measured_action",
                format!("[] (actions are not positions) or {n} state indices, one per action dimension"),
                format!("{measured} indices"),
            ));
        }
        if measured == 0 && self.topics.action_type != ActionType::Float64MultiArray {
            // Position targets held or stopped before any measurement would command
            // stop_action wherever the arm is.
            return Err(bad(
                "control.measured_action",
                "the state indices the actions are positions of: joint_trajectory and pose_stamped outputs are position targets".into(),
                "[]".into(),
            ));
        }
        if n > 3 && self.topics.action_type == ActionType::PoseStamped {
            // The dimensions after x, y, z (a gripper) would be dropped on the way out.
            return Err(bad(
                "topics.action_type",
                "float64_multi_array or joint_trajectory for an action of more than 3 dimensions: a pose carries x, y, z only".into(),
                format!("pose_stamped for {n} dimensions"),
            ));
        }
        if measured != 0 && self.topics.state_joints.is_empty() {
            // Without names a JointState's positions may be the observation or half of it.
            return Err(bad(
                "control.measured_action",
                "topics.state_joints naming the joints it indexes".into(),
                "no topics.state_joints".into(),
            ));
        }
        if n > crate::control::live::MAX_ACTION_DIM {
            return Err(bad(
                "safety.action_min",
                format!(
                    "at most {} dimensions (a tick record's fixed size)",
                    crate::control::live::MAX_ACTION_DIM
                ),
                n.to_string(),
            ));
        }
        for i in 0..n {
            let (lo, hi) = (self.safety.action_min[i], self.safety.action_max[i]);
            if !lo.is_finite() {
                return Err(bad(
                    "safety.action_min",
                    "finite values".into(),
                    format!("{lo} at [{i}]"),
                ));
            }
            if !(hi.is_finite() && lo <= hi) {
                return Err(bad(
                    "safety.action_max",
                    format!("finite and >= action_min[{i}] = {lo}"),
                    format!("{hi}"),
                ));
            }
            if self.safety.max_rate[i].is_nan() || self.safety.max_rate[i] <= 0.0 {
                return Err(bad(
                    "safety.max_rate",
                    "values > 0".into(),
                    format!("{}", self.safety.max_rate[i]),
                ));
            }
            let stop = self.control.stop_action[i];
            if !(lo..=hi).contains(&stop) {
                return Err(bad(
                    "control.stop_action",
                    format!("within [{lo}, {hi}] at index {i}"),
                    format!("{stop}"),
                ));
            }
        }
        let positive = |field, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(bad(field, "a finite number > 0".into(), format!("{v}")))
            }
        };
        // Periods from 1 µs to a day: shorter ones round to 0 ns (a loop that never
        // advances), longer ones overflow a Duration.
        let period = |field, expected: &str, v: f64, period_s: f64| {
            if (1e-6..=86_400.0).contains(&period_s) {
                Ok(())
            } else {
                Err(bad(field, format!("{expected} from 1 µs to 1 day"), format!("{v}")))
            }
        };
        let (rate, dt) = (self.control.rate_hz, self.control.action_dt_s);
        positive("control.rate_hz", rate)?;
        period("control.rate_hz", "a rate whose period is", rate, 1.0 / rate)?;
        positive("control.action_dt_s", dt)?;
        period("control.action_dt_s", "a period", dt, dt)?;
        for (field, v) in [
            ("safety.camera_timeout_s", Some(self.safety.camera_timeout_s)),
            ("safety.state_timeout_s", Some(self.safety.state_timeout_s)),
            ("safety.max_plan_age_s", self.safety.max_plan_age_s),
            ("control.hold_timeout_s", self.control.hold_timeout_s),
        ] {
            if let Some(v) = v {
                positive(field, v)?;
                period(field, "a time", v, v)?;
            }
        }
        // A plan is replaced once a replan interval later at the soonest.
        let replan_s = self.planner.replan_every as f64 * dt;
        if let Some(age) = self.safety.max_plan_age_s.filter(|&age| age <= replan_s) {
            return Err(bad(
                "safety.max_plan_age_s",
                format!(
                    "more than the replan interval, planner.replan_every x control.action_dt_s = {replan_s} s, plus the plans' latency"
                ),
                format!("{age}"),
            ));
        }
        if self.planner.samples == 0 {
            return Err(bad("planner.samples", ">= 1".into(), "0".into()));
        }
        if self.planner.replan_every == 0 {
            return Err(bad("planner.replan_every", ">= 1".into(), "0".into()));
        }
        if self.camera.ring_capacity == 0 {
            return Err(bad("camera.ring_capacity", ">= 1".into(), "0".into()));
        }
        for (field, v) in [
            ("camera.width", self.camera.width),
            ("camera.height", self.camera.height),
        ] {
            if v == 0 {
                return Err(bad(field, ">= 1 pixel".into(), "0".into()));
            }
        }
        if let Err(e) = JointSelection::new(&self.topics.state_joints) {
            return Err(bad("topics.state_joints", e.expected, e.got));
        }
        if self.topics.action_type == ActionType::JointTrajectory && self.topics.joint_names.len() != n {
            return Err(bad(
                "topics.joint_names",
                format!("{n} names for joint_trajectory output"),
                format!("{}", self.topics.joint_names.len()),
            ));
        }
        let q = self.topics.pose_orientation;
        let norm = quaternion_norm(q);
        // Hand-typed values (0.7071 for √½) are a little off unit length: they are normalized
        // where the messages are made.
        if !(q.iter().all(|v| v.is_finite()) && (norm - 1.0).abs() < 1e-3) {
            return Err(bad(
                "topics.pose_orientation",
                "a unit quaternion [x, y, z, w] (to 1e-3)".into(),
                format!("{q:?} (norm {norm})"),
            ));
        }
        if !self.topics.pose_z.is_finite() {
            return Err(bad(
                "topics.pose_z",
                "a finite height".into(),
                self.topics.pose_z.to_string(),
            ));
        }
        let t = &self.topics;
        let mut named = vec![
            ("topics.image", t.image.as_str()),
            ("topics.state", &t.state),
            ("topics.action", &t.action),
            ("topics.diagnostics", &t.diagnostics),
            ("topics.plan", &t.plan),
        ];
        named.extend(t.recorded_action.as_deref().map(|n| ("topics.recorded_action", n)));
        named.extend(t.goal.as_ref().map(|g| ("topics.goal.topic", g.topic.as_str())));
        named.extend(self.camera.topics.values().map(|n| ("camera.topics", n.as_str())));
        for (field, name) in named {
            if let Some(why) = topic_name_error(name) {
                return Err(bad(field, format!("a ROS 2 topic name ({why})"), format!("{name:?}")));
            }
        }
        if let Some(r) = self.planner.goal.as_ref().and_then(|g| g.reached_within) {
            if !(r.is_finite() && r > 0.0) {
                return Err(bad(
                    "planner.goal.reached_within",
                    "a distance > 0, or null".into(),
                    format!("{r}"),
                ));
            }
        }
        if let (Some(goal), None) = (&self.topics.goal, &self.planner.goal) {
            return Err(bad(
                "topics.goal",
                "null, or a planner.goal section (the goal reward whose goal it sets)".into(),
                format!("topic {:?} with no planner.goal", goal.topic),
            ));
        }
        Ok(())
    }
}

/// The key that names a config's base.
const BASE: &str = "base";
/// YAML's merge key, which serde_yaml_ng reads as a plain (unknown) field.
const MERGE_KEY: &str = "<<";

/// A config on a chain of bases: its canonical path and its text.
struct Link {
    path: PathBuf,
    text: String,
}

/// `value` (the config at `path`) laid over its chain of bases; `chain` holds the configs
/// already on it, to refuse a cycle, and gets each base added.
fn over_bases(mut value: Value, path: &Path, chain: &mut Vec<Link>) -> Result<Value, ConfigError> {
    let Some(base) = value.as_mapping_mut().and_then(|m| m.remove(BASE)) else {
        return Ok(value);
    };
    let bad = |message: String| ConfigError::Field {
        path: path.to_owned(),
        field: BASE.into(),
        message,
    };
    let Value::String(base) = base else {
        let got = serde_yaml_ng::to_string(&base).unwrap_or_default();
        return Err(bad(format!(
            "expected the path of another config (absolute, or relative to this one's folder), got {}",
            got.trim()
        )));
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(&base);
    let text = std::fs::read_to_string(&base_path).map_err(|e| bad(format!("{}: {e}", base_path.display())))?;
    let base_canonical = canonical(&base_path);
    if chain.iter().any(|link| link.path == base_canonical) {
        return Err(bad(format!(
            "{} is already on the chain of bases ({}): a cycle",
            base_path.display(),
            chain_names(chain)
        )));
    }
    chain.push(Link {
        path: base_canonical,
        text: text.clone(),
    });
    let mut base_value: Value = serde_yaml_ng::from_str(&text).map_err(|e| ConfigError::Read {
        path: base_path.clone(),
        message: e.to_string(),
    })?;
    // The base's own relative model path, from the base's package root (as `load` does).
    if let Some(Value::String(model)) = base_value.get_mut("model").and_then(|m| m.get_mut("path")) {
        if Path::new(model.as_str()).is_relative() {
            *model = model_in_package(&package_root(&base_path), Path::new(model.as_str()))
                .to_string_lossy()
                .into_owned();
        }
    }
    Ok(laid_over(over_bases(base_value, &base_path, chain)?, value))
}

/// Where a config's relative model path starts: its folder's parent (`<package>/config/x.yaml`
/// → `<package>`). The folder is resolved first, so that `x.yaml` given from inside `config/`,
/// or a path through `..`, finds the same package; a link to the config file itself is not
/// followed (an install's config links keep the install's models).
fn package_root(config: &Path) -> PathBuf {
    let folder = config
        .parent()
        .filter(|f| !f.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let folder = folder.canonicalize().unwrap_or_else(|_| folder.to_owned());
    folder.parent().map_or(folder.clone(), Path::to_owned)
}

/// A relative model path in the package at `root`. In a colcon install (`share/df_planner`)
/// the models are in `models/`, not `onnx/models/`: cargo-ament-build installs each
/// `install_to_share` entry under its last name only.
fn model_in_package(root: &Path, model: &Path) -> PathBuf {
    let in_tree = root.join(model);
    if !in_tree.exists() {
        if let Ok(name) = model.strip_prefix("onnx/models") {
            let installed = root.join("models").join(name);
            if installed.exists() {
                return installed;
            }
        }
    }
    in_tree
}

/// A config's path as the chain of bases records it: canonical where it exists.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

/// Where in the chain `field` (of the merged config `merged`) was set: the first config, from
/// this one down, whose text has the key (the one whose value won), and for a mapping, which
/// merges key by key, every other config that has it too; the chain itself where no line can
/// be told.
fn where_set(chain: &[Link], merged: &Value, field: &str) -> String {
    let mut places = Vec::new();
    for link in chain {
        match line_of_field(&link.text, field) {
            Ok(Some(line)) => places.push(format!("{} line {line}", link.path.display())),
            Ok(None) => {}
            Err(()) => break,
        }
    }
    let keys = field_keys(field);
    let is_mapping = keys
        .iter()
        .try_fold(merged, |value, key| value.get(*key))
        .is_some_and(Value::is_mapping);
    match places.as_slice() {
        [] => format!("in this config or its bases: {}", chain_names(chain)),
        [first, below @ ..] if is_mapping && !below.is_empty() => {
            format!("at {first}, merged over {}", below.join(", "))
        }
        [first, ..] => format!("at {first}"),
    }
}

/// The mapping keys of a field path as serde_path_to_error writes it (`a.b[2].c`: a, b).
fn field_keys(field: &str) -> Vec<&str> {
    field
        .split('[')
        .next()
        .unwrap_or_default()
        .split('.')
        .filter(|k| !k.is_empty())
        .collect()
}

/// The line (1-based) of the key `field` names (dotted, as serde_path_to_error writes it; an
/// index `[i]` and what follows it are left out) in the YAML `text`; None where no key lies on
/// that path, Err where the walk could not tell (a key that is not a string before it). The
/// document is walked to the key, which then stops the walk with an error that serde_yaml_ng
/// marks with its place.
fn line_of_field(text: &str, field: &str) -> Result<Option<usize>, ()> {
    use serde::de::{DeserializeSeed, Error, IgnoredAny, MapAccess, Visitor};

    const FOUND: &str = "df_planner: the key is here";
    /// Walks the mappings along `keys`.
    struct Seek<'a>(&'a [&'a str]);
    /// Reads a key: whether it is `name`; the last key of the path fails instead, inside the
    /// key's own scalar, so that the error carries the key's place.
    struct Key<'a> {
        name: &'a str,
        last: bool,
    }
    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Seek<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Some((name, rest)) = self.0.split_first() else {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(());
            };
            while let Some(matched) = map.next_key_seed(Key {
                name,
                last: rest.is_empty(),
            })? {
                match matched {
                    true => map.next_value_seed(Seek(rest))?,
                    // The rest of the mapping is read through, as the deserializer wants it.
                    false => map.next_value::<IgnoredAny>().map(drop)?,
                }
            }
            Ok(())
        }
    }
    impl<'de> DeserializeSeed<'de> for Key<'_> {
        type Value = bool;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for Key<'_> {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E: Error>(self, key: &str) -> Result<bool, E> {
            match key == self.name {
                true if self.last => Err(E::custom(FOUND)),
                matched => Ok(matched),
            }
        }
    }
    let keys = field_keys(field);
    match Seek(&keys).deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        Ok(()) => Ok(None),
        // serde_yaml_ng puts the path in front of the message.
        Err(e) if e.to_string().contains(FOUND) => Ok(e.location().map(|at| at.line())),
        Err(_) => Err(()),
    }
}

fn chain_names(chain: &[Link]) -> String {
    chain
        .iter()
        .map(|link| link.path.display().to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Keys that select an enum variant (`matrix.kind`, `planner.goal.aggregate.kind`,
/// `guidance_form.form`).
const VARIANT_TAGS: [&str; 2] = ["kind", "form"];

/// `over` laid over `base`: mappings merge key by key (keeping the base's order), unless `over`
/// changes the variant; anything else replaces.
fn laid_over(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut base), Value::Mapping(over)) if !changes_variant(&base, &over) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(below) => *below = laid_over(std::mem::take(below), value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
            Value::Mapping(base)
        }
        (_, over) => over,
    }
}

fn changes_variant(base: &serde_yaml_ng::Mapping, over: &serde_yaml_ng::Mapping) -> bool {
    VARIANT_TAGS
        .iter()
        .any(|tag| matches!((base.get(*tag), over.get(*tag)), (Some(a), Some(b)) if a != b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn line_of_field_finds_a_key_in_block_and_flow_style() {
        let text = "model:\n  path: m.onnx\nplanner:\n  matrix: {kind: pyramid, uncertainty: 2.0}\n  samples: 4\n\
                    safety:\n  action_min: [-1, -1]\n";
        assert_eq!(super::line_of_field(text, "planner.samples"), Ok(Some(5)));
        assert_eq!(super::line_of_field(text, "planner.matrix.uncertainty"), Ok(Some(4)));
        assert_eq!(super::line_of_field(text, "planner"), Ok(Some(3)));
        assert_eq!(super::line_of_field(text, "safety.action_min[1]"), Ok(Some(7)));
        assert_eq!(super::line_of_field(text, "planner.eta"), Ok(None));
        // A path through a scalar, or a document that is not a mapping: the walk cannot tell.
        assert_eq!(super::line_of_field(text, "model.path.deeper"), Err(()));
        assert_eq!(super::line_of_field("[1, 2]", "planner"), Err(()));
    }
}
