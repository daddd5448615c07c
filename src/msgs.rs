//! ROS 2 messages without ROS: the types the node reads and writes as plain serde structs
//! (CDR for bags), the ros2msg schema texts MCAP readers need, and what the node publishes
//! for a tick (shared by the replay writer and the r2r adapter, which converts these).

use serde::{Deserialize, Serialize};

use crate::config::{ActionType, NodeConfig};
use crate::control::{trajectory_chunk, Diagnostics, Safety, TickReport};
use crate::node::safety_filter;
use crate::planner::{GoalMessage, Plan};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

impl Time {
    pub fn from_ns(ns: i64) -> Self {
        Self {
            sec: ns.div_euclid(1_000_000_000) as i32,
            nanosec: ns.rem_euclid(1_000_000_000) as u32,
        }
    }
    pub fn to_ns(self) -> i64 {
        i64::from(self.sec) * 1_000_000_000 + i64::from(self.nanosec)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub stamp: Time,
    #[serde(deserialize_with = "bounded::string")]
    pub frame_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub header: Header,
    pub height: u32,
    pub width: u32,
    #[serde(deserialize_with = "bounded::string")]
    pub encoding: String,
    pub is_bigendian: u8,
    pub step: u32,
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "bounded::bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JointState {
    pub header: Header,
    #[serde(deserialize_with = "bounded::strings")]
    pub name: Vec<String>,
    pub position: Vec<f64>,
    pub velocity: Vec<f64>,
    pub effort: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiArrayDimension {
    #[serde(deserialize_with = "bounded::string")]
    pub label: String,
    pub size: u32,
    pub stride: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MultiArrayLayout {
    pub dim: Vec<MultiArrayDimension>,
    pub data_offset: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Float64MultiArray {
    pub layout: MultiArrayLayout,
    pub data: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JointTrajectoryPoint {
    pub positions: Vec<f64>,
    pub velocities: Vec<f64>,
    pub accelerations: Vec<f64>,
    pub effort: Vec<f64>,
    pub time_from_start: Time,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JointTrajectory {
    pub header: Header,
    pub joint_names: Vec<String>,
    pub points: Vec<JointTrajectoryPoint>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quaternion {
    pub x: f64,
    pub y: f64,
    pub z: f64,
    pub w: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pose {
    pub position: Point,
    pub orientation: Quaternion,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoseStamped {
    pub header: Header,
    pub pose: Pose,
}

impl PoseStamped {
    /// As a goal (`topics.goal`): its position's x and y, in its frame.
    pub fn goal(self) -> GoalMessage {
        GoalMessage {
            position: [self.pose.position.x, self.pose.position.y],
            frame_id: self.header.frame_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticStatus {
    pub level: u8,
    pub name: String,
    pub message: String,
    pub hardware_id: String,
    pub values: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnosticArray {
    pub header: Header,
    pub status: Vec<DiagnosticStatus>,
}

/// Serialize as little-endian CDR with the encapsulation header, as ROS 2 does.
pub fn to_cdr<T: Serialize>(msg: &T) -> Vec<u8> {
    cdr::serialize::<_, _, cdr::CdrLe>(msg, cdr::Infinite).expect("our message types serialize")
}

pub fn from_cdr<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    cdr::deserialize::<T>(bytes).map_err(|e| e.to_string())
}

/// A `sensor_msgs/Image` read in place from its CDR bytes: the pixels are borrowed, not
/// copied. Through serde a VGA frame costs about 2 ms of byte-by-byte copying; replay reads
/// every frame of a bag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageRef<'a> {
    pub stamp: Time,
    pub height: u32,
    pub width: u32,
    pub encoding: &'a str,
    pub step: u32,
    pub data: &'a [u8],
}

impl<'a> ImageRef<'a> {
    pub fn from_cdr(bytes: &'a [u8]) -> Result<Self, String> {
        let mut r = CdrReader::new(bytes)?;
        let stamp = Time {
            sec: r.u32()? as i32,
            nanosec: r.u32()?,
        };
        r.string()?; // frame_id
        let height = r.u32()?;
        let width = r.u32()?;
        let encoding = r.string()?;
        r.take(1)?; // is_bigendian: of the pixels, which the encodings we read do not have
        let step = r.u32()?;
        let len = r.u32()? as usize;
        let data = r.take(len)?;
        Ok(Self {
            stamp,
            height,
            width,
            encoding,
            step,
            data,
        })
    }
}

/// Plain CDR after its 4-byte encapsulation header; alignment counts from after the header.
struct CdrReader<'a> {
    body: &'a [u8],
    at: usize,
    little_endian: bool,
}

impl<'a> CdrReader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, String> {
        let little_endian = match bytes.get(..2) {
            Some([0, 1]) => true,
            Some([0, 0]) => false,
            Some(other) => {
                return Err(format!(
                    "CDR encapsulation {other:02x?}: expected [00, 01] (little-endian) or [00, 00]"
                ))
            }
            None => return Err(format!("{} bytes: expected a CDR message", bytes.len())),
        };
        Ok(Self {
            body: bytes.get(4..).unwrap_or_default(),
            at: 0,
            little_endian,
        })
    }

    /// The next `n` bytes; a length the message does not hold is an error, never an allocation.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let left = self.body.len() - self.at;
        if n > left {
            return Err(format!(
                "the message ends {left} bytes after byte {}: {n} bytes expected",
                self.at + 4
            ));
        }
        self.at += n;
        Ok(&self.body[self.at - n..self.at])
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.at = self.at.next_multiple_of(4).min(self.body.len());
        let b: [u8; 4] = self.take(4)?.try_into().expect("4 bytes");
        Ok(if self.little_endian {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    /// A CDR string: its length counts the closing NUL.
    fn string(&mut self) -> Result<&'a str, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        let text = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        std::str::from_utf8(text).map_err(|e| format!("string at byte {}: {e}", self.at + 4 - len))
    }
}

/// The strings and byte arrays of the messages we read, decoded as CDR sequences (the same
/// bytes: a u32 length, then the bytes). The `cdr` crate allocates a string's or byte array's
/// declared length before it checks the message holds that many bytes, so one corrupt length
/// in a bag would cost up to 4 GiB; a sequence reserves at most 1 MiB up front (serde's
/// cautious size hint) and grows only with the bytes actually there.
mod bounded {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};

    pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Vec::<u8>::deserialize(d)
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let mut b = Vec::<u8>::deserialize(d)?;
        // CDR strings end with a NUL that the length counts.
        if b.last() == Some(&0) {
            b.pop();
        }
        String::from_utf8(b).map_err(D::Error::custom)
    }

    pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        struct Bounded(String);
        impl<'de> Deserialize<'de> for Bounded {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                string(d).map(Bounded)
            }
        }
        Ok(Vec::<Bounded>::deserialize(d)?.into_iter().map(|s| s.0).collect())
    }
}

const SEP: &str = "================================================================================\n";

fn definition(parts: &[&str]) -> String {
    parts.join(SEP)
}

const HEADER: &str = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n";
const TIME: &str = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n";

/// (ROS type name, ros2msg definition) of each message we write.
pub fn schema(type_name: &str) -> Option<String> {
    Some(match type_name {
        "std_msgs/msg/Float64MultiArray" => definition(&[
            "MultiArrayLayout layout\nfloat64[] data\n",
            "MSG: std_msgs/MultiArrayLayout\nMultiArrayDimension[] dim\nuint32 data_offset\n",
            "MSG: std_msgs/MultiArrayDimension\nstring label\nuint32 size\nuint32 stride\n",
        ]),
        "diagnostic_msgs/msg/DiagnosticArray" => definition(&[
            "std_msgs/Header header\nDiagnosticStatus[] status\n",
            HEADER,
            TIME,
            "MSG: diagnostic_msgs/DiagnosticStatus\nbyte OK=0\nbyte WARN=1\nbyte ERROR=2\nbyte STALE=3\nbyte level\n\
             string name\nstring message\nstring hardware_id\nKeyValue[] values\n",
            "MSG: diagnostic_msgs/KeyValue\nstring key\nstring value\n",
        ]),
        "trajectory_msgs/msg/JointTrajectory" => definition(&[
            "std_msgs/Header header\nstring[] joint_names\nJointTrajectoryPoint[] points\n",
            HEADER,
            TIME,
            "MSG: trajectory_msgs/JointTrajectoryPoint\nfloat64[] positions\nfloat64[] velocities\n\
             float64[] accelerations\nfloat64[] effort\nbuiltin_interfaces/Duration time_from_start\n",
            "MSG: builtin_interfaces/Duration\nint32 sec\nuint32 nanosec\n",
        ]),
        "geometry_msgs/msg/PoseStamped" => definition(&[
            "std_msgs/Header header\nPose pose\n",
            HEADER,
            TIME,
            "MSG: geometry_msgs/Pose\nPoint position\nQuaternion orientation\n",
            "MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z\n",
            "MSG: geometry_msgs/Quaternion\nfloat64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n",
        ]),
        _ => return None,
    })
}

/// The action message of one tick, in the configured type.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionMessage {
    Array(Float64MultiArray),
    Trajectory(JointTrajectory),
    Pose(PoseStamped),
}

/// How the node's ticks become action messages: the configured type, its names, and the
/// safety filter the future points of a trajectory pass as the tick's own action did.
pub struct ActionFormat {
    pub kind: ActionType,
    pub joint_names: Vec<String>,
    pub frame_id: String,
    /// PoseStamped: the fixed orientation [x, y, z, w] and a 2-D action's z.
    pub pose_orientation: [f64; 4],
    pub pose_z: f64,
    pub safety: Safety,
}

impl ActionFormat {
    pub fn new(cfg: &NodeConfig) -> Self {
        let t = &cfg.topics;
        Self {
            kind: t.action_type,
            joint_names: t.joint_names.clone(),
            frame_id: t.frame_id.clone(),
            pose_orientation: t.unit_pose_orientation(),
            pose_z: t.pose_z,
            safety: safety_filter(cfg),
        }
    }

    /// What the node publishes for a tick. JointTrajectory carries the rest of the plan, ending
    /// at rest; PoseStamped reads the action as (x, y[, z]) (z `pose_z` for a 2-D action) at
    /// `pose_orientation`.
    pub fn message(&self, report: &TickReport, action: &[f64], plan: Option<&Plan>) -> ActionMessage {
        let header = Header {
            stamp: Time::from_ns(report.now_ns),
            frame_id: self.frame_id.clone(),
        };
        match self.kind {
            ActionType::Float64MultiArray => ActionMessage::Array(float64_array(action)),
            ActionType::JointTrajectory => {
                let points = trajectory_chunk(action, plan, report.plan_index, report.now_ns, &self.safety)
                    .into_iter()
                    .map(|p| JointTrajectoryPoint {
                        positions: p.positions,
                        velocities: p.velocities,
                        accelerations: Vec::new(),
                        effort: Vec::new(),
                        time_from_start: Time::from_ns(p.time_from_start_ns),
                    })
                    .collect();
                ActionMessage::Trajectory(JointTrajectory {
                    header,
                    joint_names: self.joint_names.clone(),
                    points,
                })
            }
            ActionType::PoseStamped => {
                let [qx, qy, qz, qw] = self.pose_orientation;
                let pose = Pose {
                    position: Point {
                        x: action[0],
                        y: action.get(1).copied().unwrap_or(0.0),
                        z: action.get(2).copied().unwrap_or(self.pose_z),
                    },
                    orientation: Quaternion {
                        x: qx,
                        y: qy,
                        z: qz,
                        w: qw,
                    },
                };
                ActionMessage::Pose(PoseStamped { header, pose })
            }
        }
    }
}

pub fn float64_array(data: &[f64]) -> Float64MultiArray {
    Float64MultiArray {
        layout: MultiArrayLayout::default(),
        data: data.to_vec(),
    }
}

/// The node's `/diagnostics`: one DiagnosticStatus named `df_planner` per report, whose values
/// count from the start and whose level and message say how the loop did since the previous
/// report, so that a fault at start-up (no plan yet) does not mark a healthy node for good.
#[derive(Debug, Default)]
pub struct DiagnosticReports {
    previous: Option<Diagnostics>,
}

impl DiagnosticReports {
    pub fn array(&mut self, header: Header, d: &Diagnostics) -> DiagnosticArray {
        let array = diagnostic_array(header, d, self.previous.as_ref());
        self.previous = Some(d.clone());
        array
    }
}

/// The level and message of a report, from the counts since `previous` (the start when None):
/// ERROR when every tick fell back (the node acts on its fallback only) or no tick ran at all;
/// WARN when some fell back, a plan failed, a tick missed its deadline, a tick's record was
/// dropped before publishing, or a robot state was refused; OK otherwise. The message names
/// what happened.
fn status_since(d: &Diagnostics, previous: Option<&Diagnostics>) -> (u8, String) {
    let since = |count: fn(&Diagnostics) -> u64| count(d).saturating_sub(previous.map_or(0, count));
    let ticks = since(|d| d.ticks);
    let fell_back = since(|d| d.hold + d.stop + d.waiting);
    let faults: Vec<String> = d
        .faults
        .iter()
        .enumerate()
        .filter_map(|(i, &(name, count))| {
            let new = count.saturating_sub(previous.map_or(0, |p| p.faults[i].1));
            (new > 0).then(|| format!("{name} {new}"))
        })
        .collect();
    let (level, head) = if ticks == 0 {
        (2, Some("no control tick ran since the last report".to_string()))
    } else if fell_back == ticks {
        (
            2,
            Some(format!(
                "every tick since the last report fell back ({})",
                faults.join(", ")
            )),
        )
    } else if fell_back > 0 {
        let of = format!("{fell_back} of {ticks} ticks since the last report fell back");
        (1, Some(format!("{of} ({})", faults.join(", "))))
    } else {
        (0, None)
    };
    let others: Vec<String> = [
        ("plan_errors", since(|d| d.plan_errors)),
        ("steps_skipped", since(|d| d.steps_skipped)),
        ("deadline_misses", since(|d| d.deadline_misses)),
        ("records_dropped", since(|d| d.records_dropped)),
        ("states_rejected", since(|d| d.states_rejected)),
    ]
    .into_iter()
    .filter(|&(_, n)| n > 0)
    .map(|(name, n)| format!("{name} {n}"))
    .collect();
    match (head, others.is_empty()) {
        (None, true) => (0, "ok".into()),
        (None, false) => (1, format!("{} since the last report", others.join(", "))),
        (Some(head), true) => (level, head),
        (Some(head), false) => (level, format!("{head}; {}", others.join(", "))),
    }
}

fn diagnostic_array(header: Header, d: &Diagnostics, previous: Option<&Diagnostics>) -> DiagnosticArray {
    let kv = |key: &str, value: String| KeyValue { key: key.into(), value };
    let mut values = vec![
        kv("ticks", d.ticks.to_string()),
        kv("plans", d.plans.to_string()),
        kv("plan_errors", d.plan_errors.to_string()),
        kv("steps_recorded_late", d.steps_recorded_late.to_string()),
        kv("steps_skipped", d.steps_skipped.to_string()),
        kv("states_rejected", d.states_rejected.to_string()),
        kv("hold", d.hold.to_string()),
        kv("stop", d.stop.to_string()),
        kv("waiting", d.waiting.to_string()),
        kv("clipped", d.clipped.to_string()),
        kv("rate_limited", d.rate_limited.to_string()),
        kv("late_actions_dropped", d.late_actions_dropped.to_string()),
        kv("goal_held_ticks", d.goal_held.to_string()),
        kv("deadline_misses", d.deadline_misses.to_string()),
        kv("records_dropped", d.records_dropped.to_string()),
    ];
    for (name, count) in &d.faults {
        values.push(kv(&format!("fault.{name}"), count.to_string()));
    }
    for (name, s) in [
        ("tick_latency", d.tick_latency),
        ("tick_jitter", d.tick_jitter),
        ("plan_latency", d.plan_latency),
    ] {
        values.push(kv(&format!("{name}.p50_ms"), format!("{:.4}", s.p50_ms)));
        values.push(kv(&format!("{name}.p99_ms"), format!("{:.4}", s.p99_ms)));
        values.push(kv(&format!("{name}.max_ms"), format!("{:.4}", s.max_ms)));
    }
    let f = d.frames;
    for (name, v) in [
        ("frames.received", f.received),
        ("frames.delivered", f.delivered),
        ("frames.superseded", f.superseded),
        ("frames.rejected_encoding", f.rejected_encoding),
        ("frames.rejected_size", f.rejected_size),
        ("frames.rejected_malformed", f.rejected_malformed),
        ("frames.rejected_out_of_order", f.rejected_out_of_order),
        ("frames.rejected_duplicate", f.rejected_duplicate),
        ("frames.clock_resets", f.clock_resets),
    ] {
        values.push(kv(name, v.to_string()));
    }
    if let Some(g) = d.goal {
        let target = g.target.map_or_else(|| "none".into(), |[x, y]| format!("{x}, {y}"));
        values.push(kv("goal", target));
        values.push(kv("goal_guided", g.guided.to_string()));
        let distance = g.distance.map_or_else(|| "none".into(), |d| format!("{d:.4}"));
        values.push(kv("goal_distance", distance));
        let reached = g.reached.map_or_else(|| "none".into(), |r| r.to_string());
        values.push(kv("goal_reached", reached));
        values.push(kv("goals_received", g.received.to_string()));
        values.push(kv("goals_rejected", g.rejected.to_string()));
        values.push(kv("goals_dropped", g.dropped.to_string()));
    }
    let (level, message) = status_since(d, previous);
    let status = DiagnosticStatus {
        level,
        name: "df_planner".into(),
        message,
        hardware_id: String::new(),
        values,
    };
    DiagnosticArray {
        header,
        status: vec![status],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Fault;

    #[test]
    fn cdr_round_trip_and_time_conversion() {
        let msg = Float64MultiArray {
            layout: MultiArrayLayout::default(),
            data: vec![1.5, -2.0],
        };
        let bytes = to_cdr(&msg);
        assert_eq!(&bytes[..4], &[0, 1, 0, 0], "little-endian CDR encapsulation header");
        assert_eq!(from_cdr::<Float64MultiArray>(&bytes).unwrap(), msg);
        assert_eq!(Time::from_ns(-1).to_ns(), -1);
        assert_eq!(
            Time::from_ns(1_500_000_000),
            Time {
                sec: 1,
                nanosec: 500_000_000
            }
        );
    }

    #[test]
    fn pose_outputs_carry_the_configured_orientation_and_a_planar_actions_height() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pointmass.yaml");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "action_type: float64_multi_array",
            "action_type: pose_stamped\n  pose_orientation: [1, 0, 0, 0]\n  pose_z: 0.75",
        );
        let positions = text.replace("  fallback: hold", "  fallback: hold\n  measured_action: [0, 1]");
        let format = ActionFormat::new(&NodeConfig::parse(&positions, &path).unwrap());
        let report = TickReport {
            now_ns: 5,
            source: crate::control::Source::Plan,
            faults: Default::default(),
            plan_index: Some(0),
            safety: Default::default(),
            late_dropped: 0,
            goal_held: false,
        };
        let ActionMessage::Pose(pose) = format.message(&report, &[0.3, -0.2], None) else {
            panic!("a pose");
        };
        let (p, q) = (&pose.pose.position, &pose.pose.orientation);
        assert_eq!(
            [p.x, p.y, p.z, q.x, q.y, q.z, q.w],
            [0.3, -0.2, 0.75, 1.0, 0.0, 0.0, 0.0]
        );
        let skewed = positions.replace("[1, 0, 0, 0]", "[1, 1, 0, 0]");
        let e = NodeConfig::parse(&skewed, &path).unwrap_err().to_string();
        assert!(
            e.contains("`topics.pose_orientation`: expected a unit quaternion [x, y, z, w]"),
            "{e}"
        );
        // Four digits of √½ are accepted and sent at unit length.
        let typed = positions.replace("[1, 0, 0, 0]", "[0.7071, 0, 0, 0.7071]");
        let format = ActionFormat::new(&NodeConfig::parse(&typed, &path).unwrap());
        let ActionMessage::Pose(pose) = format.message(&report, &[0.3, -0.2], None) else {
            panic!("a pose");
        };
        let q = &pose.pose.orientation;
        assert!((q.x * q.x + q.w * q.w - 1.0).abs() < 1e-12 && q.x == q.w);
    }

    fn image() -> Image {
        Image {
            header: Header {
                stamp: Time::from_ns(7),
                frame_id: "cam".into(),
            },
            height: 1,
            width: 2,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: 6,
            data: vec![1, 2, 3, 4, 5, 6],
        }
    }

    #[test]
    fn an_image_read_in_place_matches_serde_at_every_alignment_and_byte_order() {
        for frame_id_len in 0..6 {
            for encoding in ["rgb8", "mono8", "bgra8", "16UC1"] {
                let mut img = image();
                img.header.frame_id = "f".repeat(frame_id_len);
                img.header.stamp = Time { sec: -3, nanosec: 999 };
                img.encoding = encoding.into();
                img.data = (0..=frame_id_len as u8 * 7).collect();
                let check = |bytes: &[u8]| {
                    let r = ImageRef::from_cdr(bytes).unwrap();
                    let want: Image = from_cdr(bytes).unwrap();
                    assert_eq!(
                        (r.stamp, r.height, r.width, r.encoding, r.step, r.data),
                        (
                            want.header.stamp,
                            want.height,
                            want.width,
                            want.encoding.as_str(),
                            want.step,
                            &want.data[..]
                        )
                    );
                    assert_eq!(want, img);
                };
                check(&to_cdr(&img));
                let big = cdr::serialize::<_, _, cdr::CdrBe>(&img, cdr::Infinite).unwrap();
                assert_eq!(&big[..2], &[0, 0]);
                check(&big);
            }
        }
    }

    #[test]
    fn a_cut_or_corrupt_image_is_an_error_not_a_panic() {
        let bytes = to_cdr(&image());
        for cut in 0..bytes.len() {
            assert!(ImageRef::from_cdr(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        let at = bytes.len() - 6 - 4; // the data's length
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = ImageRef::from_cdr(&huge).unwrap_err();
        assert!(err.contains("4294967295 bytes expected"), "{err}");
        let mut foreign = bytes;
        foreign[1] = 7;
        assert!(ImageRef::from_cdr(&foreign)
            .unwrap_err()
            .starts_with("CDR encapsulation [00, 07]"));
    }

    #[test]
    fn cut_or_corrupt_joint_states_and_poses_are_errors_not_panics() {
        let js = to_cdr(&JointState {
            header: Header::default(),
            name: vec!["ee_x".into(), "ee_y".into()],
            position: vec![0.5, -0.25],
            velocity: vec![0.0, 0.1],
            effort: vec![],
        });
        let pose = to_cdr(&PoseStamped {
            header: Header {
                frame_id: "map".into(),
                ..Header::default()
            },
            pose: Pose {
                position: Point { x: 1.0, y: 2.0, z: 0.0 },
                orientation: Quaternion {
                    x: 0.0,
                    y: 0.0,
                    z: 0.0,
                    w: 1.0,
                },
            },
        });
        for (bytes, decode) in [
            (&js, (|b: &[u8]| from_cdr::<JointState>(b).is_ok()) as fn(&[u8]) -> bool),
            (&pose, |b: &[u8]| from_cdr::<PoseStamped>(b).is_ok()),
        ] {
            assert!(decode(bytes));
            for cut in 0..bytes.len() {
                assert!(!decode(&bytes[..cut]), "cut at {cut}");
            }
            // Every byte in turn made 0x00, 0x7f or 0xff (a length too long for the message
            // among them): decoded or refused, never a panic or a huge allocation.
            for at in 0..bytes.len() {
                for value in [0x00, 0x7f, 0xff] {
                    let mut corrupt = bytes.clone();
                    corrupt[at] = value;
                    decode(&corrupt);
                }
            }
        }
    }

    /// A report after `ticks` ticks, `no_plan` + `state_stale` of which fell back (holding).
    fn report(ticks: u64, no_plan: u64, state_stale: u64, plan_errors: u64) -> Diagnostics {
        let count = |f: Fault| match f {
            Fault::NoPlan => no_plan,
            Fault::StateStale => state_stale,
            _ => 0,
        };
        let latency = crate::control::Histogram::default().summary_ms();
        Diagnostics {
            ticks,
            faults: Fault::ALL.iter().map(|&f| (f.name(), count(f))).collect(),
            hold: no_plan + state_stale,
            stop: 0,
            waiting: 0,
            clipped: 0,
            rate_limited: 0,
            late_actions_dropped: 0,
            goal_held: 0,
            plans: 0,
            plan_errors,
            steps_recorded_late: 0,
            steps_skipped: 0,
            states_rejected: 0,
            deadline_misses: 0,
            records_dropped: 0,
            tick_latency: latency,
            tick_jitter: latency,
            plan_latency: latency,
            frames: Default::default(),
            goal: None,
        }
    }

    #[test]
    fn the_diagnostics_level_says_how_the_loop_did_since_the_previous_report() {
        let mut reports = DiagnosticReports::default();
        let mut status = |d: Diagnostics| {
            let array = reports.array(Header::default(), &d);
            let s = &array.status[0];
            let no_plan = s.values.iter().find(|kv| kv.key == "fault.no_plan").unwrap();
            assert_eq!(no_plan.value, "20", "the values count from the start");
            (s.level, s.message.clone())
        };
        // Start-up: no plan yet for the first 20 ticks.
        assert_eq!(
            status(report(100, 20, 0, 0)),
            (1, "20 of 100 ticks since the last report fell back (no_plan 20)".into())
        );
        assert_eq!(status(report(200, 20, 0, 0)), (0, "ok".into()), "healthy since");
        assert_eq!(
            status(report(300, 20, 100, 1)),
            (
                2,
                "every tick since the last report fell back (state_stale 100); plan_errors 1".into()
            )
        );
        assert_eq!(
            status(report(400, 20, 100, 3)),
            (1, "plan_errors 2 since the last report".into())
        );
        assert_eq!(
            status(report(400, 20, 100, 3)),
            (2, "no control tick ran since the last report".into())
        );
        let mut late = report(500, 20, 100, 3);
        (late.deadline_misses, late.records_dropped, late.states_rejected) = (2, 1, 4);
        (late.steps_recorded_late, late.steps_skipped) = (30, 7);
        assert_eq!(
            status(late),
            (
                1,
                "steps_skipped 7, deadline_misses 2, records_dropped 1, states_rejected 4 since the last report".into()
            ),
            "a gap in the planner's memory warns; steps it recorded late do not"
        );
        let first = DiagnosticReports::default().array(Header::default(), &report(0, 0, 0, 0));
        assert_eq!(first.status[0].level, 2, "a first report without ticks is an error too");
    }

    #[test]
    fn strings_and_bytes_round_trip_through_the_bounded_decoders() {
        assert_eq!(from_cdr::<Image>(&to_cdr(&image())).unwrap(), image());
        let js = JointState {
            header: Header::default(),
            name: vec!["a".into(), "joint_2".into()],
            position: vec![0.5],
            velocity: vec![],
            effort: vec![],
        };
        assert_eq!(from_cdr::<JointState>(&to_cdr(&js)).unwrap(), js);
    }
}
