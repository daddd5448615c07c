//! `df_planner serve` for camera models: a simulator drives the robot's own pipeline — camera
//! frames into the frame rings, the end-effector state, the planner task with its memory, the
//! control tick with its safety filter and fallbacks — on a virtual clock (`OfflineLoop`),
//! one simulator step per request. What the arm would have been sent is what comes back.
//!
//! One JSON object per line in, one per line out:
//! - `{"op": "reset"}` → `{"ok": true}`: a new episode (history, plans and clock start over).
//! - `{"op": "step", "state": [...], "images": [[...], ...]}`: the state now (one value per
//!   state joint, as `sensor_msgs/JointState` positions) and one rgb8 frame per camera, in the
//!   model's `cameras.inputs` order, each height × width × 3 bytes; `images` may be null or
//!   shorter (a camera that sent nothing this step). → `{"ok": true, "action": [...],
//!   "source": "plan" | "hold" | "stop", "faults": [...], "replanned": bool,
//!   "frame_errors": [...], "plan_error": null | "..."}`. A rejected frame is counted and
//!   named in `frame_errors`, and the camera's previous frame serves, as on the robot, until
//!   it is `safety.camera_timeout_s` old: then planning pauses and the tick holds or stops as
//!   the config says. `plan_error` says why a plan failed this step (the tick kept the last plan or
//!   fell back). A state of the wrong size is refused before it reaches the loop.
//! - `{"op": "stats"}` → `{"ok": true, "diagnostics": {...}}` (the node's diagnostics: ticks,
//!   faults, hold/stop counts, plan and tick latency, frame counters) for the current episode.
//!
//! A malformed line or a bad request is answered `{"ok": false, "error": "..."}` and logged.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::NodeConfig;
use crate::control::{ActionSink, Diagnostics, OfflineLoop, Source, StateSample, TickReport};
use crate::frames::ImageView;
use crate::node::offline_loop;
use crate::planner::Plan;
use crate::replay::build_loop;
use crate::serve::{error, parse_request};

/// The ops of this protocol, for error replies.
const OPS: &str = r#"{"op": "reset" | "step" | "stats", ...}"#;

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Reset {},
    Step {
        state: Vec<f64>,
        #[serde(default)]
        images: Option<Vec<Vec<u8>>>,
    },
    Stats {},
}

/// The last tick's output.
#[derive(Default)]
struct LastTick {
    action: Vec<f64>,
    source: Option<Source>,
    faults: Vec<&'static str>,
    plans: u64,
}

impl ActionSink for LastTick {
    fn action(&mut self, report: &TickReport, action: &[f64], _: Option<&Plan>) {
        self.action.clear();
        self.action.extend_from_slice(action);
        self.source = Some(report.source);
        self.faults = report.faults.iter().map(|f| f.name()).collect();
    }
    fn plan(&mut self, _: &Plan) {
        self.plans += 1;
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
}

impl Bridge {
    pub fn new(cfg: &NodeConfig) -> Result<Self, String> {
        // Its states are positions only: a PD controller would read other positions as velocities.
        if let Some(s) = cfg.serve.as_ref().filter(|s| s.drives_pd()) {
            return Err(format!(
                "serve.execute / serve.hold_radius: the bridge sends positions only, without the velocities \
                 the PD controller reads; expected diffused_actions and no hold radius, got {} and {}",
                s.execute.name(),
                s.hold_radius
                    .map_or("no hold radius".into(), |r| format!("hold radius {r}"))
            ));
        }
        let lp = build_loop(cfg).map_err(|e| e.to_string())?;
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
        Ok(Self {
            cfg: cfg.clone(),
            lp: Some(lp),
            sink: LastTick::default(),
            step_ns: cfg.control.step().as_nanos() as i64,
            steps: 0,
            cameras,
        })
    }

    /// Answer one request line; never panics on input.
    pub fn handle(&mut self, line: &str) -> Value {
        let request: Request = match parse_request(line, OPS) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        match request {
            Request::Reset {} => self.reset(),
            Request::Step { state, images } => self.step(&state, images.as_deref().unwrap_or(&[])),
            Request::Stats {} => json!({"ok": true, "diagnostics": self.lp().diagnostics()}),
        }
    }

    /// A new episode: the loaded model in a fresh loop (history, plans, control state, frame
    /// rings, counters and clock start over; the planner's noise restarts from its seed).
    fn reset(&mut self) -> Value {
        let mut planner = self
            .lp
            .take()
            .expect("the loop exists between requests")
            .into_task()
            .into_planner();
        planner.reset();
        planner.reseed(self.cfg.planner.seed);
        match offline_loop(&self.cfg, planner) {
            Ok(lp) => {
                self.lp = Some(lp);
                self.steps = 0;
                self.sink = LastTick::default();
                json!({"ok": true})
            }
            Err(e) => error(e.to_string()),
        }
    }

    fn lp(&mut self) -> &mut OfflineLoop {
        self.lp.as_mut().expect("the loop exists between requests")
    }

    fn step(&mut self, state: &[f64], images: &[Vec<u8>]) -> Value {
        // Step k happens at (k + 1) · step: the loop's clock starts at the first input.
        let t = (self.steps + 1) * self.step_ns;
        // The bridge sends positions only, so the state is the observation itself.
        let observation_dim = self.lp().contract().layout.observation_dim;
        let sample = StateSample::new(t, state, &[]).filter(|_| state.len() == observation_dim);
        let Some(sample) = sample else {
            return error(format!(
                "state: expected {} values (the model's observation_dim: one position per state joint), got {}",
                observation_dim,
                state.len()
            ));
        };
        if images.len() > self.cameras.len() {
            return error(format!(
                "images: expected at most {} frames (the model's cameras), got {}",
                self.cameras.len(),
                images.len()
            ));
        }
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
        if let Err(e) = lp.advance_to(t + 1, &mut self.sink) {
            return error(e.to_string());
        }
        // A plan that failed this step (the tick fell back or kept the last plan): why.
        let plan_error = match lp.plan_errors() {
            (n, Some(e)) if n > plan_errors => Some(e.to_string()),
            _ => None,
        };
        self.steps += 1;
        let source = match self.sink.source {
            Some(Source::Plan) => "plan",
            Some(Source::Hold) => "hold",
            Some(Source::Stop) | None => "stop",
            Some(Source::Waiting) => "waiting",
        };
        json!({
            "ok": true,
            "action": self.sink.action,
            "source": source,
            "faults": self.sink.faults,
            "replanned": self.sink.plans > plans,
            "frame_errors": frame_errors,
            "plan_error": plan_error,
        })
    }
}
