//! ROS 2: topic names, always built (the config checks them, replay resolves them as the node
//! would), and the r2r adapter (cargo feature `ros`).

pub mod names;

#[cfg(feature = "ros")]
mod adapter;
#[cfg(feature = "ros")]
pub use adapter::run;
