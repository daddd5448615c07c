//! Planning: tokens from the robot's history, Diffusion Forcing sampling of the future with
//! (Monte Carlo) guidance, and the plan the control loop executes.

mod df;
mod plan;
mod task;

pub use df::{DfPlanner, PlanError, PlannerSettings};
pub use plan::Plan;
pub use task::{PlannerTask, StepOutcome};
