//! Offline replay of a ROS 2 bag (MCAP or sqlite3) through the robot's own loop on the
//! bag's clock: decode the configured topics, feed the same frame ring, state cell, planner
//! task and control core as the live node, write what it published to an MCAP file.
//! Deterministic for a seed: the planner runs synchronously on virtual time.

mod bag;
mod compare;
mod order;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

pub use bag::{
    declared_topics, for_each_message, read_bag, read_bag_topics, BagContents, BagError, BagInfo, BagMessage,
};
use compare::ActionComparison;
pub use compare::ActionError;
use order::LogTimeOrder;
pub use writer::McapSink;

use crate::config::NodeConfig;
use crate::control::{ActionSink, Diagnostics, LatencySummary, OfflineLoop, Source, StateIntake, TickReport};
use crate::frames::ImageView;
use crate::model::{Field, MAX_STANDARD_DEVIATIONS};
use crate::msgs;
use crate::node::{camera_rings, offline_loop, planner, state_intake, NodeError};
use crate::planner::Plan;
use crate::ros::names::TopicNames;

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error(transparent)]
    Bag(#[from] BagError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(
        "config {field} = {topic:?}: not in the bag (its topics: {available}); if the recorded node ran under \
         another namespace or name, or its launch remapped topics, say so: --namespace, --node-name, --remap"
    )]
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
    #[error(
        "config {field} = {topic:?}: the bag's messages are encoded {got:?}, expected \"cdr\" (ROS 2's serialization)"
    )]
    WrongEncoding { field: String, topic: String, got: String },
    #[error("output {0}")]
    Output(String),
    #[error("{option}: expected {expected}, got {got:?}")]
    Option {
        option: &'static str,
        expected: &'static str,
        got: f64,
    },
    /// The recorded node's namespace, name or remap rules (`TopicNames::new` says which).
    #[error("{0}")]
    Names(String),
    #[error("bag has no messages on the configured topics{damage}")]
    Empty { damage: String },
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct TopicCount {
    pub read: u64,
    pub used: u64,
    /// Reason → count: the first `MAX_SKIP_REASONS` distinct reasons, then `MORE_REASONS`.
    pub skipped: BTreeMap<String, u64>,
}

/// Distinct skip reasons listed per topic. Many name the message's own values (its stamp, its
/// length): a camera with a broken clock would list every frame of a long bag.
pub const MAX_SKIP_REASONS: usize = 16;
/// Where the skips for reasons past the first `MAX_SKIP_REASONS` are counted.
pub const MORE_REASONS: &str = "other reasons (only the first 16 distinct ones are listed)";

#[derive(Debug, Clone, Serialize)]
pub struct ReplaySummary {
    pub bag: String,
    pub storage: &'static str,
    pub bag_read_error: Option<String>,
    pub reordered_by_log_time: u64,
    /// Gaps between input messages longer than MAX_GAP_NS, jumped rather than ticked through,
    /// and their total length.
    pub gaps_jumped: u64,
    pub gap_s_jumped: f64,
    pub topics: BTreeMap<String, TopicCount>,
    pub ticks: u64,
    pub ticks_per_s: f64,
    /// The replay's second pass: reading the inputs' messages and running the loop on them.
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

/// A gap between input messages longer than this is jumped, not ticked through (`OfflineLoop::
/// jump_to`): far beyond any input timeout, the loop would only fall back across it.
pub const MAX_GAP_NS: i64 = 60_000_000_000;
/// The slowest `--rate`: slower, a one-minute gap would pace for over two weeks.
const MIN_RATE: f64 = 0.001;

/// What a bag topic feeds.
#[derive(Debug, Clone, Copy)]
enum Input {
    State,
    /// The camera of this index among the node's camera rings.
    Image(usize),
    RecordedAction,
    Goal,
}
const IMAGE: &str = "sensor_msgs/msg/Image";
const JOINT_STATE: &str = "sensor_msgs/msg/JointState";
/// The one message encoding replay decodes: ROS 2's.
const CDR: &str = "cdr";
const ARRAY: &str = "std_msgs/msg/Float64MultiArray";
const POSE: &str = "geometry_msgs/msg/PoseStamped";

/// How a bag is replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayOptions {
    /// Pace the replay at this multiple of real time; None: as fast as possible.
    pub rate: Option<f64>,
    /// How far in log time a message may be stored after later ones and still replay in its
    /// place. Memory holds this much of the input topics' data (a 30 Hz VGA rgb8 camera: 28 MB
    /// a second).
    pub reorder_window_s: f64,
    /// The namespace the recorded node ran in: the config's relative and private topic names
    /// resolve in it, as on the robot.
    pub namespace: String,
    /// The recorded node's name (private names resolve under it).
    pub node_name: String,
    /// The recorded node's remap rules (`from:=to`, as its launch remapped its topics).
    pub remaps: Vec<String>,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            rate: None,
            reorder_window_s: 2.0,
            namespace: "/".into(),
            node_name: crate::ros::names::NODE_NAME.into(),
            remaps: Vec::new(),
        }
    }
}

impl ReplayOptions {
    /// The recorded node's topic names, once the options are checked.
    fn check(&self) -> Result<TopicNames, ReplayError> {
        if let Some(rate) = self.rate.filter(|r| !(r.is_finite() && *r >= MIN_RATE)) {
            return Err(ReplayError::Option {
                option: "rate",
                expected: "a number >= 0.001",
                got: rate,
            });
        }
        let w = self.reorder_window_s;
        if !(w.is_finite() && (0.0..=86_400.0).contains(&w)) {
            return Err(ReplayError::Option {
                option: "reorder window",
                expected: "seconds from 0 to 86400",
                got: w,
            });
        }
        TopicNames::new(&self.namespace, &self.node_name, &self.remaps).map_err(ReplayError::Names)
    }
}

pub fn replay(
    cfg: &NodeConfig,
    bag_path: &Path,
    out: &Path,
    options: &ReplayOptions,
) -> Result<ReplaySummary, ReplayError> {
    let names = options.check()?;
    let lp = build_loop(cfg)?;
    let camera_model = lp.has_cameras();
    let rings = camera_rings(cfg, lp.contract())?;
    let t = &cfg.topics;
    let full = |name: &str| names.resolve(name);
    let mut wanted: Vec<(Input, String, String, &'static str)> =
        vec![(Input::State, "topics.state".into(), full(&t.state), JOINT_STATE)];
    for (i, ring) in rings.iter().enumerate() {
        let field = if camera_model {
            format!("camera topic (camera.topics or the model's cameras.inputs[{i}].topic)")
        } else {
            "topics.image".into()
        };
        wanted.push((Input::Image(i), field, full(&ring.topic), IMAGE));
    }
    if let Some(rec) = &t.recorded_action {
        // Replay's own input, not a topic of the node: its launch's remaps do not apply.
        let rec = names.expand(rec);
        wanted.push((Input::RecordedAction, "topics.recorded_action".into(), rec, ARRAY));
    }
    if let Some(goal) = &t.goal {
        wanted.push((Input::Goal, "topics.goal.topic".into(), full(&goal.topic), POSE));
    }
    // First the topics the bag declares, so a config that does not fit it fails before
    // anything is replayed.
    let declared = declared_topics(bag_path)?;
    // An optional camera (a model without camera inputs, camera.required false) may be absent.
    let camera_optional = !camera_model && !cfg.camera.required;
    // Goals are sent now and then: a bag may have none (the goal stays planner.goal.target).
    wanted.retain(|w| {
        let optional = matches!(w.0, Input::Goal) || (matches!(w.0, Input::Image(_)) && camera_optional);
        !optional || declared.topics.iter().any(|t| t.name == w.2)
    });
    let available = declared
        .topics
        .iter()
        .map(|t| format!("{} [{}]", t.name, t.type_name))
        .collect::<Vec<_>>()
        .join(", ");
    for (_, field, topic, expected) in &wanted {
        match declared.topics.iter().find(|t| t.name == *topic) {
            None => {
                return Err(ReplayError::MissingTopic {
                    field: field.clone(),
                    topic: topic.to_string(),
                    available: available.clone(),
                })
            }
            Some(t) if t.type_name != *expected => {
                return Err(ReplayError::WrongType {
                    field: field.clone(),
                    topic: topic.to_string(),
                    got: t.type_name.clone(),
                    expected,
                })
            }
            // Only CDR is decoded; messages in another encoding would all be skipped.
            Some(t) if t.encoding != CDR => {
                return Err(ReplayError::WrongEncoding {
                    field: field.clone(),
                    topic: topic.to_string(),
                    got: t.encoding.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let inputs: Vec<(Input, String)> = wanted.into_iter().map(|w| (w.0, w.2)).collect();
    let states = state_intake(cfg, lp.contract())?;
    check_output_outside(bag_path, out)?;
    // Written beside the output and renamed over it once the replay has succeeded: a failed
    // replay leaves a previous output as it was, and an output that is a link into the bag
    // replaces the link, not the bag. A device such as /dev/null is written directly.
    let direct = std::fs::metadata(out).is_ok_and(|m| !m.is_file());
    let staged = if direct {
        out.to_owned()
    } else {
        let mut name = out.file_name().unwrap_or_default().to_owned();
        name.push(".partial");
        out.with_file_name(name)
    };
    let feed = Feed {
        states,
        sink: Published {
            output: McapSink::create(&staged, cfg, &names).map_err(ReplayError::Output)?,
            comparison: ActionComparison::default(),
        },
        lp,
        action_dim: cfg.action_dim(),
        inputs,
        topics: BTreeMap::new(),
        start: Instant::now(),
        rate: options.rate,
        first_ns: None,
        last_ns: 0,
        gaps_jumped: 0,
        gap_ns_jumped: 0,
    };
    let replayed = stream(feed, bag_path, (options.reorder_window_s * 1e9) as i64);
    if !direct {
        match &replayed {
            Ok(_) => {
                std::fs::rename(&staged, out).map_err(|e| ReplayError::Output(format!("{}: {e}", out.display())))?
            }
            Err(_) => {
                let _ = std::fs::remove_file(&staged);
            }
        }
    }
    replayed
}

/// Refuse an output that is the bag, or in the bag's folder, where the second read would take
/// it for another recording.
fn check_output_outside(bag_path: &Path, out: &Path) -> Result<(), ReplayError> {
    let absolute = |p: &Path| {
        let parent = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        parent.canonicalize().map(|d| d.join(p.file_name().unwrap_or_default()))
    };
    let (Ok(bag), Ok(out_abs)) = (bag_path.canonicalize(), absolute(out)) else {
        return Ok(()); // a missing folder fails where it is opened, with its own message
    };
    if out_abs == bag || (bag_path.is_dir() && out_abs.starts_with(&bag)) {
        return Err(ReplayError::Output(format!(
            "{}: inside the bag {}; write it elsewhere",
            out.display(),
            bag_path.display()
        )));
    }
    Ok(())
}

/// Second pass: the inputs' messages stream through a window that restores log-time order
/// into the loop; a bag's other topics, often most of its bytes, are not even copied.
fn stream(mut feed: Feed, bag_path: &Path, reorder_window_ns: i64) -> Result<ReplaySummary, ReplayError> {
    let kept: Vec<String> = feed.inputs.iter().map(|(_, topic)| topic.clone()).collect();
    let mut order = LogTimeOrder::new(reorder_window_ns);
    let read = for_each_message(bag_path, &|topic| kept.iter().any(|k| k == topic), &mut |m| {
        if let Err(late) = order.push(m) {
            feed.count(&late.topic).skip(format!(
                "stored more than the {} s reorder window after later messages",
                reorder_window_ns as f64 / 1e9
            ));
        }
        while let Some(m) = order.pop(false) {
            feed.message(m);
        }
    })?;
    if let Some(e) = &read.read_error {
        tracing::warn!(error = %e, "bag ends early; replayed the messages read before the damage");
    }
    while let Some(m) = order.pop(true) {
        feed.message(m);
    }
    if feed.first_ns.is_none() {
        return Err(ReplayError::Empty {
            damage: read
                .read_error
                .map(|e| format!(" (it ends early: {e})"))
                .unwrap_or_default(),
        });
    }
    let Feed {
        lp,
        mut sink,
        topics,
        start,
        last_ns,
        gaps_jumped,
        gap_ns_jumped,
        ..
    } = feed;
    let wall_s = start.elapsed().as_secs_f64();
    let diagnostics = lp.diagnostics();
    sink.output.diagnostics(last_ns, &diagnostics);
    sink.output.finish().map_err(ReplayError::Output)?;
    let planned_vs_recorded = sink.comparison.finish();
    Ok(ReplaySummary {
        bag: bag_path.display().to_string(),
        storage: read.storage,
        bag_read_error: read.read_error,
        reordered_by_log_time: order.reordered,
        gaps_jumped,
        gap_s_jumped: gap_ns_jumped as f64 / 1e9,
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

/// What replay publishes: written to the output, each action also compared with the recorded.
struct Published {
    output: McapSink,
    comparison: ActionComparison,
}

impl ActionSink for Published {
    fn action(&mut self, report: &TickReport, action: &[f64], plan: Option<&Plan>) {
        // Nothing is published while waiting for the first state (position targets).
        if report.source == Source::Waiting {
            return;
        }
        self.comparison.published(report.now_ns, action);
        self.output.action(report, action, plan);
    }

    fn plan(&mut self, plan: &Plan) {
        self.output.plan(plan);
    }

    fn diagnostics(&mut self, now_ns: i64, diag: &Diagnostics) {
        self.output.diagnostics(now_ns, diag);
    }
}

/// The loop and what replay counts, fed one input message at a time in log-time order.
struct Feed {
    lp: OfflineLoop,
    sink: Published,
    states: StateIntake,
    action_dim: usize,
    /// Each input and its topic (two camera roles may share one topic).
    inputs: Vec<(Input, String)>,
    topics: BTreeMap<String, TopicCount>,
    start: Instant,
    rate: Option<f64>,
    first_ns: Option<i64>,
    last_ns: i64,
    gaps_jumped: u64,
    gap_ns_jumped: i128,
}

impl TopicCount {
    fn skip(&mut self, reason: String) {
        let listed = self.skipped.len() - usize::from(self.skipped.contains_key(MORE_REASONS));
        let key = if listed >= MAX_SKIP_REASONS && !self.skipped.contains_key(&reason) {
            MORE_REASONS.to_owned()
        } else {
            reason
        };
        *self.skipped.entry(key).or_default() += 1;
    }
}

impl Feed {
    /// The topic's count, with this message read.
    fn count(&mut self, topic: &str) -> &mut TopicCount {
        let count = self.topics.entry(topic.to_owned()).or_default();
        count.read += 1;
        count
    }

    fn message(&mut self, m: BagMessage) {
        let Some(&(input, _)) = self.inputs.iter().find(|(_, topic)| *topic == m.topic) else {
            return;
        };
        let first_ns = *self.first_ns.get_or_insert(m.log_time_ns);
        let gap_ns = i128::from(m.log_time_ns) - i128::from(self.last_ns);
        if self.first_ns != Some(m.log_time_ns) && gap_ns > i128::from(MAX_GAP_NS) {
            // A recording paused, or a first message stamped before the clock was set (log
            // time 0 under sim time): ticking through would take as long as the gap's ticks.
            tracing::warn!(gap_s = gap_ns as f64 / 1e9, topic = %m.topic, "jumping a gap in the bag's log times");
            self.lp.jump_to(m.log_time_ns);
            self.gaps_jumped += 1;
            self.gap_ns_jumped += gap_ns;
        }
        self.last_ns = m.log_time_ns;
        if let Some(rate) = self.rate {
            let bag_ns = i128::from(m.log_time_ns) - i128::from(first_ns) - self.gap_ns_jumped;
            let due = bag_ns as f64 / 1e9 / rate;
            let now = self.start.elapsed().as_secs_f64();
            if due > now {
                std::thread::sleep(std::time::Duration::from_secs_f64(due - now));
            }
        }
        self.lp
            .advance_to(m.log_time_ns, &mut self.sink)
            .expect("messages come in log-time order");
        let outcome = match input {
            Input::Image(_) => self.image(&m),
            Input::State => self.state(&m),
            Input::RecordedAction => self.recorded_action(&m),
            Input::Goal => self.goal(&m),
        };
        let count = self.count(&m.topic);
        match outcome {
            Ok(()) => count.used += 1,
            Err(reason) => count.skip(reason),
        }
    }

    fn image(&mut self, m: &BagMessage) -> Result<(), String> {
        let img = msgs::ImageRef::from_cdr(&m.data).map_err(|e| format!("undecodable: {e}"))?;
        let view = ImageView {
            encoding: img.encoding,
            width: img.width,
            height: img.height,
            step: img.step,
            data: img.data,
            stamp_ns: img.stamp.to_ns(),
        };
        // Every camera role on this topic (two roles may share one camera).
        let mut first_error = None;
        for (input, topic) in &self.inputs {
            if let (Input::Image(camera), true) = (input, *topic == m.topic) {
                if let Err(e) = self.lp.ingest_image(*camera, &view) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), |e| Err(e.to_string()))
    }

    fn state(&mut self, m: &BagMessage) -> Result<(), String> {
        let js = msgs::from_cdr::<msgs::JointState>(&m.data).map_err(|e| format!("undecodable: {e}"))?;
        let taken = self
            .states
            .take(js.header.stamp.to_ns(), &js.name, &js.position, &js.velocity)
            .map_err(|e| e.to_string());
        match taken {
            Ok(sample) => self.lp.ingest_state(sample),
            Err(_) => self.lp.state_rejected(),
        }
        taken.map(|_| ())
    }

    fn goal(&mut self, m: &BagMessage) -> Result<(), String> {
        let pose = msgs::from_cdr::<msgs::PoseStamped>(&m.data).map_err(|e| format!("undecodable: {e}"))?;
        self.lp.receive_goal(&pose.goal())
    }

    fn recorded_action(&mut self, m: &BagMessage) -> Result<(), String> {
        let a = msgs::from_cdr::<msgs::Float64MultiArray>(&m.data).map_err(|e| format!("undecodable: {e}"))?;
        if a.data.len() != self.action_dim {
            return Err(format!("{} values, expected {}", a.data.len(), self.action_dim));
        }
        // Kept out of the planner's history (which would refuse every frame until the next
        // action) and of the planned-vs-recorded error.
        if !a.data.iter().all(|v| v.is_finite()) {
            return Err("non-finite value".into());
        }
        let contract = self.lp.contract();
        let offset = contract.layout.offset(Field::Action).expect("a layout has actions");
        if contract.normalization.first_beyond_limit(offset, &a.data).is_some() {
            return Err(format!(
                "a value more than {MAX_STANDARD_DEVIATIONS} standard deviations from the model's actions"
            ));
        }
        self.lp.ingest_executed_action(&a.data);
        self.sink.comparison.recorded(m.log_time_ns, a.data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_reasons_past_the_first_sixteen_are_counted_together() {
        assert!(MORE_REASONS.contains(&MAX_SKIP_REASONS.to_string()));
        let mut c = TopicCount::default();
        let reason = |i: u32| format!("image stamp {i} ns repeats the previous frame's");
        for i in 0..40 {
            c.skip(reason(i));
        }
        // A listed reason still counts as itself.
        c.skip(reason(3));
        assert_eq!(c.skipped.len(), MAX_SKIP_REASONS + 1);
        assert_eq!((c.skipped[&reason(3)], c.skipped[MORE_REASONS]), (2, 24));
        assert_eq!(c.skipped.values().sum::<u64>(), 41);
    }
}
