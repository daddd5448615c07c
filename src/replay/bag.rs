//! Reading ROS 2 bags without ROS: MCAP files and rosbag2 sqlite3 (`.db3`) storage.
//! A bag that ends early (truncated, corrupt) yields what it holds and says where it broke.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BagError {
    #[error("bag {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("bag {path}: no .mcap or .db3 file in this rosbag2 folder")]
    NoStorage { path: PathBuf },
    #[error("bag {path}: expected a .mcap file, a .db3 file or a rosbag2 folder")]
    UnknownFormat { path: PathBuf },
}

/// One serialized message from a bag.
#[derive(Debug, Clone, PartialEq)]
pub struct BagMessage {
    pub topic: String,
    /// ROS type, e.g. `sensor_msgs/msg/Image`.
    pub type_name: String,
    pub log_time_ns: i64,
    pub data: Vec<u8>,
}

/// All messages of a bag in storage order, plus why reading stopped early, if it did.
#[derive(Debug, Default)]
pub struct BagContents {
    pub messages: Vec<BagMessage>,
    /// Topic → type of every topic the bag declares (also those without messages).
    pub topics: Vec<(String, String)>,
    pub read_error: Option<String>,
    pub storage: &'static str,
}

pub fn read_bag(path: &Path) -> Result<BagContents, BagError> {
    let file = if path.is_dir() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| BagError::Open {
                path: path.to_owned(),
                message: e.to_string(),
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("mcap" | "db3")))
            .collect();
        found.sort();
        found
            .into_iter()
            .next()
            .ok_or_else(|| BagError::NoStorage { path: path.to_owned() })?
    } else {
        path.to_owned()
    };
    match file.extension().and_then(|e| e.to_str()) {
        Some("mcap") => read_mcap(&file),
        Some("db3") => read_sqlite(&file),
        _ => Err(BagError::UnknownFormat { path: file }),
    }
}

/// Where and why reading stopped early.
fn stopped(path: &Path, messages: usize, e: impl std::fmt::Display) -> String {
    format!("{}: stopped after {messages} messages: {e}", path.display())
}

fn read_mcap(path: &Path) -> Result<BagContents, BagError> {
    let bytes = std::fs::read(path).map_err(|e| BagError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let stream = mcap::MessageStream::new(&bytes).map_err(|e| BagError::Open {
        path: path.to_owned(),
        message: format!("not an MCAP file: {e}"),
    })?;
    let mut out = BagContents {
        storage: "mcap",
        ..BagContents::default()
    };
    for item in stream {
        match item {
            Ok(m) => {
                let type_name = m.channel.schema.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                if !out.topics.iter().any(|(t, _)| *t == m.channel.topic) {
                    out.topics.push((m.channel.topic.clone(), type_name.clone()));
                }
                out.messages.push(BagMessage {
                    topic: m.channel.topic.clone(),
                    type_name,
                    log_time_ns: m.log_time as i64,
                    data: m.data.into_owned(),
                });
            }
            Err(e) => {
                out.read_error = Some(stopped(path, out.messages.len(), e));
                break;
            }
        }
    }
    Ok(out)
}

fn read_sqlite(path: &Path) -> Result<BagContents, BagError> {
    let open_err = |e: rusqlite::Error| BagError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err)?;
    let mut out = BagContents {
        storage: "sqlite3",
        ..BagContents::default()
    };
    let mut topics = db
        .prepare("SELECT name, type FROM topics ORDER BY id")
        .map_err(open_err)?;
    out.topics = topics
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(open_err)?;
    let mut stmt = db
        .prepare(
            "SELECT topics.name, topics.type, messages.timestamp, messages.data FROM messages \
             JOIN topics ON messages.topic_id = topics.id ORDER BY messages.id",
        )
        .map_err(open_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(BagMessage {
                topic: r.get(0)?,
                type_name: r.get(1)?,
                log_time_ns: r.get(2)?,
                data: r.get(3)?,
            })
        })
        .map_err(open_err)?;
    for row in rows {
        match row {
            Ok(m) => out.messages.push(m),
            Err(e) => {
                out.read_error = Some(stopped(path, out.messages.len(), e));
                break;
            }
        }
    }
    Ok(out)
}
