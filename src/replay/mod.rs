//! Offline replay of a ROS 2 bag (MCAP or sqlite3) through the robot's own loop on the
//! bag's clock: decode the configured topics, feed the same frame ring, state cell, planner
//! task and control core as the live node, write what it published to an MCAP file.
//! Deterministic for a seed: the planner runs synchronously on virtual time.

mod bag;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

pub use bag::{read_bag, read_bag_topics, BagContents, BagError, BagMessage};
pub use writer::McapSink;

use crate::config::NodeConfig;
use crate::control::{ActionSink, Diagnostics, LatencySummary, OfflineLoop};
use crate::frames::ImageView;
use crate::msgs;
use crate::node::{camera_rings, joint_selection, offline_loop, planner, NodeError};

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error(transparent)]
    Bag(#[from] BagError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("config {field} = {topic:?}: not in the bag (its topics: {available})")]
    MissingTopic {
        field: String,
        topic: String,
        available: String,
    },
    #[error("config {field} = {topic:?}: the bag has type {got}, expected {expected}")]
    WrongType {
        field: String,
        topic: String,
        got: String,
        expected: &'static str,
    },
    #[error("output {0}")]
    Output(String),
    #[error("bag has no messages on the configured topics")]
    Empty,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct TopicCount {
    pub read: u64,
    pub used: u64,
    /// Reason → count.
    pub skipped: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionError {
    pub compared: usize,
    pub rmse: f64,
    pub max_abs: f64,
    /// RMSE of each action dimension (a gripper's open/close differs in scale from positions).
    pub rmse_per_dim: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    pub bag: String,
    pub storage: &'static str,
    pub bag_read_error: Option<String>,
    pub reordered_by_log_time: u64,
    pub topics: BTreeMap<String, TopicCount>,
    pub ticks: u64,
    pub ticks_per_s: f64,
    pub wall_s: f64,
    pub diagnostics: Diagnostics,
    pub tick_latency: LatencySummary,
    pub plan_latency: LatencySummary,
    pub planned_vs_recorded: Option<ActionError>,
    pub last_plan_error: Option<String>,
}

/// The loop of a config on the bag's clock.
pub fn build_loop(cfg: &NodeConfig) -> Result<OfflineLoop, ReplayError> {
    Ok(offline_loop(cfg, planner(cfg)?)?)
}

const IMAGE: &str = "sensor_msgs/msg/Image";

/// What a bag topic feeds.
#[derive(Debug, Clone, Copy)]
enum Input {
    State,
    /// The camera of this index among the node's camera rings.
    Image(usize),
    RecordedAction,
}
const JOINT_STATE: &str = "sensor_msgs/msg/JointState";
const ARRAY: &str = "std_msgs/msg/Float64MultiArray";

pub fn replay(cfg: &NodeConfig, bag_path: &Path, out: &Path, rate: Option<f64>) -> Result<ReplaySummary, ReplayError> {
    let mut lp = build_loop(cfg)?;
    let camera_model = lp.has_cameras();
    let rings = camera_rings(cfg, lp.contract())?;
    let t = &cfg.topics;
    let mut wanted: Vec<(Input, String, &str, &'static str)> =
        vec![(Input::State, "topics.state".into(), &t.state, JOINT_STATE)];
    for (i, ring) in rings.iter().enumerate() {
        let field = if camera_model {
            format!("camera topic (camera.topics or the model's cameras.inputs[{i}].topic)")
        } else {
            "topics.image".into()
        };
        wanted.push((Input::Image(i), field, &ring.topic, IMAGE));
    }
    if let Some(rec) = &t.recorded_action {
        wanted.push((Input::RecordedAction, "topics.recorded_action".into(), rec, ARRAY));
    }
    // Only the inputs' messages are held; a bag's other topics can be most of its bytes.
    let mut bag = read_bag_topics(bag_path, &|topic| wanted.iter().any(|w| w.2 == topic))?;
    if let Some(e) = &bag.read_error {
        tracing::warn!(error = %e, "bag ends early; replaying the messages read before the damage");
    }
    // An optional camera (a model without camera inputs, camera.required false) may be absent.
    let camera_optional = !camera_model && !cfg.camera.required;
    wanted.retain(|w| {
        !(matches!(w.0, Input::Image(_)) && camera_optional) || bag.topics.iter().any(|(name, _)| name == w.2)
    });
    let available = bag
        .topics
        .iter()
        .map(|(t, ty)| format!("{t} [{ty}]"))
        .collect::<Vec<_>>()
        .join(", ");
    for (_, field, topic, expected) in &wanted {
        match bag.topics.iter().find(|(name, _)| name == topic) {
            None => {
                return Err(ReplayError::MissingTopic {
                    field: field.clone(),
                    topic: topic.to_string(),
                    available: available.clone(),
                })
            }
            Some((_, ty)) if ty != expected => {
                return Err(ReplayError::WrongType {
                    field: field.clone(),
                    topic: topic.to_string(),
                    got: ty.clone(),
                    expected,
                })
            }
            Some(_) => {}
        }
    }
    let reordered = bag
        .messages
        .windows(2)
        .filter(|w| w[1].log_time_ns < w[0].log_time_ns)
        .count() as u64;
    bag.messages.sort_by_key(|m| m.log_time_ns);

    let mut sink = McapSink::create(out, cfg).map_err(ReplayError::Output)?;
    let mut topics: BTreeMap<String, TopicCount> = BTreeMap::new();
    let mut recorded: Vec<(i64, Vec<f64>)> = Vec::new();
    let mut last_state_stamp = i64::MIN;
    let joints = joint_selection(cfg, lp.contract())?;
    let start = Instant::now();
    let first_ns = bag
        .messages
        .iter()
        .find(|m| wanted.iter().any(|w| w.2 == m.topic))
        .map(|m| m.log_time_ns);
    let first_ns = first_ns.ok_or(ReplayError::Empty)?;
    for m in &bag.messages {
        let Some(&(input, ..)) = wanted.iter().find(|w| w.2 == m.topic) else {
            continue;
        };
        let count = topics.entry(m.topic.clone()).or_default();
        count.read += 1;
        let mut skip = |reason: String| *count.skipped.entry(reason).or_default() += 1;
        if let Some(rate) = rate {
            let due = (m.log_time_ns - first_ns) as f64 / 1e9 / rate;
            let now = start.elapsed().as_secs_f64();
            if due > now {
                std::thread::sleep(std::time::Duration::from_secs_f64(due - now));
            }
        }
        lp.advance_to(m.log_time_ns, None, &mut sink)
            .expect("messages are sorted by log time");
        match input {
            Input::Image(_) => match msgs::from_cdr::<msgs::Image>(&m.data) {
                Err(e) => skip(format!("undecodable: {e}")),
                Ok(img) => {
                    let view = ImageView {
                        encoding: &img.encoding,
                        width: img.width,
                        height: img.height,
                        step: img.step,
                        data: &img.data,
                        stamp_ns: img.header.stamp.to_ns(),
                    };
                    // Every camera role on this topic (two roles may share one camera).
                    let cameras = wanted.iter().filter(|w| w.2 == m.topic).filter_map(|w| match w.0 {
                        Input::Image(camera) => Some(camera),
                        _ => None,
                    });
                    let mut first_error = None;
                    for camera in cameras {
                        if let Err(e) = lp.ingest_image(camera, &view) {
                            first_error.get_or_insert(e);
                        }
                    }
                    match first_error {
                        None => count.used += 1,
                        Some(e) => skip(e.to_string()),
                    }
                }
            },
            Input::State => match msgs::from_cdr::<msgs::JointState>(&m.data) {
                Err(e) => skip(format!("undecodable: {e}")),
                Ok(js) => {
                    let stamp = js.header.stamp.to_ns();
                    if stamp <= last_state_stamp {
                        skip(
                            if stamp == last_state_stamp {
                                "duplicate stamp"
                            } else {
                                "stamp out of order"
                            }
                            .into(),
                        );
                    } else {
                        match joints.sample(stamp, &js.name, &js.position, &js.velocity) {
                            Err(e) => skip(e.to_string()),
                            Ok(sample) => {
                                last_state_stamp = stamp;
                                lp.ingest_state(sample);
                                count.used += 1;
                            }
                        }
                    }
                }
            },
            Input::RecordedAction => match msgs::from_cdr::<msgs::Float64MultiArray>(&m.data) {
                Err(e) => skip(format!("undecodable: {e}")),
                Ok(a) if a.data.len() != cfg.action_dim() => {
                    skip(format!("{} values, expected {}", a.data.len(), cfg.action_dim()))
                }
                // Kept out of the planner's history (it would poison every plan after it)
                // and of the planned-vs-recorded error.
                Ok(a) if !a.data.iter().all(|v| v.is_finite()) => skip("non-finite value".into()),
                Ok(a) => {
                    lp.ingest_executed_action(&a.data);
                    recorded.push((m.log_time_ns, a.data));
                    count.used += 1;
                }
            },
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    let diagnostics = lp.diagnostics();
    sink.diagnostics(bag.messages.last().map_or(0, |m| m.log_time_ns), &diagnostics);
    let planned_vs_recorded = compare(&sink.actions, &recorded);
    sink.finish().map_err(ReplayError::Output)?;
    Ok(ReplaySummary {
        bag: bag_path.display().to_string(),
        storage: bag.storage,
        bag_read_error: bag.read_error,
        reordered_by_log_time: reordered,
        topics,
        ticks: diagnostics.ticks,
        ticks_per_s: diagnostics.ticks as f64 / wall_s.max(1e-9),
        wall_s,
        tick_latency: diagnostics.tick_latency,
        plan_latency: diagnostics.plan_latency,
        last_plan_error: lp.plan_errors().1.map(str::to_owned),
        diagnostics,
        planned_vs_recorded,
    })
}

/// Each recorded action against the action we published at the latest tick at or before it.
fn compare(published: &[(i64, Vec<f64>)], recorded: &[(i64, Vec<f64>)]) -> Option<ActionError> {
    let (mut sum_sq, mut max_abs, mut count) = (Vec::<f64>::new(), 0.0_f64, 0usize);
    for (t, rec) in recorded {
        let idx = published.partition_point(|(pt, _)| pt <= t);
        let Some((_, ours)) = idx.checked_sub(1).map(|i| &published[i]) else {
            continue;
        };
        sum_sq.resize(sum_sq.len().max(rec.len()), 0.0);
        for (i, (a, b)) in ours.iter().zip(rec).enumerate() {
            let d = a - b;
            sum_sq[i] += d * d;
            max_abs = max_abs.max(d.abs());
        }
        count += 1;
    }
    (count > 0).then(|| ActionError {
        compared: count,
        rmse: (sum_sq.iter().sum::<f64>() / (count * sum_sq.len()) as f64).sqrt(),
        max_abs,
        rmse_per_dim: sum_sq.iter().map(|s| (s / count as f64).sqrt()).collect(),
    })
}
