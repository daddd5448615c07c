//! The real-time side: a fixed-rate control tick that publishes one safe action per tick
//! from the current plan, the safety filter, the robot-state cell, latency histograms, and
//! the two ways of running the loop (live threads, or offline on a virtual clock).

mod core;
mod diagnostics;
mod histogram;
pub mod live;
mod offline;
mod output;
mod safety;
mod state;

pub use self::core::{ControlCore, ControlParams, Counters, Fault, Faults, Source, TickInputs, TickReport};
pub use diagnostics::{ActionSink, Diagnostics};
pub use histogram::{Histogram, LatencySummary};
pub use offline::{OfflineError, OfflineLoop};
pub use output::{trajectory_chunk, TrajectoryPoint};
pub use safety::{Safety, SafetyEvents};
pub use state::{StateCell, StateSample, MAX_JOINTS};

use crate::config::NodeConfig;

/// Control core parameters and safety filter from the config.
pub fn control_from_config(cfg: &NodeConfig) -> ControlCore {
    let period_s = 1.0 / cfg.control.rate_hz;
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
        period_s,
    );
    ControlCore::new(params, safety)
}
