//! The real-time side: a fixed-rate control tick that publishes one safe action per tick
//! from the current plan, the safety filter, the robot-state cell, latency histograms, and
//! the two ways of running the loop (live threads, or offline on a virtual clock).

mod core;
mod diagnostics;
mod execute;
mod histogram;
pub mod live;
mod offline;
mod output;
mod plan_time;
mod safety;
mod state;

pub use self::core::{
    input_stale, ControlCore, ControlParams, Counters, Fault, Faults, Source, TickInputs, TickReport,
};
pub use diagnostics::{ActionSink, Diagnostics};
pub use execute::PdExecution;
pub use histogram::{Histogram, LatencySummary};
pub use offline::{OfflineError, OfflineLoop};
pub use output::{trajectory_chunk, TrajectoryPoint};
pub use plan_time::{MeasuredPlanTimes, PlanTimes};
pub use safety::{Safety, SafetyEvents};
pub use state::{
    InvalidJointList, JointSelection, Recent, StateCell, StateIntake, StateRejected, StateSample, MAX_JOINTS,
};
