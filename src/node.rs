//! The node's pieces from its configuration: the model, the planner task and the control
//! core. Live (ROS), replay and benchmarks all build them here, so they run the same code.

use thiserror::Error;

use crate::config::NodeConfig;
use crate::control::{ControlCore, ControlParams, Safety};
use crate::model::{ModelError, OnnxDenoiser};
use crate::planner::{DfPlanner, PlanError, PlannerSettings, PlannerTask};

#[derive(Debug, Error)]
pub enum NodeError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{field}: expected {expected}, got {got}")]
    Mismatch {
        field: &'static str,
        expected: String,
        got: String,
    },
}

/// The planner settings of a node config; MCG shares the tokens executed before the next plan.
pub fn planner_settings(cfg: &NodeConfig, frame_stack: usize) -> PlannerSettings {
    let p = &cfg.planner;
    PlannerSettings {
        matrix: p.matrix,
        sampling_steps: p.sampling_steps,
        horizon_tokens: p.horizon_tokens,
        samples: p.samples,
        guidance_scale: p.guidance_scale,
        guidance_form: p.guidance_form,
        eta: p.eta,
        shared_tokens: p.replan_every.div_ceil(frame_stack),
        warm_start_level: p.warm_start_level,
        warm_shift_tokens: if p.replan_every.is_multiple_of(frame_stack) {
            p.replan_every / frame_stack
        } else {
            0
        },
        seed: p.seed,
    }
}

/// Control core parameters and safety filter from the config.
pub fn control_core(cfg: &NodeConfig) -> ControlCore {
    let params = ControlParams {
        fallback: cfg.control.fallback,
        stop_action: cfg.control.stop_action.clone(),
        camera_required: cfg.camera.required,
        camera_timeout_ns: (cfg.safety.camera_timeout_s * 1e9) as i64,
        state_timeout_ns: (cfg.safety.state_timeout_s * 1e9) as i64,
    };
    let safety = Safety::new(
        cfg.safety.action_min.clone(),
        cfg.safety.action_max.clone(),
        &cfg.safety.max_rate,
        cfg.control.tick().as_secs_f64(),
    );
    ControlCore::new(params, safety)
}

/// Load the model and build the planner.
pub fn planner(cfg: &NodeConfig) -> Result<DfPlanner, NodeError> {
    let model = OnnxDenoiser::load(&cfg.model.path, &cfg.model.runtime)?;
    let contract = model.contract().clone();
    if contract.layout.action_dim != cfg.action_dim() {
        return Err(NodeError::Mismatch {
            field: "safety.action_min",
            expected: format!("{} values (the model's action_dim)", contract.layout.action_dim),
            got: cfg.action_dim().to_string(),
        });
    }
    let settings = planner_settings(cfg, contract.layout.frame_stack);
    Ok(DfPlanner::new(Box::new(model), contract, &settings)?)
}

/// The planner task and control core.
pub fn node_parts(cfg: &NodeConfig) -> Result<(PlannerTask, ControlCore), NodeError> {
    let step_ns = cfg.control.step().as_nanos() as i64;
    Ok((
        PlannerTask::new(planner(cfg)?, cfg.planner.replan_every, step_ns),
        control_core(cfg),
    ))
}
