//! The replay output: an MCAP file with ROS 2 schemas (ros2msg + CDR) holding the actions
//! published, the plans' first tokens and the diagnostics, readable by Foxglove and the
//! `mcap` tools.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::config::{ActionType, NodeConfig};
use crate::control::{ActionSink, Diagnostics, TickReport};
use crate::planner::Plan;
use crate::ros::names::TopicNames;

use crate::msgs::{float64_array, schema, to_cdr, ActionFormat, ActionMessage, DiagnosticReports, Header, Time};

pub struct McapSink {
    writer: Option<mcap::Writer<BufWriter<File>>>,
    action_channel: u16,
    plan_channel: u16,
    diag_channel: u16,
    reports: DiagnosticReports,
    sequence: u32,
    format: ActionFormat,
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
    /// The topics are the config's, named as the recorded node named them.
    pub fn create(path: &Path, cfg: &NodeConfig, names: &TopicNames) -> Result<Self, String> {
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
            w.add_channel(id, &names.resolve(topic), "cdr", &BTreeMap::new())
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
            reports: DiagnosticReports::default(),
            sequence: 0,
            format: ActionFormat::new(cfg),
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
}

impl ActionSink for McapSink {
    fn action(&mut self, report: &TickReport, action: &[f64], plan: Option<&Plan>) {
        let now = report.now_ns;
        let bytes = match self.format.message(report, action, plan) {
            ActionMessage::Array(m) => to_cdr(&m),
            ActionMessage::Trajectory(m) => to_cdr(&m),
            ActionMessage::Pose(m) => to_cdr(&m),
        };
        self.write(self.action_channel, now, &bytes);
    }

    fn plan(&mut self, plan: &Plan) {
        let token: Vec<f64> = plan.first_token.iter().map(|&v| f64::from(v)).collect();
        self.write(self.plan_channel, plan.t0_ns, &to_cdr(&float64_array(&token)));
    }

    fn diagnostics(&mut self, now_ns: i64, diag: &Diagnostics) {
        let header = Header {
            stamp: Time::from_ns(now_ns),
            frame_id: self.format.frame_id.clone(),
        };
        let array = self.reports.array(header, diag);
        self.write(self.diag_channel, now_ns, &to_cdr(&array));
    }
}
