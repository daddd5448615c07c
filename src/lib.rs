//! df_planner: Diffusion Forcing planning on a robot.
//!
//! The crate reads like the pipeline: `model` (ONNX session and its contract) feeds
//! `diffusion` (schedules, scheduling matrices, the DDIM sampler over per-token noise levels).

pub mod bridge;
pub mod config;
pub mod control;
pub mod diffusion;
pub mod frames;
pub mod model;
pub mod msgs;
pub mod node;
pub mod planner;
pub mod replay;
pub mod ros;
pub mod serve;
