//! The replay output: an MCAP file with ROS 2 schemas (ros2msg + CDR) holding the actions
//! published, the plans' first tokens and the diagnostics, readable by Foxglove and the
//! `mcap` tools.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::config::{ActionType, NodeConfig};
use crate::control::{trajectory_chunk, ActionSink, Diagnostics, TickReport};
use crate::planner::Plan;

use super::msgs::*;

pub struct McapSink {
    writer: Option<mcap::Writer<BufWriter<File>>>,
    action_channel: u16,
    plan_channel: u16,
    diag_channel: u16,
    sequence: u32,
    action_type: ActionType,
    joint_names: Vec<String>,
    frame_id: String,
    /// Every published action, for the summary and the comparison with recorded actions.
    pub actions: Vec<(i64, Vec<f64>)>,
    pub error: Option<String>,
}

fn type_name(t: ActionType) -> &'static str {
    match t {
        ActionType::Float64MultiArray => "std_msgs/msg/Float64MultiArray",
        ActionType::JointTrajectory => "trajectory_msgs/msg/JointTrajectory",
        ActionType::PoseStamped => "geometry_msgs/msg/PoseStamped",
    }
}

impl McapSink {
    pub fn create(path: &Path, cfg: &NodeConfig) -> Result<Self, String> {
        let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = mcap::WriteOptions::new()
            .profile("ros2")
            .library("df_planner")
            .create(BufWriter::new(file))
            .map_err(|e| e.to_string())?;
        let mut channel = |topic: &str, ty: &str| -> Result<u16, String> {
            let schema = schema(ty).expect("we write only known types");
            let id = w
                .add_schema(ty, "ros2msg", schema.as_bytes())
                .map_err(|e| e.to_string())?;
            w.add_channel(id, topic, "cdr", &BTreeMap::new())
                .map_err(|e| e.to_string())
        };
        let t = &cfg.topics;
        let action_channel = channel(&t.action, type_name(t.action_type))?;
        let plan_channel = channel(&t.plan, "std_msgs/msg/Float64MultiArray")?;
        let diag_channel = channel(&t.diagnostics, "diagnostic_msgs/msg/DiagnosticArray")?;
        Ok(Self {
            writer: Some(w),
            action_channel,
            plan_channel,
            diag_channel,
            sequence: 0,
            action_type: t.action_type,
            joint_names: t.joint_names.clone(),
            frame_id: t.frame_id.clone(),
            actions: Vec::new(),
            error: None,
        })
    }

    fn write(&mut self, channel_id: u16, t_ns: i64, data: &[u8]) {
        let Some(w) = self.writer.as_mut() else { return };
        self.sequence += 1;
        let header = mcap::records::MessageHeader {
            channel_id,
            sequence: self.sequence,
            log_time: t_ns as u64,
            publish_time: t_ns as u64,
        };
        if let Err(e) = w.write_to_known_channel(&header, data) {
            self.error.get_or_insert(e.to_string());
        }
    }

    pub fn finish(&mut self) -> Result<(), String> {
        if let Some(mut w) = self.writer.take() {
            w.finish().map_err(|e| e.to_string())?;
        }
        self.error.take().map_or(Ok(()), Err)
    }

    fn header(&self, t_ns: i64) -> Header {
        Header {
            stamp: Time::from_ns(t_ns),
            frame_id: self.frame_id.clone(),
        }
    }
}

fn array(data: &[f64]) -> Float64MultiArray {
    Float64MultiArray {
        layout: MultiArrayLayout::default(),
        data: data.to_vec(),
    }
}

impl ActionSink for McapSink {
    fn action(&mut self, report: &TickReport, action: &[f64], plan: Option<&Plan>) {
        let now = report.now_ns;
        self.actions.push((now, action.to_vec()));
        let bytes = match self.action_type {
            ActionType::Float64MultiArray => to_cdr(&array(action)),
            ActionType::JointTrajectory => {
                let points = trajectory_chunk(action, plan, report.plan_index, now)
                    .into_iter()
                    .map(|p| JointTrajectoryPoint {
                        positions: p.positions,
                        velocities: p.velocities,
                        accelerations: Vec::new(),
                        effort: Vec::new(),
                        time_from_start: Time::from_ns(p.time_from_start_ns),
                    })
                    .collect();
                to_cdr(&JointTrajectory {
                    header: self.header(now),
                    joint_names: self.joint_names.clone(),
                    points,
                })
            }
            ActionType::PoseStamped => {
                let c = |i: usize| action.get(i).copied().unwrap_or(0.0);
                let pose = Pose {
                    position: Point {
                        x: c(0),
                        y: c(1),
                        z: c(2),
                    },
                    orientation: Quaternion {
                        x: 0.0,
                        y: 0.0,
                        z: 0.0,
                        w: 1.0,
                    },
                };
                to_cdr(&PoseStamped {
                    header: self.header(now),
                    pose,
                })
            }
        };
        self.write(self.action_channel, now, &bytes);
    }

    fn plan(&mut self, plan: &Plan) {
        let token: Vec<f64> = plan.first_token.iter().map(|&v| f64::from(v)).collect();
        self.write(self.plan_channel, plan.t0_ns, &to_cdr(&array(&token)));
    }

    fn diagnostics(&mut self, now_ns: i64, diag: &Diagnostics) {
        let msg = diagnostic_array(self.header(now_ns), diag);
        self.write(self.diag_channel, now_ns, &to_cdr(&msg));
    }
}

/// One DiagnosticStatus, level WARN while any fault count is non-zero in this report.
pub fn diagnostic_array(header: Header, d: &Diagnostics) -> DiagnosticArray {
    let kv = |key: &str, value: String| KeyValue { key: key.into(), value };
    let mut values = vec![
        kv("ticks", d.ticks.to_string()),
        kv("plans", d.plans.to_string()),
        kv("plan_errors", d.plan_errors.to_string()),
        kv("hold", d.hold.to_string()),
        kv("stop", d.stop.to_string()),
        kv("clipped", d.clipped.to_string()),
        kv("rate_limited", d.rate_limited.to_string()),
        kv("late_actions_dropped", d.late_actions_dropped.to_string()),
        kv("deadline_misses", d.deadline_misses.to_string()),
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
        ("frames.dropped_full", f.dropped_full),
        ("frames.rejected_encoding", f.rejected_encoding),
        ("frames.rejected_size", f.rejected_size),
        ("frames.rejected_malformed", f.rejected_malformed),
        ("frames.rejected_out_of_order", f.rejected_out_of_order),
        ("frames.rejected_duplicate", f.rejected_duplicate),
    ] {
        values.push(kv(name, v.to_string()));
    }
    let faulty = d.faults.iter().any(|(_, c)| *c > 0) || d.plan_errors > 0;
    let status = DiagnosticStatus {
        level: u8::from(faulty),
        name: "df_planner".into(),
        message: if faulty {
            "faults seen: acting on fallback at times".into()
        } else {
            "ok".into()
        },
        hardware_id: String::new(),
        values,
    };
    DiagnosticArray {
        header,
        status: vec![status],
    }
}
