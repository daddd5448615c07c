//! `df_planner serve` through the node's own loop: a simulator drives the robot's pipeline —
//! camera frames into the frame rings, the robot state, the planner task with its memory and
//! goal, the control tick with its PD execution, safety filter and fallbacks — on a virtual
//! clock (`OfflineLoop`), one simulator step per request. What the robot would have been sent
//! is what comes back. Camera models are always served this way; a state model with
//! `serve --node-loop` (the Maze2D evaluation's `node_loop`: the node's own score). Plans land
//! at the step that made them, unless `serve --plan-time-ms T` says how long one takes (or
//! `serve --plan-times FILE`: each plan as long as one drawn from the plan latencies `bench
//! --config` measured, seeded by the episode's seed): then the planner runs beside the
//! simulator's clock as the live planner thread would at that speed (the ticks meanwhile run
//! the previous plan; `OfflineLoop::with_plan_time`).
//!
//! One JSON object per line in, one per line out:
//! - `{"op": "reset", "goal": [x, y], "seed": n}` (both optional) → `{"ok": true}`: a new
//!   episode (history, plans and clock start over). `goal` arrives as a goal message would
//!   (checked against `serve.goal_bounds` and `serve.goal_keepout`; without one the node plans
//!   toward `planner.goal.target`); `seed` restarts the planner's noise from it (default
//!   `planner.seed`). A refused goal refuses the steps after it until a reset is accepted.
//! - `{"op": "step", "state": [...], "velocity": [...], "images": [[...], ...]}`: the state now
//!   (as `sensor_msgs/JointState` positions, one per state joint, and, where the model's
//!   observation is positions then velocities, as many velocities; the PD controller of
//!   `serve.execute` / `serve.hold_radius` needs them) and one rgb8 frame per camera, in the
//!   model's `cameras.inputs` order, each height × width × 3 bytes; `images` may be null or
//!   shorter (a camera that sent nothing this step). → `{"ok": true, "action": [...],
//!   "source": "plan" | "hold" | "stop", "faults": [...], "replanned": bool,
//!   "frame_errors": [...], "plan_error": null | "...", "holding": bool}`, and when replanned
//!   `"plan_ms"`, `"plan"` (the planned positions at `serve.position_dims`, one per step) and,
//!   with MCG, `"mcg_shift"`, `"mcg_pull"`, `"mcg_guidance"` as `serve` says them. A rejected
//!   frame is counted and named in `frame_errors`, and the camera's previous frame serves, as
//!   on the robot, until it is `safety.camera_timeout_s` old: then planning pauses and the tick
//!   holds or stops as the config says. `plan_error` says why a plan failed this step (the tick
//!   kept the last plan or fell back); `holding`: the tick held the goal at rest. The state is
//!   taken as the node's state intake takes a JointState (`StateIntake`: as many joints as the
//!   model observes, velocities where it observes them or a PD controller reads them, finite
//!   values); one it refuses refuses the step, which then takes no time.
//! - `{"op": "stats"}` → `{"ok": true, "diagnostics": {...}, "plans": n, "replan_ms_p50": f,
//!   "replan_ms_p99": f, "replan_ms_max": f, "replan_ms_buckets": [[f, n], ...]}`: the node's
//!   diagnostics for the current episode (ticks, faults, hold/stop counts, plan and tick
//!   latency, frame counters, and with a plan time (`--plan-time-ms`, `--plan-times`) the planner steps skipped too far
//!   behind and those entered into its memory without planning, too late to plan from), and the
//!   plans and their latency since the process started, as `serve` reports them.
//!
//! A malformed line or a bad request is answered `{"ok": false, "error": "..."}` and logged.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::NodeConfig;
use crate::control::{
    ActionSink, Diagnostics, Histogram, OfflineLoop, PlanTimes, Source, StateIntake, StateRejected, TickReport,
};
use crate::diffusion::McgReport;
use crate::frames::ImageView;
use crate::node::{offline_loop, state_intake};
use crate::planner::{GoalMessage, Plan};
use crate::replay::build_loop;
use crate::serve::{error, parse_request, replan_stats};

/// The ops of this protocol, for error replies.
const OPS: &str = r#"{"op": "reset" | "step" | "stats", ...}"#;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Reset {
        #[serde(default)]
        goal: Option<[f64; 2]>,
        #[serde(default)]
        seed: Option<u64>,
    },
    Step {
        state: Vec<f64>,
        #[serde(default)]
        velocity: Vec<f64>,
        #[serde(default)]
        images: Option<Vec<Vec<u8>>>,
    },
    Stats {},
}

/// The last tick's output, and the last plan's.
#[derive(Default)]
struct LastTick {
    action: Vec<f64>,
    source: Option<Source>,
    faults: Vec<&'static str>,
    holding: bool,
    plans: u64,
    position_dims: [usize; 2],
    plan_positions: Vec<[f64; 2]>,
    plan_ms: f64,
    mcg: Option<McgReport>,
    /// Every plan's latency since the process started.
    latency: Histogram,
}

impl ActionSink for LastTick {
    fn action(&mut self, report: &TickReport, action: &[f64], _: Option<&Plan>) {
        self.action.clear();
        self.action.extend_from_slice(action);
        self.source = Some(report.source);
        self.faults = report.faults.iter().map(|f| f.name()).collect();
        self.holding = report.goal_held;
    }
    fn plan(&mut self, plan: &Plan) {
        self.plans += 1;
        let [px, py] = self.position_dims;
        self.plan_positions = (0..plan.len())
            .map(|k| [plan.observation(k)[px], plan.observation(k)[py]])
            .collect();
        self.plan_ms = plan.latency_ns as f64 / 1e6;
        self.mcg = plan.mcg;
        self.latency.record(plan.latency_ns);
    }
    fn diagnostics(&mut self, _: i64, _: &Diagnostics) {}
}

pub struct Bridge {
    cfg: NodeConfig,
    /// None only while a reset rebuilds it.
    lp: Option<OfflineLoop>,
    sink: LastTick,
    step_ns: i64,
    steps: i64,
    /// Camera (role, height, width) in the model's order.
    cameras: Vec<(String, u32, u32)>,
    /// The node's state intake (`node::state_intake`): layout, finiteness, stamps.
    states: StateIntake,
    /// Why the latest reset was refused, until one is accepted: steps are refused meanwhile,
    /// rather than go on toward the goal before it.
    refused_reset: Option<String>,
    /// How long a plan takes on the loop's clock (`OfflineLoop::with_plan_time`); None: at once.
    plan_times: Option<PlanTimes>,
}

impl Bridge {
    /// `plan_times`: how long each plan takes on the simulator's clock, as if the planner ran
    /// in real time beside it at that speed (None: a plan lands at the step that made it).
    pub fn new(cfg: &NodeConfig, plan_times: Option<PlanTimes>) -> Result<Self, String> {
        let lp = build_loop(cfg)
            .map_err(|e| e.to_string())?
            .with_plan_time(plan_times.clone(), cfg.planner.seed);
        if (cfg.control.rate_hz * cfg.control.action_dt_s - 1.0).abs() > 1e-9 {
            return Err(format!(
                "control.rate_hz: expected 1 / action_dt_s = {} (one tick per simulator step), got {}",
                1.0 / cfg.control.action_dt_s,
                cfg.control.rate_hz
            ));
        }
        let cameras = lp
            .contract()
            .cameras
            .as_ref()
            .map(|c| c.inputs.iter().map(|i| (i.role.clone(), i.height, i.width)).collect())
            .unwrap_or_default();
        let serve = cfg.serve.clone().unwrap_or_default();
        let states = state_intake(cfg, lp.contract()).map_err(|e| e.to_string())?;
        Ok(Self {
            cfg: cfg.clone(),
            lp: Some(lp),
            sink: LastTick {
                position_dims: serve.position_dims,
                ..LastTick::default()
            },
            step_ns: cfg.control.step().as_nanos() as i64,
            steps: 0,
            cameras,
            states,
            refused_reset: None,
            plan_times,
        })
    }

    /// Answer one request line; never panics on input.
    pub fn handle(&mut self, line: &str) -> Value {
        let request: Request = match parse_request(line, OPS) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        match request {
            Request::Reset { goal, seed } => self.reset(goal, seed),
            Request::Step {
                state,
                velocity,
                images,
            } => match &self.refused_reset {
                Some(why) => error(format!(
                    "no episode: the last reset was refused ({why}); send a reset that is accepted"
                )),
                None => self.step(&state, &velocity, images.as_deref().unwrap_or(&[])),
            },
            Request::Stats {} => {
                let mut reply = replan_stats(&self.sink.latency);
                let lp = self.lp();
                reply["diagnostics"] = json!(lp.diagnostics());
                reply
            }
        }
    }

    /// A new episode: the loaded model in a fresh loop (history, plans, control state, frame
    /// rings, counters and clock start over; the planner's noise restarts from `seed`, else
    /// the config's), planning toward `goal` if given.
    fn reset(&mut self, goal: Option<[f64; 2]>, seed: Option<u64>) -> Value {
        let mut planner = self
            .lp
            .take()
            .expect("the loop exists between requests")
            .into_task()
            .into_planner();
        planner.reset();
        let seed = seed.unwrap_or(self.cfg.planner.seed);
        planner.reseed(seed);
        let mut lp = match offline_loop(&self.cfg, planner) {
            Ok(lp) => lp.with_plan_time(self.plan_times.clone(), seed),
            Err(e) => return error(e.to_string()),
        };
        // As a goal message in the goal topic's frame would arrive.
        let refused = goal.and_then(|position| {
            lp.receive_goal(&GoalMessage {
                position,
                frame_id: String::new(),
            })
            .err()
            .map(|e| format!("goal {e}"))
        });
        self.lp = Some(lp);
        self.states.restart();
        self.steps = 0;
        self.sink = LastTick {
            position_dims: self.sink.position_dims,
            latency: std::mem::take(&mut self.sink.latency),
            ..LastTick::default()
        };
        self.refused_reset = refused.clone();
        match refused {
            Some(why) => error(why),
            None => json!({"ok": true}),
        }
    }

    fn lp(&mut self) -> &mut OfflineLoop {
        self.lp.as_mut().expect("the loop exists between requests")
    }

    fn step(&mut self, state: &[f64], velocity: &[f64], images: &[Vec<u8>]) -> Value {
        // Step k happens at (k + 1) · step: the loop's clock starts at the first input.
        let t = (self.steps + 1) * self.step_ns;
        if images.len() > self.cameras.len() {
            return error(format!(
                "images: expected at most {} frames (the model's cameras), got {}",
                self.cameras.len(),
                images.len()
            ));
        }
        // As a JointState named `topics.state_joints` (in its own order without them). After the
        // checks that refuse the whole step: the intake keeps the stamp of a state it takes.
        let sample = match self.states.take(t, &self.cfg.topics.state_joints, state, velocity) {
            Ok(sample) => sample,
            Err(rejected) => {
                // Counted as the node counts it; the client names no joints, so the count is
                // what it got wrong.
                let why = match rejected {
                    StateRejected::Names { names, positions } => format!(
                        "expected {names} values in state (topics.state_joints names {names} joints), got {positions}"
                    ),
                    other => other.to_string(),
                };
                self.lp().state_rejected();
                return error(format!("state/velocity: {why}"));
            }
        };
        let mut frame_errors = Vec::new();
        let lp = self.lp.as_mut().expect("the loop exists between requests");
        for (i, (data, (role, height, width))) in images.iter().zip(&self.cameras).enumerate() {
            let (height, width) = (*height, *width);
            // Sizes are the frames' own claims: a frame of the wrong length is rejected by the
            // ring with the reason, as a wrong sensor_msgs/Image would be.
            let view = ImageView {
                encoding: "rgb8",
                width,
                height,
                step: width * 3,
                data,
                stamp_ns: t,
            };
            if let Err(e) = lp.ingest_image(i, &view) {
                frame_errors.push(format!("camera {i} ({role}): {e}"));
            }
        }
        lp.ingest_state(sample);
        let (plans, plan_errors) = (self.sink.plans, lp.plan_errors().0);
        // The step's time is spent once its state is in, whatever follows.
        self.steps += 1;
        if let Err(e) = lp.advance_to(t + 1, &mut self.sink) {
            return error(e.to_string());
        }
        // A plan that failed this step (the tick fell back or kept the last plan): why.
        let plan_error = match lp.plan_errors() {
            (n, Some(e)) if n > plan_errors => Some(e.to_string()),
            _ => None,
        };
        let replanned = self.sink.plans > plans;
        let source = match self.sink.source {
            Some(Source::Plan) => "plan",
            Some(Source::Hold) => "hold",
            Some(Source::Stop) | None => "stop",
            Some(Source::Waiting) => "waiting",
        };
        let mut reply = json!({
            "ok": true,
            "action": self.sink.action,
            "source": source,
            "faults": self.sink.faults,
            "replanned": replanned,
            "frame_errors": frame_errors,
            "plan_error": plan_error,
            "holding": self.sink.holding,
        });
        if replanned {
            reply["plan_ms"] = json!(self.sink.plan_ms);
            reply["plan"] = json!(self.sink.plan_positions);
            if let Some(mcg) = self.sink.mcg {
                reply["mcg_shift"] = json!(mcg.shift);
                reply["mcg_pull"] = json!(mcg.pull);
                reply["mcg_guidance"] = json!(mcg.guidance);
            }
        }
        reply
    }
}
