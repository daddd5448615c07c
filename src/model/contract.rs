//! The ONNX contract (onnx/CONTRACT.md): what a Diffusion Forcing model tells the controller
//! about itself, parsed from the model's `df_planner.contract` metadata and validated.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::diffusion::{AlphaBar, ScheduleError};
use crate::ros::names::topic_name_error;

/// The metadata_props key that holds the contract JSON.
pub const METADATA_KEY: &str = "df_planner.contract";
/// Contract major version this build understands.
pub const CONTRACT_MAJOR: u32 = 1;

#[derive(Debug, Error)]
pub enum ContractError {
    #[error("{METADATA_KEY}: not valid contract JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{METADATA_KEY}: field `{path}`: {message}")]
    Field { path: String, message: String },
    #[error("{field}: expected {expected}, got {got}")]
    Invalid {
        field: &'static str,
        expected: String,
        got: String,
    },
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Parameterization {
    X0,
    Eps,
    V,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleName {
    Linear,
    Cosine,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Action,
    Observation,
    Reward,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Graphs {
    pub denoise: String,
    pub denoise_vjp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLayout {
    pub observation_dim: usize,
    pub action_dim: usize,
    pub frame_stack: usize,
    pub reward: bool,
    pub field_order: Vec<Field>,
    pub frame_dim: usize,
    pub token_dim: usize,
}

impl TokenLayout {
    /// Offset of `field` inside a frame, if the layout has it.
    pub fn offset(&self, field: Field) -> Option<usize> {
        let mut offset = 0;
        for &f in &self.field_order {
            if f == field {
                return Some(offset);
            }
            offset += self.width(f);
        }
        None
    }

    pub fn width(&self, field: Field) -> usize {
        match field {
            Field::Action => self.action_dim,
            Field::Observation => self.observation_dim,
            Field::Reward => usize::from(self.reward),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// Farther than this from the training data, a value is a sensor glitch or a misconfiguration,
/// not a state: in the f32 model it overflows where a layer squares it (about 1e19), and well
/// before that it plans nonsense.
pub const MAX_STANDARD_DEVIATIONS: f64 = 1e3;

impl Normalization {
    /// The first of `values` (frame fields from index `offset` on) that lies more than
    /// `MAX_STANDARD_DEVIATIONS` from its mean: (its index in `values`, it, how far). Values
    /// past the frame's end are not checked (callers check lengths first).
    pub fn first_beyond_limit(&self, offset: usize, values: &[f64]) -> Option<(usize, f64, f64)> {
        let fields = self.mean.iter().zip(&self.std).skip(offset);
        values
            .iter()
            .zip(fields)
            .enumerate()
            .find_map(|(k, (&v, (mean, std)))| {
                let deviations = ((v - mean) / std).abs();
                (deviations > MAX_STANDARD_DEVIATIONS).then_some((k, v, deviations))
            })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionSpec {
    pub timesteps: usize,
    pub schedule: ScheduleName,
    pub alphas_cumprod: Vec<f64>,
    pub parameterization: Parameterization,
    pub stabilization_level: i64,
    pub noise_clip: f32,
}

/// One camera input of a camera model (contract 1.1): what its frames must be.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraInput {
    pub role: String,
    pub topic: String,
    pub encoding: String,
    pub width: u32,
    pub height: u32,
}

/// A camera model's extra inputs `images` [B, T, N, H, W, 3] and `image_level` [B, T]
/// (onnx/CONTRACT.md, "Camera models").
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSpec {
    pub inputs: Vec<CameraInput>,
    /// Levels 0 (clean) .. image_levels - 1 (noisy); image_levels = no image.
    pub image_levels: i64,
    pub noise_std_per_level: f64,
}

impl CameraSpec {
    /// (cameras, height, width) of one token's images: every camera has the same size (a
    /// validated contract says so).
    pub fn frame_shape(&self) -> (usize, usize, usize) {
        let first = &self.inputs[0];
        (self.inputs.len(), first.height as usize, first.width as usize)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub dataset_sha256: String,
    pub train_steps: u64,
    pub git_commit: String,
    pub exported_at: String,
    pub torch: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelContract {
    pub contract_version: String,
    pub graphs: Graphs,
    pub layout: TokenLayout,
    pub normalization: Normalization,
    pub diffusion: DiffusionSpec,
    pub max_tokens: usize,
    pub causal: bool,
    pub cond_dim: usize,
    /// Contract 1.1: present on models that see camera images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cameras: Option<CameraSpec>,
    pub provenance: Provenance,
}

impl ModelContract {
    pub fn from_json(text: &str) -> Result<Self, ContractError> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let contract: Self = serde_path_to_error::deserialize(value).map_err(|e| ContractError::Field {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        contract.validate()?;
        Ok(contract)
    }

    pub fn alpha_bar(&self) -> Result<AlphaBar, ScheduleError> {
        AlphaBar::new(self.diffusion.alphas_cumprod.clone())
    }

    fn validate(&self) -> Result<(), ContractError> {
        let major = self
            .contract_version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if major != Some(CONTRACT_MAJOR) {
            return Err(invalid(
                "contract_version",
                format!("{CONTRACT_MAJOR}.x"),
                &self.contract_version,
            ));
        }
        let l = &self.layout;
        let mut order = l.field_order.clone();
        order.sort_by_key(|f| *f as u8);
        order.dedup();
        if order.len() != l.field_order.len()
            || !l.field_order.contains(&Field::Action)
            || !l.field_order.contains(&Field::Observation)
        {
            return Err(invalid(
                "layout.field_order",
                "action and observation once each, reward at most once",
                format!("{:?}", l.field_order),
            ));
        }
        if l.reward {
            // No port feeds the reward a context frame received: it would be 0 in every frame.
            return Err(invalid(
                "layout.reward",
                "false (the planner has no reward input)",
                true,
            ));
        }
        if l.field_order.contains(&Field::Reward) != l.reward {
            return Err(invalid(
                "layout.field_order",
                format!("reward listed iff layout.reward = {}", l.reward),
                format!("{:?}", l.field_order),
            ));
        }
        // Sizes from a file: checked arithmetic, so that absurd ones are refused, not wrapped.
        for (field, size) in [
            ("layout.action_dim", l.action_dim),
            ("layout.observation_dim", l.observation_dim),
            ("layout.frame_stack", l.frame_stack),
            ("max_tokens", self.max_tokens),
        ] {
            if size > MAX_SIZE {
                return Err(invalid(field, format!("at most {MAX_SIZE}"), size));
            }
        }
        let frame_dim = l.action_dim + l.observation_dim + usize::from(l.reward);
        if l.frame_dim != frame_dim {
            return Err(invalid("layout.frame_dim", frame_dim, l.frame_dim));
        }
        if l.frame_stack == 0 {
            return Err(invalid("layout.frame_stack", ">= 1", 0));
        }
        if l.token_dim != l.frame_stack * frame_dim {
            return Err(invalid("layout.token_dim", l.frame_stack * frame_dim, l.token_dim));
        }
        for (field, v) in [
            ("normalization.mean", &self.normalization.mean),
            ("normalization.std", &self.normalization.std),
        ] {
            if v.len() != frame_dim {
                return Err(invalid(
                    field,
                    format!("{frame_dim} values (one per frame field)"),
                    v.len(),
                ));
            }
        }
        if let Some(i) = self.normalization.std.iter().position(|s| !(*s > 0.0 && s.is_finite())) {
            return Err(invalid(
                "normalization.std",
                "finite values > 0",
                format!("{} at index {i}", self.normalization.std[i]),
            ));
        }
        if let Some(i) = self.normalization.mean.iter().position(|m| !m.is_finite()) {
            return Err(invalid(
                "normalization.mean",
                "finite values",
                format!("{} at index {i}", self.normalization.mean[i]),
            ));
        }
        let d = &self.diffusion;
        if d.alphas_cumprod.len() != d.timesteps {
            return Err(invalid(
                "diffusion.alphas_cumprod",
                format!("{} entries (diffusion.timesteps)", d.timesteps),
                d.alphas_cumprod.len(),
            ));
        }
        AlphaBar::new(d.alphas_cumprod.clone())?;
        if !(0..d.timesteps as i64).contains(&d.stabilization_level) {
            return Err(invalid(
                "diffusion.stabilization_level",
                format!("0..{}", d.timesteps),
                d.stabilization_level,
            ));
        }
        if d.noise_clip.is_nan() || d.noise_clip <= 0.0 {
            return Err(invalid("diffusion.noise_clip", "> 0", d.noise_clip));
        }
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", ">= 1", 0));
        }
        if self.cond_dim != 0 {
            // Reserved: the runtime feeds no `cond` input.
            return Err(invalid("cond_dim", "0 (version 1.x has no cond input)", self.cond_dim));
        }
        if !self.causal {
            return Err(invalid(
                "causal",
                "true (the planner relies on causal attention)",
                false,
            ));
        }
        if let Some(cameras) = &self.cameras {
            if cameras.inputs.is_empty() {
                return Err(invalid("cameras.inputs", "at least one camera", "none"));
            }
            for c in &cameras.inputs {
                if c.encoding != "rgb8" {
                    return Err(invalid("cameras.inputs[].encoding", "rgb8", &c.encoding));
                }
                if let Some(why) = topic_name_error(&c.topic) {
                    return Err(invalid(
                        "cameras.inputs[].topic",
                        format!("a ROS 2 topic name ({why})"),
                        format!("{:?}", c.topic),
                    ));
                }
                if c.width == 0 || c.height == 0 || c.width > MAX_IMAGE_SIDE || c.height > MAX_IMAGE_SIDE {
                    return Err(invalid(
                        "cameras.inputs[].width/height",
                        format!("1 to {MAX_IMAGE_SIDE}"),
                        format!("{}x{}", c.width, c.height),
                    ));
                }
            }
            let first = &cameras.inputs[0];
            if let Some(c) = cameras
                .inputs
                .iter()
                .find(|c| (c.width, c.height) != (first.width, first.height))
            {
                // The graph stacks the cameras into one [B, T, N, H, W, 3] tensor.
                return Err(invalid(
                    "cameras.inputs[].width/height",
                    format!("{}x{} for every camera (the first camera's)", first.width, first.height),
                    format!("{}x{} for {}", c.width, c.height, c.role),
                ));
            }
            if cameras.image_levels < 1 {
                return Err(invalid("cameras.image_levels", ">= 1", cameras.image_levels));
            }
        }
        Ok(())
    }
}

/// The largest layout size or token count a contract may state: far above any model's (the
/// planner allocates windows of max_tokens × token_dim per sample), small enough that sizes
/// multiply without overflow.
const MAX_SIZE: usize = 1 << 16;
/// The largest camera image side a model may take (its window holds max_tokens of them).
const MAX_IMAGE_SIDE: u32 = 4096;

fn invalid(field: &'static str, expected: impl ToString, got: impl ToString) -> ContractError {
    ContractError::Invalid {
        field,
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// A small valid contract (frame_stack 2, action 2 + observation 4, max_tokens 8, 3
/// timesteps) for unit tests across the crate.
#[cfg(test)]
pub(crate) fn example_json() -> serde_json::Value {
    serde_json::json!({
        "contract_version": "1.0",
        "graphs": {"denoise": "m.onnx", "denoise_vjp": "m.vjp.onnx"},
        "layout": {"observation_dim": 4, "action_dim": 2, "frame_stack": 2, "reward": false,
                   "field_order": ["action", "observation"], "frame_dim": 6, "token_dim": 12},
        "normalization": {"mean": vec![0.0; 6], "std": vec![1.0; 6]},
        "diffusion": {"timesteps": 3, "schedule": "cosine", "alphas_cumprod": [0.9, 0.5, 0.1],
                      "parameterization": "v", "stabilization_level": 1, "noise_clip": 6.0},
        "max_tokens": 8, "causal": true, "cond_dim": 0,
        "provenance": {"dataset_sha256": "ab", "train_steps": 1, "git_commit": "c", "exported_at": "t", "torch": "2"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn valid() -> Value {
        example_json()
    }

    #[test]
    fn values_beyond_the_limit_are_found_by_their_own_field_statistics() {
        let n = Normalization {
            mean: vec![0.0, 0.0, 100.0, 0.0],
            std: vec![1.0, 1.0, 0.01, 1.0],
        };
        assert_eq!(n.first_beyond_limit(2, &[109.0, 999.0]), None);
        assert_eq!(n.first_beyond_limit(2, &[111.0, 0.0]), Some((0, 111.0, 1100.0)));
        assert_eq!(
            n.first_beyond_limit(1, &[0.0, 100.0, -1001.0]),
            Some((2, -1001.0, 1001.0))
        );
        // Longer than the frame: the rest is not checked, and nothing panics.
        assert_eq!(n.first_beyond_limit(3, &[0.0, 1e9]), None);
    }

    fn error_with(path: &[&str], value: Value) -> String {
        let mut v = valid();
        let (last, parents) = path.split_last().unwrap();
        let mut cursor = &mut v;
        for p in parents {
            cursor = &mut cursor[*p];
        }
        cursor[*last] = value;
        ModelContract::from_json(&v.to_string()).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_contract_parses_and_locates_fields() {
        let c = ModelContract::from_json(&valid().to_string()).unwrap();
        assert_eq!(c.layout.offset(Field::Action), Some(0));
        assert_eq!(c.layout.offset(Field::Observation), Some(2));
        assert_eq!(c.layout.offset(Field::Reward), None);
        assert_eq!(c.alpha_bar().unwrap().timesteps(), 3);
    }

    #[test]
    fn each_bad_field_is_named_with_the_expected_value() {
        let cases: Vec<(&[&str], Value, &str)> = vec![
            (
                &["diffusion", "parameterization"],
                json!("score"),
                "field `diffusion.parameterization`: unknown variant `score`, expected one of `x0`, `eps`, `v`",
            ),
            (
                &["diffusion", "schedule"],
                json!("quadratic"),
                "field `diffusion.schedule`: unknown variant `quadratic`",
            ),
            (
                &["contract_version"],
                json!("2.0"),
                "contract_version: expected 1.x, got 2.0",
            ),
            (
                &["layout", "token_dim"],
                json!(13),
                "layout.token_dim: expected 12, got 13",
            ),
            (
                &["layout", "frame_dim"],
                json!(5),
                "layout.frame_dim: expected 6, got 5",
            ),
            (
                &["normalization", "std"],
                json!([1.0, 1.0]),
                "normalization.std: expected 6 values (one per frame field), got 2",
            ),
            (
                &["normalization", "std"],
                json!([1.0, 1.0, 0.0, 1.0, 1.0, 1.0]),
                "normalization.std: expected finite values > 0, got 0 at index 2",
            ),
            (
                &["diffusion", "alphas_cumprod"],
                json!([0.9, 0.5]),
                "diffusion.alphas_cumprod: expected 3 entries (diffusion.timesteps), got 2",
            ),
            (
                &["diffusion", "alphas_cumprod"],
                json!([0.9, 0.95, 0.1]),
                "diffusion.alphas_cumprod[1]: expected strictly decreasing values",
            ),
            (
                &["diffusion", "stabilization_level"],
                json!(3),
                "diffusion.stabilization_level: expected 0..3, got 3",
            ),
            (
                &["diffusion", "noise_clip"],
                json!(0.0),
                "diffusion.noise_clip: expected > 0, got 0",
            ),
            (&["max_tokens"], json!(0), "max_tokens: expected >= 1, got 0"),
            (
                &["max_tokens"],
                json!(1_000_000_000),
                "max_tokens: expected at most 65536, got 1000000000",
            ),
            (
                &["layout", "action_dim"],
                json!(u64::MAX),
                "layout.action_dim: expected at most 65536, got 18446744073709551615",
            ),
            (
                &["cond_dim"],
                json!(3),
                "cond_dim: expected 0 (version 1.x has no cond input), got 3",
            ),
            (&["causal"], json!(false), "causal: expected true"),
            (
                &["layout", "reward"],
                json!(true),
                "layout.reward: expected false (the planner has no reward input), got true",
            ),
            (
                &["layout", "field_order"],
                json!(["action", "action"]),
                "layout.field_order: expected action and observation once each",
            ),
            (
                &["layout", "surprise"],
                json!(1),
                "field `layout.surprise`: unknown field `surprise`, expected one of `observation_dim`",
            ),
        ];
        for (path, value, expected) in cases {
            let msg = error_with(path, value);
            assert!(
                msg.contains(expected),
                "{path:?}: {msg:?} does not contain {expected:?}"
            );
        }
    }

    #[test]
    fn camera_models_describe_their_inputs() {
        let mut v = valid();
        v["contract_version"] = json!("1.1");
        v["cameras"] = json!({"inputs": [{"role": "front", "topic": "/camera/front/image_raw", "encoding": "rgb8",
                                           "width": 32, "height": 32}],
                              "image_levels": 4, "noise_std_per_level": 0.15});
        let c = ModelContract::from_json(&v.to_string()).unwrap();
        let cameras = c.cameras.as_ref().unwrap();
        assert_eq!((cameras.inputs[0].width, cameras.image_levels), (32, 4));
        assert_eq!(cameras.frame_shape(), (1, 32, 32));
        assert!(ModelContract::from_json(&valid().to_string())
            .unwrap()
            .cameras
            .is_none());
        v["cameras"]["inputs"][0]["encoding"] = json!("bgr8");
        let msg = ModelContract::from_json(&v.to_string()).unwrap_err().to_string();
        assert_eq!(msg, "cameras.inputs[].encoding: expected rgb8, got bgr8");
        v["cameras"]["inputs"][0]["encoding"] = json!("rgb8");
        v["cameras"]["inputs"][0]["topic"] = json!("/camera/front image");
        let msg = ModelContract::from_json(&v.to_string()).unwrap_err().to_string();
        assert!(
            msg.starts_with("cameras.inputs[].topic: expected a ROS 2 topic name (character ' '"),
            "{msg}"
        );
        v["cameras"]["inputs"][0]["topic"] = json!("/camera/front/image_raw");
        let wrist = json!({"role": "wrist", "topic": "/w", "encoding": "rgb8", "width": 64, "height": 32});
        v["cameras"]["inputs"].as_array_mut().unwrap().push(wrist);
        let msg = ModelContract::from_json(&v.to_string()).unwrap_err().to_string();
        assert_eq!(
            msg,
            "cameras.inputs[].width/height: expected 32x32 for every camera (the first camera's), got 64x32 for wrist"
        );
        v["cameras"]["inputs"][1]["width"] = json!(100_000);
        v["cameras"]["inputs"][1]["height"] = json!(100_000);
        let msg = ModelContract::from_json(&v.to_string()).unwrap_err().to_string();
        assert_eq!(
            msg,
            "cameras.inputs[].width/height: expected 1 to 4096, got 100000x100000"
        );
    }

    #[test]
    fn malformed_json_is_reported_as_such() {
        let msg = ModelContract::from_json("{not json").unwrap_err().to_string();
        assert!(msg.starts_with("df_planner.contract: not valid contract JSON"), "{msg}");
    }
}
