//! `df_planner serve`: the planner behind a line protocol on stdin/stdout, for simulators
//! that step the world themselves (the Maze2D evaluation in `df-train eval`).
//!
//! One JSON object per line in, one per line out:
//! - `{"op": "reset", "goal": [x, y], "seed": n}` (goal may be null: no guidance; seed is
//!   optional: the planner's noise restarts from it, so an episode samples the same whichever
//!   process runs it and whatever ran before) → `{"ok": true}`; a goal outside
//!   `serve.goal_bounds` or inside a `serve.goal_keepout` box (a wall) is refused, and steps
//!   are then refused too until a reset is accepted (not run on in the episode before)
//! - `{"op": "step", "obs": [...]}` → `{"ok": true, "action": [...], "replanned": bool,
//!   "plan_ms": f (when replanned), "plan": [[x, y], ...] (planned positions, when replanned),
//!   "holding": bool (holding the goal at rest, serve.hold_radius), "mcg_shift": f (when
//!   replanned with MCG and guided: how much averaging over the sampled futures changed the executed
//!   tokens' guidance, ‖ḡ − g₀‖ / ‖g₀‖), "mcg_pull": f (with it: how strong the averaged
//!   guidance was against plain guidance's, ‖ḡ‖ / ‖g₀‖), "mcg_guidance": f (with them: ‖g₀‖,
//!   plain guidance's strength; its square weighs plans when pooling them), "futures":
//!   [[[x, y], ...], ...] (when replanned with MCG over futures: the planned positions of the
//!   other N − 1 samples, the futures whose guidance the plan's shared tokens averaged)}`
//! - `{"op": "stats"}` → `{"ok": true, "plans": n, "replan_ms_p50": f, "replan_ms_p99": f, "replan_ms_max": f,
//!   "replan_ms_buckets": [[f, n], ...]}`: the plans since the process started; the buckets
//!   (upper edge in ms, plans) let several processes' latencies be pooled
//! - `{"op": "score_path", "positions": [[x, y], ...]}` → `{"ok": true, "reward": f}`: the
//!   goal reward the planner maximizes, of any path (one position per step, as planned
//!   frames), for the current goal: what guidance prefers among paths it did not plan
//!
//! A malformed line or a bad request is answered `{"ok": false, "error": "..."}` (naming the
//! field, e.g. `goal`, `obs[2]`, or `observation` for an observation the model refuses) and
//! logged; the server keeps its state and waits for the next line. Empty lines are skipped.
//! A step whose plan fails (the model's output is not finite) is answered the same way, but
//! its observation has entered the history, as a robot's would: hold the previous action for
//! that step (the node's `hold` fallback) and send the next observation, whose step plans
//! again; sending the same observation again would enter it twice.

use std::io::{BufRead, Write};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::NodeConfig;
use crate::control::{Histogram, PdExecution};
use crate::planner::{DfPlanner, GoalRegion, GoalReward, Plan, PlanHold};

/// How a plan becomes actions between replans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Execute {
    /// The plan's own (diffused) actions, the paper's way.
    DiffusedActions,
    /// A PD controller tracking the plan's positions, Diffuser's way.
    PdController,
}

impl Execute {
    /// As the config spells it.
    pub fn name(self) -> &'static str {
        match self {
            Execute::DiffusedActions => "diffused_actions",
            Execute::PdController => "pd_controller",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    /// diffused_actions (default) or pd_controller.
    pub execute: Execute,
    /// Observation indices of the position tracked by the PD controller (default [0, 1]);
    /// its velocity is read half the observation further on (positions then velocities, as
    /// the node makes the observation from a JointState: [x, y, vx, vy] in the mazes).
    pub position_dims: [usize; 2],
    /// PD gains tracking the planned state: action = kp·(p* − p) + kd·(v* − v), with p*, v* the
    /// position and velocity the plan expects after this action (Diffuser's controller, gains
    /// free). On D4RL's point mass one step changes v by 0.234·action, so kd ≈ 4 matches v* in
    /// about one step. The node's tick acts on the latest state carried forward to the tick at
    /// its velocities, so a state slower than the ticks is not corrected for again as if the
    /// robot had not moved; its velocities are still the state's, which the kd term trusts.
    pub kp: f64,
    pub kd: f64,
    /// Run tracked plans this many times faster than planned (`execute: pd_controller`; default
    /// 1, as planned): step k tracks the planned state at plan time tempo·(k + 1), at tempo
    /// times its velocity. A plan that moves slower than the robot can (the maze models plan
    /// at their data's speed) then arrives sooner along the same route. It also runs out
    /// sooner: at plan time len − 1 (fault `plan_exhausted` in the node), so a plan must last
    /// `planner.replan_every` steps at this tempo (checked at start).
    pub tempo: f64,
    /// Goals outside [[x_min, y_min], [x_max, y_max]] are refused (default: no bounds).
    pub goal_bounds: Option<[[f64; 2]; 2]>,
    /// Goals inside any of these boxes [[x_min, y_min], [x_max, y_max]] are refused: places in
    /// the bounds the robot cannot reach, such as a maze's wall blocks (default: none).
    pub goal_keepout: Vec<[[f64; 2]; 2]>,
    /// Arrive and stay: from the first planned step within this distance of the goal, the PD
    /// controller holds the goal at rest (p* = goal, v* = 0) instead of executing the rest of
    /// the plan, whichever `execute` is. Diffuser gets the same by inpainting the goal as its
    /// plan's last state. null (default): execute the plan as planned.
    pub hold_radius: Option<f64>,
}

impl Default for ServeSection {
    fn default() -> Self {
        Self {
            execute: Execute::DiffusedActions,
            position_dims: [0, 1],
            kp: 10.0,
            kd: 4.0,
            tempo: 1.0,
            goal_bounds: None,
            goal_keepout: Vec::new(),
            hold_radius: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Reset {
        goal: Option<[f64; 2]>,
        #[serde(default)]
        seed: Option<u64>,
    },
    Step {
        obs: Vec<f64>,
    },
    Stats {},
    ScorePath {
        positions: Vec<[f64; 2]>,
    },
}

pub struct Server {
    planner: DfPlanner,
    reward: Option<GoalReward>,
    serve: ServeSection,
    replan_every: usize,
    action_min: Vec<f64>,
    action_max: Vec<f64>,
    plan: Plan,
    since_plan: Option<usize>,
    /// The PD controller, when it tracks the plan or holds the goal.
    pd: Option<PdExecution>,
    /// The PD controller's scratch target.
    pd_target: Vec<f64>,
    /// The episode's goal: with one, the plans are guided toward it.
    goal: Option<[f64; 2]>,
    last_action: Vec<f64>,
    latency: Histogram,
    /// Why the latest reset was refused, until one is accepted: steps are refused meanwhile,
    /// rather than go on with the episode before it.
    refused_reset: Option<String>,
}

impl Server {
    pub fn new(cfg: &NodeConfig, planner: DfPlanner) -> Result<Self, String> {
        let c = planner.contract();
        let l = &c.layout;
        if cfg.action_dim() != l.action_dim {
            return Err(format!(
                "safety.action_min: expected {} values (the model's action_dim), got {}",
                l.action_dim,
                cfg.action_dim()
            ));
        }
        let serve = cfg.serve.clone().unwrap_or_default();
        let pd = serve.pd_execution(
            l.action_dim,
            l.observation_dim,
            &cfg.control.measured_action,
            planner.plan_len(),
            cfg.planner.replan_every,
        )?;
        let reward = match &cfg.planner.goal {
            Some(goal) => Some(GoalReward::new(goal.clone(), c, [0.0, 0.0])?),
            None => None,
        };
        Ok(Self {
            plan: Plan::with_capacity(planner.plan_len(), l.action_dim, l.observation_dim, l.token_dim),
            last_action: vec![0.0; l.action_dim],
            reward,
            serve,
            replan_every: cfg.planner.replan_every,
            action_min: cfg.safety.action_min.clone(),
            action_max: cfg.safety.action_max.clone(),
            since_plan: None,
            pd,
            pd_target: vec![0.0; l.observation_dim],
            goal: None,
            latency: Histogram::default(),
            refused_reset: None,
            planner,
        })
    }

    /// Answer one request line; never panics on input.
    pub fn handle(&mut self, line: &str) -> Value {
        let request: Request = match parse_request(line, OPS) {
            Ok(r) => r,
            Err(reply) => {
                // A reset that could not be read ends the episode before it all the same.
                let op = serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("op").cloned());
                if op.as_ref().and_then(Value::as_str) == Some("reset") {
                    self.refused_reset = reply["error"].as_str().map(str::to_owned);
                }
                return reply;
            }
        };
        match request {
            Request::Reset { goal, seed } => self.reset(goal, seed),
            Request::Step { obs } => self.step(&obs).unwrap_or_else(error),
            Request::Stats {} => replan_stats(&self.latency),
            Request::ScorePath { positions } => self.score_path(&positions).unwrap_or_else(error),
        }
    }

    fn reset(&mut self, goal: Option<[f64; 2]>, seed: Option<u64>) -> Value {
        let refused = goal.and_then(|g| {
            if let Err(e) = self.serve.goal_region().check(g) {
                return Some(format!("goal {e}"));
            }
            match self.reward.as_mut() {
                Some(r) => {
                    r.set_goal(g);
                    None
                }
                None => Some("goal given, but the config has no planner.goal reward".to_string()),
            }
        });
        if let Some(why) = refused {
            self.refused_reset = Some(why.clone());
            return error(why);
        }
        self.refused_reset = None;
        self.goal = goal;
        self.planner.reset();
        if let Some(seed) = seed {
            self.planner.reseed(seed);
        }
        self.since_plan = None;
        self.last_action.iter_mut().for_each(|a| *a = 0.0);
        json!({"ok": true})
    }

    fn score_path(&self, positions: &[[f64; 2]]) -> Result<Value, String> {
        let reward = self
            .reward
            .as_ref()
            .filter(|_| self.goal.is_some())
            .ok_or("score_path: no goal; reset with a goal first")?;
        if positions.is_empty() || positions.iter().flatten().any(|v| !v.is_finite()) {
            return Err(format!(
                "positions: expected one or more [x, y] of finite numbers, got {} positions",
                positions.len()
            ));
        }
        Ok(json!({"ok": true, "reward": reward.path_reward(positions)}))
    }

    fn step(&mut self, obs: &[f64]) -> Result<Value, String> {
        if let Some(why) = &self.refused_reset {
            return Err(format!(
                "no episode: the last reset was refused ({why}); send a reset that is accepted"
            ));
        }
        self.planner
            .push_frame(&self.last_action, obs)
            .map_err(|e| e.to_string())?;
        let due = self.since_plan.is_none_or(|k| k >= self.replan_every);
        let mut response = json!({"ok": true, "replanned": due});
        if due {
            let start = std::time::Instant::now();
            let guidance = self
                .reward
                .as_ref()
                .filter(|_| self.goal.is_some())
                .map(|r| r as &dyn crate::diffusion::Guidance);
            self.planner.plan(guidance, &mut self.plan).map_err(|e| e.to_string())?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            self.latency.record((ms * 1e6) as u64);
            self.since_plan = Some(0);
            let [px, py] = self.serve.position_dims;
            let mut observation = vec![0.0; self.plan.observation_dim];
            // Sample 0 is the plan; with MCG over futures the others are its futures.
            let mut sampled_positions = |sample: usize| -> Vec<[f64; 2]> {
                (0..self.plan.len())
                    .map(|k| {
                        self.planner.sampled_observation(sample, k, &mut observation);
                        [observation[px], observation[py]]
                    })
                    .collect()
            };
            let positions = sampled_positions(0);
            if let Some(mcg) = self.plan.mcg {
                response["mcg_shift"] = json!(mcg.shift);
                response["mcg_pull"] = json!(mcg.pull);
                response["mcg_guidance"] = json!(mcg.guidance);
                if self.planner.samples() > 1 {
                    let futures: Vec<_> = (1..self.planner.samples()).map(&mut sampled_positions).collect();
                    response["futures"] = json!(futures);
                }
            }
            self.plan.hold = self
                .goal
                .zip(self.serve.hold_radius)
                .and_then(|(goal, radius)| PlanHold::at_arrival(&self.plan, self.serve.position_dims, goal, radius));
            response["plan_ms"] = json!(ms);
            response["plan"] = json!(positions);
        }
        let k = self.since_plan.expect("a plan exists");
        let mut action = self.plan.action(k).to_vec();
        let holding = self
            .pd
            .is_some_and(|pd| pd.action(&self.plan, k, obs, &mut self.pd_target, &mut action));
        response["holding"] = json!(holding);
        for (i, a) in action.iter_mut().enumerate() {
            *a = a.clamp(self.action_min[i], self.action_max[i]);
        }
        self.last_action.copy_from_slice(&action);
        self.since_plan = Some(k + 1);
        response["action"] = json!(action);
        Ok(response)
    }
}

impl ServeSection {
    /// Where goals may lie: within `goal_bounds`, outside every `goal_keepout` box.
    pub fn goal_region(&self) -> GoalRegion {
        GoalRegion {
            bounds: self.goal_bounds,
            keepout: self.goal_keepout.clone(),
        }
    }

    /// Whether `execute` or `hold_radius` puts a PD controller in the loop.
    pub fn drives_pd(&self) -> bool {
        self.execute == Execute::PdController || self.hold_radius.is_some()
    }

    /// The PD controller that `execute` and `hold_radius` put in the loop (None: the plan's
    /// own actions run as planned), checked against the model's layout and the actions' kind:
    /// it commands forces, so `measured_action` (the indices of positions that the actions
    /// are targets for) must be empty; and against the plans: one of `plan_len` steps must
    /// last, at `tempo`, the `replan_every` steps until the next.
    pub fn pd_execution(
        &self,
        action_dim: usize,
        observation_dim: usize,
        measured_action: &[usize],
        plan_len: usize,
        replan_every: usize,
    ) -> Result<Option<PdExecution>, String> {
        if let Some(r) = self.hold_radius.filter(|r| !(r.is_finite() && *r > 0.0)) {
            return Err(format!(
                "serve.hold_radius: expected a finite distance > 0, or null, got {r}"
            ));
        }
        let drives_pd = self.drives_pd();
        if !(self.tempo.is_finite() && self.tempo > 0.0) {
            return Err(format!("serve.tempo: expected a finite factor > 0, got {}", self.tempo));
        }
        if self.tempo != 1.0 && self.execute != Execute::PdController {
            return Err(format!(
                "serve.tempo: only a PD controller tracking the plan runs it faster or slower, expected \
                 1.0 with execute {}, got {} (or set execute: pd_controller)",
                self.execute.name(),
                self.tempo
            ));
        }
        // A negative gain pushes away from the target.
        for (field, gain) in [("serve.kp", self.kp), ("serve.kd", self.kd)] {
            if drives_pd && !(gain.is_finite() && gain >= 0.0) {
                return Err(format!("{field}: expected a finite gain >= 0, got {gain}"));
            }
        }
        // The PD controller commands one action per position dimension.
        if drives_pd && action_dim != self.position_dims.len() {
            return Err(format!(
                "serve.execute / serve.hold_radius: the PD controller commands one action per position \
                 dimension, expected a model with action_dim {}, got {action_dim}",
                self.position_dims.len(),
            ));
        }
        if drives_pd && !measured_action.is_empty() {
            // Its output near the goal is about zero force: as a position target, the origin.
            return Err(format!(
                "serve.execute / serve.hold_radius: the PD controller commands forces, expected \
                 control.measured_action [] (actions that are not positions), got {measured_action:?}"
            ));
        }
        // The planned positions are read at these indices; the PD controller reads the
        // observation as positions then velocities, as the node makes it from a JointState.
        if drives_pd && !observation_dim.is_multiple_of(2) {
            return Err(format!(
                "serve.execute / serve.hold_radius: the PD controller reads the observation as positions \
                 then as many velocities, expected an even observation_dim, got {observation_dim}"
            ));
        }
        let (limit, why) = if drives_pd {
            (observation_dim / 2, "observation_dim / 2 (the positions)")
        } else {
            (observation_dim, "observation_dim")
        };
        if self.position_dims.iter().any(|&d| d >= limit) {
            return Err(format!(
                "serve.position_dims: expected indices < {why} = {limit}, got {:?}",
                self.position_dims
            ));
        }
        let pd = drives_pd.then_some(PdExecution {
            position_dims: self.position_dims,
            velocity_offset: observation_dim / 2,
            kp: self.kp,
            kd: self.kd,
            track_plan: self.execute == Execute::PdController,
            tempo: self.tempo,
        });
        if let Some(pd) = &pd {
            pd.check_lasts(plan_len, replan_every)?;
        }
        Ok(pd)
    }
}

/// The ops of this protocol, for error replies.
const OPS: &str = r#"{"op": "reset" | "step" | "stats" | "score_path", ...}"#;

/// A request line as the protocol's request enum `T` (externally tagged, snake_case op
/// names), or the error reply naming the field that is wrong (e.g. `goal`, `obs[2]`) and the
/// protocol's request forms `ops`.
pub(crate) fn parse_request<T: serde::de::DeserializeOwned>(line: &str, ops: &str) -> Result<T, Value> {
    let reject = |path: &str, e: &dyn std::fmt::Display| {
        // `?`: a key not read yet (a line cut inside one) names no field.
        let at = if matches!(path, "" | "." | "?") {
            String::new()
        } else {
            format!("{path}: ")
        };
        error(format!("malformed request: {at}{e}; expected {ops}"))
    };
    let mut de = serde_json::Deserializer::from_str(line);
    let value: Value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let not_json = format!("not JSON ({})", e.inner());
        reject(&e.path().to_string(), &not_json)
    })?;
    de.end().map_err(|e| reject("", &e))?;
    // {"op": "step", ...} is read as {"step": {...}}: serde buffers an internally tagged
    // enum's fields and loses their names, an externally tagged one keeps them.
    let Value::Object(mut fields) = value else {
        return Err(reject("", &"expected a JSON object"));
    };
    let Some(Value::String(op)) = fields.remove("op") else {
        return Err(reject("op", &"expected a string naming the request"));
    };
    let tagged = Value::Object(serde_json::Map::from_iter([(op.clone(), Value::Object(fields))]));
    serde_path_to_error::deserialize(tagged).map_err(|e| {
        let path = e.path().to_string();
        // The top level is the op itself (an unknown one); below it, the op's fields.
        let field = path
            .strip_prefix(op.as_str())
            .map_or("op", |p| p.trim_start_matches('.'));
        reject(field, e.inner())
    })
}

/// A `stats` reply (`serve`'s, and the node bridge's before its own fields): the plans made,
/// their latency percentiles, and the occupied buckets so that an evaluation can pool processes.
pub(crate) fn replan_stats(latency: &Histogram) -> Value {
    let s = latency.summary_ms();
    json!({"ok": true, "plans": s.count, "replan_ms_p50": s.p50_ms, "replan_ms_p99": s.p99_ms,
           "replan_ms_max": s.max_ms, "replan_ms_buckets": latency.buckets_ms()})
}

/// An error reply, logged.
pub(crate) fn error(message: String) -> Value {
    tracing::warn!(%message, "serve: request rejected");
    json!({"ok": false, "error": message})
}

/// Answer requests from `input` with `handle` until it closes. A line that is not UTF-8 text
/// gets an error reply, like any other malformed request.
pub fn run(mut handle: impl FnMut(&str) -> Value, input: impl BufRead, mut output: impl Write) -> std::io::Result<()> {
    for line in input.split(b'\n') {
        let line = line?;
        let response = match std::str::from_utf8(&line) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => handle(text.strip_suffix('\r').unwrap_or(text)),
            Err(e) => error(format!(
                "request: not UTF-8 text ({e}); expected one JSON object per line"
            )),
        };
        writeln!(output, "{response}")?;
        output.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_is_not_utf8_gets_an_error_reply_and_the_next_line_is_answered() {
        let input: &[u8] = b"{\"op\": \"stats\"}\n\xff\xfe\n\r\n{\"op\": \"reset\"}\r\n";
        let mut out = Vec::new();
        let mut seen = Vec::new();
        run(
            |line| {
                seen.push(line.to_owned());
                json!({"ok": true})
            },
            input,
            &mut out,
        )
        .unwrap();
        let replies: Vec<Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(replies.len(), 3, "{replies:?}");
        assert!(replies[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("request: not UTF-8 text"));
        assert_eq!(seen, ["{\"op\": \"stats\"}", "{\"op\": \"reset\"}"]);
    }

    #[test]
    fn the_pd_controller_is_refused_where_actions_are_position_targets() {
        let hold = ServeSection {
            hold_radius: Some(0.3),
            ..Default::default()
        };
        assert!(hold.pd_execution(2, 4, &[], 1, 1).unwrap().is_some());
        assert_eq!(
            hold.pd_execution(2, 4, &[0, 1], 1, 1).unwrap_err(),
            "serve.execute / serve.hold_radius: the PD controller commands forces, expected \
             control.measured_action [] (actions that are not positions), got [0, 1]"
        );
        assert_eq!(
            ServeSection::default().pd_execution(4, 4, &[0, 1, 2, 3], 1, 1),
            Ok(None)
        );
    }

    /// tests/fixtures/replan_pooling.json holds two processes' plan latencies, the stats reply
    /// each process gives, and the percentiles of one histogram over all of them. The Maze2D
    /// evaluation pools the replies' buckets in Python (`pooled_replan_ms`, tested against the
    /// same file), so the two sides cannot drift apart unnoticed.
    #[test]
    fn pooled_stats_replies_give_the_percentiles_of_one_histogram_over_every_plan() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/replan_pooling.json");
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut every_plan = Histogram::default();
        let mut replies = Vec::new();
        for part in fixture["latencies_ns"].as_array().unwrap() {
            let mut latency = Histogram::default();
            for ns in part.as_array().unwrap() {
                latency.record(ns.as_u64().unwrap());
                every_plan.record(ns.as_u64().unwrap());
            }
            replies.push(replan_stats(&latency));
        }
        let pooled = replan_stats(&every_plan);
        assert_eq!(Value::from(replies), fixture["parts"]);
        assert_eq!(
            json!({"replan_ms_p50": pooled["replan_ms_p50"], "replan_ms_p99": pooled["replan_ms_p99"],
                   "replan_ms_max": pooled["replan_ms_max"]}),
            fixture["pooled"]
        );
    }
}
