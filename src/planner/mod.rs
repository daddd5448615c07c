//! Planning: tokens from the robot's history, Diffusion Forcing sampling of the future with
//! (Monte Carlo) guidance, and the plan the control loop executes.

mod df;
mod goal;
mod plan;
mod reward;
mod task;

pub use df::{DfPlanner, McgForm, PlanError, PlannerSettings};
pub use goal::{GoalMessage, GoalRegion, GoalStatus, NodeGoal};
pub use plan::{Plan, PlanHold};
pub use reward::{Aggregate, GoalReward, GoalRewardConfig, Squash};
pub use task::{PlannerTask, StepOutcome};
