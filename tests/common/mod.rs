//! Shared test support: the repository root, a CPU-only model loader, a goal reward and an MCAP
//! bag writer.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use df_planner::model::{OnnxDenoiser, Provider, RuntimeConfig};
use df_planner::planner::{Aggregate, GoalRewardConfig, Squash};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn cpu() -> RuntimeConfig {
    RuntimeConfig {
        providers: vec![Provider::Cpu],
        ..RuntimeConfig::default()
    }
}

/// The point mass's goal reward (unsquashed distance over every planned step) toward `target`.
pub fn goal_reward(target: Option<[f64; 2]>) -> GoalRewardConfig {
    GoalRewardConfig {
        position_dims: [0, 1],
        squash: Squash::Linear,
        sigma: 2.0,
        aggregate: Aggregate::Mean,
        discount: 1.0,
        weight: 1.0,
        target,
        reached_within: None,
    }
}

/// Load a model given relative to the repository root.
pub fn load(rel: &Path) -> OnnxDenoiser {
    OnnxDenoiser::load(&repo().join(rel), &cpu()).unwrap_or_else(|e| panic!("{}: {e}", rel.display()))
}

/// Writes an MCAP bag at `path`: a channel per (topic, ROS 2 type) in `channels`, its schema
/// naming the type without its text (replay reads only the name), then `messages` (index into
/// `channels`, log time, CDR bytes) in the order given, with log time as publish time.
/// Unchunked when `chunked` is false: the file is then the records as written, so a cut leaves
/// those before it readable and the file's bytes are the messages' own.
pub fn write_mcap_bag<D: AsRef<[u8]>>(
    path: &Path,
    chunked: bool,
    channels: &[(&str, &str)],
    messages: impl IntoIterator<Item = (usize, u64, D)>,
) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = mcap::WriteOptions::new().use_chunks(chunked).create(file).unwrap();
    let ids: Vec<u16> = channels
        .iter()
        .map(|(topic, ty)| {
            let schema = w.add_schema(ty, "ros2msg", b"").unwrap();
            w.add_channel(schema, topic, "cdr", &Default::default()).unwrap()
        })
        .collect();
    for (sequence, (channel, log_time, data)) in messages.into_iter().enumerate() {
        let header = mcap::records::MessageHeader {
            channel_id: ids[channel],
            sequence: sequence as u32,
            log_time,
            publish_time: log_time,
        };
        w.write_to_known_channel(&header, data.as_ref()).unwrap();
    }
    w.finish().unwrap();
}
