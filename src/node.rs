//! The node's pieces from its configuration: the model, the planner task and the control
//! core. Live (ROS), replay and benchmarks all build them here, so they run the same code.

use thiserror::Error;

use crate::config::NodeConfig;
use crate::control::{ControlCore, ControlParams, JointSelection, OfflineLoop, PdExecution, Safety, StateIntake};
use crate::frames::{CameraRing, MAX_CAMERAS};
use crate::model::{Field, ModelContract, ModelError, OnnxDenoiser, MAX_STANDARD_DEVIATIONS};
use crate::planner::{DfPlanner, GoalReward, NodeGoal, PlanError, PlannerSettings, PlannerTask};
use crate::serve::ServeSection;

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The goal reward's own message, which names its field under `goal.`.
    #[error("planner.{0}")]
    Goal(String),
    /// How the plans are executed (`serve.execute`, `serve.hold_radius`), in the check's words.
    #[error("{0}")]
    Execution(String),
    #[error("{field}: expected {expected}, got {got}")]
    Mismatch {
        field: &'static str,
        expected: String,
        got: String,
    },
}

/// The planner settings of a node config; MCG shares the tokens executed before the next plan.
pub fn planner_settings(cfg: &NodeConfig) -> PlannerSettings {
    let p = &cfg.planner;
    PlannerSettings {
        matrix: p.matrix,
        sampling_steps: p.sampling_steps,
        horizon_tokens: p.horizon_tokens,
        context_tokens: p.context_tokens,
        image_level: p.image_level,
        samples: p.samples,
        mcg: p.mcg,
        mcg_temperature: p.mcg_temperature,
        guidance_scale: p.guidance_scale,
        guidance_form: p.guidance_form,
        eta: p.eta,
        replan_every: p.replan_every,
        warm_start_level: p.warm_start_level,
        seed: p.seed,
        noise_streams: p.noise_streams,
    }
}

/// Control core parameters, safety filter and PD controller (when `serve.execute` or
/// `serve.hold_radius` asks for one) from the config.
pub fn control_core(cfg: &NodeConfig, planner: &DfPlanner) -> Result<ControlCore, NodeError> {
    let contract = planner.contract();
    let params = ControlParams {
        fallback: cfg.control.fallback,
        stop_action: cfg.control.stop_action.clone(),
        camera_required: cfg.camera.required,
        camera_timeout_ns: (cfg.safety.camera_timeout_s * 1e9) as i64,
        state_timeout_ns: (cfg.safety.state_timeout_s * 1e9) as i64,
        max_plan_age_ns: cfg.safety.max_plan_age_s.map(|s| (s * 1e9) as i64),
        hold_timeout_ns: cfg.control.hold_timeout_s.map(|s| (s * 1e9) as i64),
        measured_action: cfg.control.measured_action.clone(),
    };
    let core = ControlCore::new(params, safety_filter(cfg));
    Ok(match pd_execution(cfg, contract, planner.plan_len())? {
        Some(pd) => core.with_execution(pd, contract.layout.observation_dim),
        None => core,
    })
}

/// The PD controller `serve.execute` and `serve.hold_radius` put in the loop, if any, for
/// plans of `plan_len` steps.
fn pd_execution(cfg: &NodeConfig, contract: &ModelContract, plan_len: usize) -> Result<Option<PdExecution>, NodeError> {
    let l = &contract.layout;
    let serve = cfg.serve.clone().unwrap_or_default();
    let pd = serve
        .pd_execution(
            l.action_dim,
            l.observation_dim,
            &cfg.control.measured_action,
            plan_len,
            cfg.planner.replan_every,
        )
        .map_err(NodeError::Execution)?;
    // It reads positions then velocities: joints named for positions alone would be read as
    // velocities.
    let joints = cfg.topics.state_joints.len();
    if pd.is_some() && joints > 0 && 2 * joints != l.observation_dim {
        return Err(NodeError::Mismatch {
            field: "topics.state_joints",
            expected: format!(
                "{} names (serve.execute / serve.hold_radius: the PD controller reads positions then velocities \
                 of the model's observation_dim {})",
                l.observation_dim / 2,
                l.observation_dim
            ),
            got: joints.to_string(),
        });
    }
    Ok(pd)
}

/// The config's limits and rates, per control tick.
pub fn safety_filter(cfg: &NodeConfig) -> Safety {
    Safety::new(
        cfg.safety.action_min.clone(),
        cfg.safety.action_max.clone(),
        &cfg.safety.max_rate,
        cfg.control.tick().as_secs_f64(),
    )
}

/// Load the model and build the planner.
pub fn planner(cfg: &NodeConfig) -> Result<DfPlanner, NodeError> {
    let model = OnnxDenoiser::load(&cfg.model.path, &cfg.model.runtime).map_err(|e| match e {
        ModelError::MissingFile { path } => NodeError::Mismatch {
            field: "model.path",
            expected: "an ONNX model; a relative model.path starts at the config folder's parent (the \
                       package root of config/x.yaml), so a config kept elsewhere needs an absolute one"
                .into(),
            got: format!("{} (not found)", path.display()),
        },
        other => other.into(),
    })?;
    let contract = model.contract().clone();
    if contract.layout.action_dim != cfg.action_dim() {
        return Err(NodeError::Mismatch {
            field: "safety.action_min",
            expected: format!("{} values (the model's action_dim)", contract.layout.action_dim),
            got: cfg.action_dim().to_string(),
        });
    }
    // A camera model plans from its images: a camera that stops must be a fault, not a
    // frozen frame planned from forever.
    if contract.cameras.is_some() && !cfg.camera.required {
        return Err(NodeError::Mismatch {
            field: "camera.required",
            expected: "true (the model plans from camera images)".into(),
            got: "false".into(),
        });
    }
    // Guidance needs the vjp graph: found missing at the first goal, every plan would fail.
    if cfg.planner.guidance_scale != 0.0 && cfg.planner.goal.is_some() && !model.has_vjp() {
        return Err(NodeError::Mismatch {
            field: "planner.guidance_scale",
            expected: format!(
                "0, or a model with its denoise_vjp graph ({} has none)",
                cfg.model.path.display()
            ),
            got: cfg.planner.guidance_scale.to_string(),
        });
    }
    state_intake(cfg, &contract)?;
    actions_within_the_training_data(cfg, &contract)?;
    let settings = planner_settings(cfg);
    Ok(DfPlanner::new(Box::new(model), contract, &settings)?)
}

/// Every action the arm can be sent (the stop action, the safety limits) enters the planner's
/// history as the executed action, which refuses values beyond MAX_STANDARD_DEVIATIONS: such a
/// config would make the planner refuse every step. So does the zero action the history
/// starts with, before the first tick.
fn actions_within_the_training_data(cfg: &NodeConfig, contract: &ModelContract) -> Result<(), NodeError> {
    let offset = contract.layout.offset(Field::Action).expect("a layout has actions");
    let zeros = vec![0.0; contract.layout.action_dim];
    for (field, values) in [
        ("control.stop_action", &cfg.control.stop_action),
        ("safety.action_min", &cfg.safety.action_min),
        ("safety.action_max", &cfg.safety.action_max),
        (
            "model normalization (the executed action before the first tick, zeros)",
            &zeros,
        ),
    ] {
        if let Some((k, v, deviations)) = contract.normalization.first_beyond_limit(offset, values) {
            let (mean, std) = (
                contract.normalization.mean[offset + k],
                contract.normalization.std[offset + k],
            );
            return Err(NodeError::Mismatch {
                field,
                expected: format!(
                    "values within {MAX_STANDARD_DEVIATIONS} standard deviations of the model's action mean \
                     ([{k}]: mean {mean}, std {std})"
                ),
                got: format!("[{k}] = {v}, {deviations:.1e} standard deviations away"),
            });
        }
    }
    Ok(())
}

/// How the node reads `sensor_msgs/JointState` (`topics.state_joints`): names that fit the
/// model's observation, positions or positions then velocities.
pub fn state_intake(cfg: &NodeConfig, contract: &ModelContract) -> Result<StateIntake, NodeError> {
    let mismatch = |expected: String, got: String| NodeError::Mismatch {
        field: "topics.state_joints",
        expected,
        got,
    };
    let selection = JointSelection::new(&cfg.topics.state_joints).map_err(|e| mismatch(e.expected, e.got))?;
    let (joints, observation_dim) = (selection.joints(), contract.layout.observation_dim);
    if joints > 0 && joints != observation_dim && 2 * joints != observation_dim {
        let expected = if observation_dim % 2 == 0 {
            format!(
                "{observation_dim} or {} names (the model's observation_dim {observation_dim}: positions, or positions then velocities)",
                observation_dim / 2
            )
        } else {
            format!("{observation_dim} names (the model's observation_dim)")
        };
        return Err(mismatch(expected, joints.to_string()));
    }
    // The state's positions: the listed joints, else at most the observation.
    let positions = if joints > 0 { joints } else { observation_dim };
    if let Some(&index) = cfg.control.measured_action.iter().find(|&&j| j >= positions) {
        return Err(NodeError::Mismatch {
            field: "control.measured_action",
            expected: format!("indices below {positions} (the state's positions)"),
            got: index.to_string(),
        });
    }
    let intake = StateIntake::new(selection, observation_dim);
    // A PD controller reads positions then velocities (`PdExecution`; its layout is checked
    // with it, in `pd_execution`).
    Ok(match cfg.serve.as_ref().is_some_and(ServeSection::drives_pd) {
        true => intake.requiring_velocities(),
        false => intake,
    })
}

/// The planner task, planning toward the node's goal, and the control core.
pub fn node_parts(cfg: &NodeConfig) -> Result<(PlannerTask, ControlCore), NodeError> {
    let planner = planner(cfg)?;
    let core = control_core(cfg, &planner)?;
    Ok((planner_task(cfg, planner)?, core))
}

fn planner_task(cfg: &NodeConfig, planner: DfPlanner) -> Result<PlannerTask, NodeError> {
    let goal = node_goal(cfg, planner.contract())?;
    let step_ns = cfg.control.step().as_nanos() as i64;
    let timeout_ns = |s: f64| (s * 1e9) as i64;
    Ok(PlannerTask::new(planner, cfg.planner.replan_every, step_ns)
        .with_state_timeout(timeout_ns(cfg.safety.state_timeout_s))
        .with_camera_timeout(timeout_ns(cfg.safety.camera_timeout_s))
        .with_goal(goal)
        .with_hold(cfg.serve.as_ref().and_then(|s| Some((s.hold_radius?, s.position_dims)))))
}

/// The node's goal: the goal reward (`planner.goal`), its first goal `planner.goal.target`,
/// then the goal messages on `topics.goal`; None without a goal reward. At a guidance scale of
/// 0 (as the sampler reads it) goals are checked and reported but do not guide; the log says
/// which. The reward is checked as `serve` checks it, and every goal as `serve` checks a
/// reset's goal (finite, within `serve.goal_bounds`, outside `serve.goal_keepout`, where the
/// config has them).
pub fn node_goal(cfg: &NodeConfig, contract: &ModelContract) -> Result<Option<NodeGoal>, NodeError> {
    let scale = cfg.planner.guidance_scale;
    let guided = scale != 0.0;
    let Some(goal_cfg) = cfg.planner.goal.as_ref() else {
        if guided {
            tracing::warn!(scale, "the config has no planner.goal: the node plans without guidance");
        }
        return Ok(None);
    };
    let reward = GoalReward::new(goal_cfg.clone(), contract, [0.0, 0.0]).map_err(NodeError::Goal)?;
    let region = cfg.serve.as_ref().map(ServeSection::goal_region).unwrap_or_default();
    let frame_id = cfg.topics.goal.as_ref().map(|g| g.frame_id.clone()).unwrap_or_default();
    let mut goal = NodeGoal::new(reward, region, frame_id, guided).with_reached_within(goal_cfg.reached_within);
    if let Some(target) = goal_cfg.target {
        goal.set(target)
            .map_err(|e| NodeError::Goal(format!("goal.target {e}")))?;
    }
    let (target, topic) = (goal_cfg.target, cfg.topics.goal.as_ref().map(|g| g.topic.as_str()));
    match (guided, target, topic) {
        (false, ..) => tracing::info!(
            ?target,
            topic,
            "planner.guidance_scale is 0: the node plans without guidance"
        ),
        (true, Some(target), _) => tracing::info!(?target, scale, topic, "planning toward the goal"),
        (true, None, Some(topic)) => {
            tracing::info!(
                topic,
                "planner.goal has no target: the node plans without guidance until a goal arrives"
            )
        }
        (true, None, None) => {
            tracing::warn!("planner.goal has no target and topics.goal is unset: the node plans without guidance")
        }
    }
    Ok(Some(goal))
}

/// The loop on a virtual clock (replay, the simulator bridge) around a loaded planner.
pub fn offline_loop(cfg: &NodeConfig, planner: DfPlanner) -> Result<OfflineLoop, NodeError> {
    let cameras = camera_rings(cfg, planner.contract())?;
    let core = control_core(cfg, &planner)?;
    let task = planner_task(cfg, planner)?;
    let step_ns = cfg.control.step().as_nanos() as i64;
    let tick_ns = cfg.control.tick().as_nanos() as i64;
    Ok(OfflineLoop::new(task, core, tick_ns, step_ns, &cameras))
}

/// The camera rings of a node: a camera model's inputs (their topics from the contract unless
/// `camera.topics` maps the role elsewhere, their size from the contract), else the one
/// camera of `topics.image` at `camera.width` × `camera.height`.
pub fn camera_rings(cfg: &NodeConfig, contract: &ModelContract) -> Result<Vec<CameraRing>, NodeError> {
    let capacity = cfg.camera.ring_capacity;
    let Some(cameras) = &contract.cameras else {
        if let Some(role) = cfg.camera.topics.keys().next() {
            return Err(NodeError::Mismatch {
                field: "camera.topics",
                expected: "none: the model has no camera inputs".into(),
                got: format!("a topic for role {role:?}"),
            });
        }
        return Ok(vec![CameraRing {
            topic: cfg.topics.image.clone(),
            width: cfg.camera.width,
            height: cfg.camera.height,
            capacity,
            resize: cfg.camera.resize,
        }]);
    };
    let roles: Vec<&str> = cameras.inputs.iter().map(|c| c.role.as_str()).collect();
    if let Some(role) = cfg.camera.topics.keys().find(|r| !roles.contains(&r.as_str())) {
        return Err(NodeError::Mismatch {
            field: "camera.topics",
            expected: format!("roles among the model's cameras {roles:?}"),
            got: format!("{role:?}"),
        });
    }
    if cameras.inputs.len() > MAX_CAMERAS {
        return Err(NodeError::Mismatch {
            field: "cameras.inputs",
            expected: format!("at most {MAX_CAMERAS} cameras"),
            got: cameras.inputs.len().to_string(),
        });
    }
    Ok(cameras
        .inputs
        .iter()
        .map(|c| CameraRing {
            topic: cfg.camera.topics.get(&c.role).unwrap_or(&c.topic).clone(),
            width: c.width,
            height: c.height,
            capacity,
            resize: cfg.camera.resize,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_whose_actions_are_never_near_zero_is_refused_at_load() {
        // The first tick's executed action is zeros; an action trained around 5 with a spread
        // of 0.001 would be refused at every step, however the config's actions are set.
        let mut v = crate::model::example_json();
        v["normalization"]["mean"] = serde_json::json!([5.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        v["normalization"]["std"] = serde_json::json!([1e-3, 1.0, 1.0, 1.0, 1.0, 1.0]);
        let contract = ModelContract::from_json(&v.to_string()).unwrap();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pointmass.yaml");
        let mut cfg = NodeConfig::load(&path).unwrap();
        cfg.control.stop_action = vec![5.0, 0.0];
        cfg.safety.action_min = vec![4.999, -1.0];
        cfg.safety.action_max = vec![5.001, 1.0];
        let e = actions_within_the_training_data(&cfg, &contract)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "model normalization (the executed action before the first tick, zeros): expected values within \
             1000 standard deviations of the model's action mean ([0]: mean 5, std 0.001), got [0] = 0, \
             5.0e3 standard deviations away"
        );
        // The same config is accepted for a model trained around zero.
        let centred = ModelContract::from_json(&crate::model::example_json().to_string()).unwrap();
        cfg.control.stop_action = vec![0.0, 0.0];
        assert!(actions_within_the_training_data(&cfg, &centred).is_ok());
    }
}
