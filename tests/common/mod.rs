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

/// Whether every value of `action` is finite and within `safety`'s action limits.
pub fn finite_within_limits(action: &[f64], safety: &df_planner::config::SafetySection) -> bool {
    let limits = safety.action_min.iter().zip(&safety.action_max);
    action
        .iter()
        .zip(limits)
        .all(|(a, (lo, hi))| a.is_finite() && lo <= a && a <= hi)
}

/// Fixed pseudo-random draws (an LCG): the same every run, no dependency.
pub struct Draws(pub u64);

impl Draws {
    /// A number in 0..n.
    pub fn pick(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Mangled copies of the request lines `valid`, from a fixed seed: a character replaced, the
/// line cut, a number swapped for a value JSON or the protocol refuses (out of f64's range,
/// NaN, null, a string, an array) or for an extreme one, a field added or dropped.
pub fn mangled_lines(valid: &[String], count: usize, seed: u64) -> Vec<String> {
    let mut draws = Draws(seed);
    let mut pick = |n| draws.pick(n);
    const CHARS: &[char] = &[
        '{', '}', '[', ']', '"', ',', ':', '-', '.', 'e', '0', '9', ' ', 'x', '\u{e9}',
    ];
    const VALUES: &[&str] = &[
        "1e309", "-1e309", "NaN", "null", "\"1\"", "[]", "{}", "1e300", "-1e300", "5e-324", "-0", "1e15", "true",
    ];
    (0..count)
        .map(|_| {
            let line: Vec<char> = valid[pick(valid.len())].chars().collect();
            let at = pick(line.len());
            match pick(5) {
                0 => {
                    let mut l = line.clone();
                    l[at] = CHARS[pick(CHARS.len())];
                    l.into_iter().collect()
                }
                1 => line[..at].iter().collect(),
                2 | 3 => {
                    // The number starting at or after `at`, replaced whole.
                    let text: String = line.iter().collect();
                    let number = |c: char| c.is_ascii_digit() || matches!(c, '-' | '.' | 'e' | 'E' | '+');
                    let start = (at..line.len())
                        .find(|&i| line[i].is_ascii_digit())
                        .unwrap_or(line.len());
                    let start = (0..start)
                        .rev()
                        .take_while(|&i| number(line[i]))
                        .last()
                        .unwrap_or(start);
                    let end = (start..line.len()).find(|&i| !number(line[i])).unwrap_or(line.len());
                    if start == line.len() {
                        return text;
                    }
                    let (a, b): (String, String) = (line[..start].iter().collect(), line[end..].iter().collect());
                    format!("{a}{}{b}", VALUES[pick(VALUES.len())])
                }
                _ => {
                    let text: String = line.iter().collect();
                    match pick(2) {
                        0 => text.replacen('{', "{\"extra\": 1, ", 1),
                        _ => text.replacen(", \"", ", \"_", 1),
                    }
                }
            }
        })
        .collect()
}

/// Feeds `handle` (a protocol's request handler) 400 mangled copies of `episode` (a reset and a
/// step) and `others`: every reply says ok or names an error, every action is finite and within
/// `safety`'s limits, and every 50 lines the episode's own lines still work.
pub fn survive_mangled_lines(
    mut handle: impl FnMut(&str) -> serde_json::Value,
    episode: [String; 2],
    others: &[String],
    safety: &df_planner::config::SafetySection,
) {
    let within_limits = |r: &serde_json::Value| {
        let action = r["action"].as_array().map_or(&[][..], |a| a.as_slice());
        let values: Option<Vec<f64>> = action.iter().map(serde_json::Value::as_f64).collect();
        values.is_some_and(|a| finite_within_limits(&a, safety))
    };
    let valid: Vec<String> = episode.iter().chain(others).cloned().collect();
    let mut refused = 0;
    for (k, line) in mangled_lines(&valid, 400, 1).iter().enumerate() {
        let r = handle(line);
        match r["ok"].as_bool() {
            Some(true) => assert!(within_limits(&r), "{line} -> {r}"),
            Some(false) => {
                assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{line} -> {r}");
                refused += 1;
            }
            None => panic!("{line} -> {r}: no ok"),
        }
        if k % 50 == 49 {
            let [reset, step] = &episode;
            assert_eq!(handle(reset)["ok"], true, "after {line}");
            let r = handle(step);
            assert!(r["ok"] == true && within_limits(&r), "after {line}: {r}");
        }
    }
    assert!(refused > 100, "{refused} of 400 refused: the lines were hardly mangled");
}
