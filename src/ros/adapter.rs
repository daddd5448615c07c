//! The ROS 2 adapter (cargo feature `ros`): a thin r2r shell around the live loop.
//!
//! - `sensor_msgs/Image` on `topics.image` → the frame ring (decoded in the spin thread);
//! - `sensor_msgs/JointState` on `topics.state` → the state cell (positions, then velocities);
//! - `geometry_msgs/PoseStamped` on `topics.goal.topic` (e.g. RViz's 2D Goal Pose) → the goal
//!   queue; the planner thread checks each goal as it takes it;
//! - the publisher thread sends each tick's action as `topics.action_type` on `topics.action`,
//!   plans' first tokens on `topics.plan`, and `diagnostic_msgs/DiagnosticArray` once a second;
//! - ROS parameters: `config` (path of the node YAML) and `use_sim_time` (stamps and
//!   staleness then follow `/clock`, and the planner's steps are due at steps of `/clock`: a
//!   paused, slow or fast simulator gives its memory one frame per model step of sim time, as
//!   long as the plans keep up; the control tick still wakes on the wall clock).
//!
//! It is type-checked without ROS (`cargo clippy --features ros,r2r/doc-only`) and built for
//! real in a sourced ROS 2 workspace (colcon + cargo-ament-build).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use futures::{future, StreamExt};
use r2r::{builtin_interfaces, diagnostic_msgs, geometry_msgs, sensor_msgs, std_msgs, trajectory_msgs, QosProfile};

use crate::config::{ActionType, NodeConfig};
use crate::control::live::{self, Clock, GoalInbox, LiveParts, SystemClock};
use crate::control::{ActionSink, Diagnostics, Source, StateCell, TickReport};
use crate::frames::ImageView;
use crate::msgs::{self, ActionFormat, ActionMessage, DiagnosticReports};
use crate::node::{camera_rings, node_parts, state_intake};
use crate::planner::{GoalMessage, Plan};

/// ROS time as the loop sees it under `use_sim_time`: the spin thread stores `/clock` time
/// here, so the control tick reads an atomic instead of locking r2r's clock.
struct SimClock(AtomicI64);

impl Clock for SimClock {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

fn stamp_ns(t: &builtin_interfaces::msg::Time) -> i64 {
    msgs::Time {
        sec: t.sec,
        nanosec: t.nanosec,
    }
    .to_ns()
}

fn ros_time(t: msgs::Time) -> builtin_interfaces::msg::Time {
    builtin_interfaces::msg::Time {
        sec: t.sec,
        nanosec: t.nanosec,
    }
}

fn ros_header(h: msgs::Header) -> std_msgs::msg::Header {
    std_msgs::msg::Header {
        stamp: ros_time(h.stamp),
        frame_id: h.frame_id,
    }
}

fn ros_array(a: msgs::Float64MultiArray) -> std_msgs::msg::Float64MultiArray {
    let layout = std_msgs::msg::MultiArrayLayout {
        dim: Vec::new(),
        data_offset: a.layout.data_offset,
    };
    std_msgs::msg::Float64MultiArray { layout, data: a.data }
}

enum ActionPublisher {
    Array(r2r::Publisher<std_msgs::msg::Float64MultiArray>),
    Trajectory(r2r::Publisher<trajectory_msgs::msg::JointTrajectory>),
    Pose(r2r::Publisher<geometry_msgs::msg::PoseStamped>),
}

/// The output port on r2r publishers (runs in the live loop's publisher thread).
struct RosSink {
    action: ActionPublisher,
    plan: r2r::Publisher<std_msgs::msg::Float64MultiArray>,
    diagnostics: r2r::Publisher<diagnostic_msgs::msg::DiagnosticArray>,
    reports: DiagnosticReports,
    format: ActionFormat,
    failures: u64,
}

impl RosSink {
    fn check(&mut self, what: &str, result: r2r::Result<()>) {
        if let Err(e) = result {
            self.failures += 1;
            if self.failures.is_power_of_two() {
                tracing::error!(%what, error = %e, failures = self.failures, "publish failed");
            }
        }
    }
}

impl ActionSink for RosSink {
    fn action(&mut self, report: &TickReport, action: &[f64], plan: Option<&Plan>) {
        if report.source == Source::Waiting {
            return;
        }
        let msg = self.format.message(report, action, plan);
        let result = match (&self.action, msg) {
            (ActionPublisher::Array(p), ActionMessage::Array(m)) => p.publish(&ros_array(m)),
            (ActionPublisher::Trajectory(p), ActionMessage::Trajectory(m)) => {
                let points = m
                    .points
                    .into_iter()
                    .map(|q| trajectory_msgs::msg::JointTrajectoryPoint {
                        positions: q.positions,
                        velocities: q.velocities,
                        accelerations: q.accelerations,
                        effort: q.effort,
                        time_from_start: builtin_interfaces::msg::Duration {
                            sec: q.time_from_start.sec,
                            nanosec: q.time_from_start.nanosec,
                        },
                    })
                    .collect();
                let header = ros_header(m.header);
                p.publish(&trajectory_msgs::msg::JointTrajectory {
                    header,
                    joint_names: m.joint_names,
                    points,
                })
            }
            (ActionPublisher::Pose(p), ActionMessage::Pose(m)) => {
                let (pos, o) = (m.pose.position, m.pose.orientation);
                let pose = geometry_msgs::msg::Pose {
                    position: geometry_msgs::msg::Point {
                        x: pos.x,
                        y: pos.y,
                        z: pos.z,
                    },
                    orientation: geometry_msgs::msg::Quaternion {
                        x: o.x,
                        y: o.y,
                        z: o.z,
                        w: o.w,
                    },
                };
                p.publish(&geometry_msgs::msg::PoseStamped {
                    header: ros_header(m.header),
                    pose,
                })
            }
            _ => unreachable!("the publisher is created for the configured action type"),
        };
        self.check("action", result);
    }

    fn plan(&mut self, plan: &Plan) {
        let token: Vec<f64> = plan.first_token.iter().map(|&v| f64::from(v)).collect();
        let result = self.plan.publish(&ros_array(msgs::float64_array(&token)));
        self.check("plan", result);
    }

    fn diagnostics(&mut self, now_ns: i64, d: &Diagnostics) {
        let header = msgs::Header {
            stamp: msgs::Time::from_ns(now_ns),
            frame_id: self.format.frame_id.clone(),
        };
        let array = self.reports.array(header, d);
        let status = array
            .status
            .into_iter()
            .map(|s| diagnostic_msgs::msg::DiagnosticStatus {
                level: s.level,
                name: s.name,
                message: s.message,
                hardware_id: s.hardware_id,
                values: s
                    .values
                    .into_iter()
                    .map(|kv| diagnostic_msgs::msg::KeyValue {
                        key: kv.key,
                        value: kv.value,
                    })
                    .collect(),
            })
            .collect();
        let result = self.diagnostics.publish(&diagnostic_msgs::msg::DiagnosticArray {
            header: ros_header(array.header),
            status,
        });
        self.check("diagnostics", result);
    }
}

/// Run the node until SIGINT or SIGTERM (or a thread of it dies). `config` overrides the
/// `config` parameter.
pub fn run(config: Option<&Path>) -> anyhow::Result<()> {
    // A signal ends the loop below, whose stop publishes the last action (ControlCore::
    // shutdown). Not a second signal but a watchdog bounds the stop: ros2 launch adds its own
    // SIGINT to systemd's SIGTERM, and Ctrl-C under launch reaches the node twice.
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, signalled.clone())?;
    }
    let ctx = r2r::Context::create()?;
    // The namespace comes from the launch (--ros-args -r __ns:=...), which rcl applies here.
    let mut node = r2r::Node::create(ctx, super::names::NODE_NAME, "")?;
    let config_path: PathBuf = match config {
        Some(p) => p.to_owned(),
        None => PathBuf::from(
            node.get_parameter::<String>("config")
                .map_err(|e| anyhow::anyhow!("parameter `config`: expected the path of the node YAML ({e})"))?,
        ),
    };
    let cfg = NodeConfig::load(&config_path)?;
    // The parameter services (ros2 param list/get); r2r also switches its clock to /clock here
    // when use_sim_time is set.
    let mut pool = LocalPool::new();
    let spawner = pool.spawner();
    let (parameter_services, changes) = node.make_parameter_handler()?;
    spawner.spawn_local(parameter_services)?;
    // The node reads its parameters once: a change is accepted by the parameter service but
    // changes nothing until a restart, and says so.
    spawner.spawn_local(changes.for_each(|(name, _)| {
        tracing::warn!(parameter = %name, "parameters are read at start only: restart the node for this change");
        future::ready(())
    }))?;
    let use_sim_time = node.get_parameter::<bool>("use_sim_time").unwrap_or(false);
    let sim_clock = Arc::new(SimClock(AtomicI64::new(0)));
    let clock: Arc<dyn Clock> = if use_sim_time {
        sim_clock.clone()
    } else {
        Arc::new(SystemClock)
    };
    let ros_clock = node.get_ros_clock();

    let t = &cfg.topics;
    let qos = QosProfile::default();
    let action = match t.action_type {
        ActionType::Float64MultiArray => ActionPublisher::Array(node.create_publisher(&t.action, qos.clone())?),
        ActionType::JointTrajectory => ActionPublisher::Trajectory(node.create_publisher(&t.action, qos.clone())?),
        ActionType::PoseStamped => ActionPublisher::Pose(node.create_publisher(&t.action, qos.clone())?),
    };
    let sink = RosSink {
        action,
        plan: node.create_publisher(&t.plan, qos.clone())?,
        diagnostics: node.create_publisher(&t.diagnostics, qos)?,
        reports: DiagnosticReports::default(),
        format: ActionFormat::new(&cfg),
        failures: 0,
    };

    let (task, core) = node_parts(&cfg)?;
    let rings = camera_rings(&cfg, task.planner().contract())?;
    let (writers, frames) = crate::frames::camera_rings(&rings);
    let state = Arc::new(StateCell::default());

    for (ring, mut frames_in) in rings.iter().zip(writers) {
        let images = node.subscribe::<sensor_msgs::msg::Image>(&ring.topic, QosProfile::sensor_data())?;
        let topic = ring.topic.clone();
        let mut rejected = 0u64;
        spawner.spawn_local(images.for_each(move |img| {
            let view = ImageView {
                encoding: &img.encoding,
                width: img.width,
                height: img.height,
                step: img.step,
                data: &img.data,
                stamp_ns: stamp_ns(&img.header.stamp),
            };
            if let Err(e) = frames_in.write(&view) {
                // Counted in the diagnostics by kind; the reason (an encoding or size the
                // config does not take) on the first rejection and every 1000th, not at the
                // camera's rate.
                rejected += 1;
                if rejected % 1000 == 1 {
                    tracing::warn!(topic = %topic, rejected, error = %e, "camera frame rejected");
                }
            }
            future::ready(())
        }))?;
    }
    let state_in = state.clone();
    let joints = node.subscribe::<sensor_msgs::msg::JointState>(&t.state, QosProfile::sensor_data())?;
    let mut intake = state_intake(&cfg, task.planner().contract())?;
    let state_topic = t.state.clone();
    spawner.spawn_local(joints.for_each(move |js| {
        let stamp = stamp_ns(&js.header.stamp);
        match intake.take(stamp, &js.name, &js.position, &js.velocity) {
            Ok(sample) => state_in.publish(sample),
            // Counted in the diagnostics; the state goes stale and the state_stale fault holds
            // or stops the arm. Warn on the first rejection and every 1000th, not at the
            // driver's rate.
            Err(e) => {
                state_in.count_rejected();
                let rejected = state_in.rejected();
                if rejected % 1000 == 1 {
                    tracing::warn!(topic = %state_topic, rejected, stamp_ns = stamp, error = %e, "joint state rejected");
                }
            }
        }
        future::ready(())
    }))?;

    let goals = Arc::new(GoalInbox::default());
    if let Some(goal) = &t.goal {
        let goals_in = goals.clone();
        let poses = node.subscribe::<geometry_msgs::msg::PoseStamped>(&goal.topic, QosProfile::default())?;
        spawner.spawn_local(poses.for_each(move |pose| {
            // Checked (frame, bounds, keep-out) where the planner thread takes it.
            goals_in.post(GoalMessage {
                position: [pose.pose.position.x, pose.pose.position.y],
                frame_id: pose.header.frame_id,
            });
            future::ready(())
        }))?;
    }

    let parts = LiveParts {
        task,
        core,
        frames,
        state,
        sink: Box::new(sink),
        clock,
        goals,
        tick: cfg.control.tick(),
        step: cfg.control.step(),
    };
    let live = live::spawn(parts)?;
    tracing::info!(config = %config_path.display(), use_sim_time, "df_planner node running");
    loop {
        if signalled.load(Ordering::Acquire) {
            tracing::info!("signalled: stopping");
            stop(live);
            return Ok(());
        }
        // A dead thread means no action, safe or not, per tick: stop (the control thread, if
        // alive, publishes the last action) and exit rather than look alive.
        if let Some(thread) = live.ended_thread() {
            tracing::error!(%thread, "a node thread ended unexpectedly; stopping");
            stop(live);
            anyhow::bail!("the {thread} thread ended unexpectedly (a panic; see the log above)");
        }
        node.spin_once(Duration::from_millis(2));
        pool.run_until_stalled();
        if use_sim_time {
            if let Ok(now) = ros_clock
                .lock()
                .map_err(|e| e.to_string())
                .and_then(|mut c| c.get_now().map_err(|e| e.to_string()))
            {
                sim_clock.0.store(now.as_nanos() as i64, Ordering::Release);
            }
        }
    }
}

/// Stop the node's threads (the control thread's last tick publishes the last action) and give
/// DDS, which sends in the background, time to send it before the participant goes; a stop that
/// hangs ends the process after STOP_LIMIT.
fn stop(live: live::LiveNode) {
    const STOP_LIMIT: Duration = Duration::from_secs(3);
    std::thread::spawn(|| {
        std::thread::sleep(STOP_LIMIT);
        tracing::error!("stopping took longer than {STOP_LIMIT:?}: exiting");
        std::process::exit(1);
    });
    live.stop();
    std::thread::sleep(Duration::from_millis(200));
}
