//! Reading ROS 2 bags without ROS: MCAP files and rosbag2 sqlite3 (`.db3`) storage.
//! A bag that ends early (truncated, corrupt) yields what it holds and says where it broke.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use mcap::records::Record;
use mcap::sans_io::linear_reader::{LinearReadEvent, LinearReader};

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

/// Read a `.mcap` or `.db3` file, or a rosbag2 folder: every storage file of a split bag
/// (`--max-bag-size` / `--max-bag-duration`), in the order of its metadata.yaml.
pub fn read_bag(path: &Path) -> Result<BagContents, BagError> {
    if !path.is_dir() {
        return read_file(path);
    }
    let mut all: Option<BagContents> = None;
    for file in storage_files(path)? {
        let part = read_file(&file)?;
        match all.as_mut() {
            None => all = Some(part),
            Some(all) if all.storage != part.storage => {
                return Err(BagError::Open {
                    path: path.to_owned(),
                    message: format!("mixes {} and {} files", all.storage, part.storage),
                })
            }
            Some(all) => all.append(part),
        }
    }
    all.ok_or_else(|| BagError::NoStorage { path: path.to_owned() })
}

fn read_file(file: &Path) -> Result<BagContents, BagError> {
    match file.extension().and_then(|e| e.to_str()) {
        Some("mcap") => read_mcap(file),
        Some("db3") => read_sqlite(file),
        _ => Err(BagError::UnknownFormat { path: file.to_owned() }),
    }
}

/// The folder's storage files: metadata.yaml's `relative_file_paths` where it lists files
/// that are there, else every `.mcap` / `.db3` file, a split bag's `name_N` in the order of N.
fn storage_files(dir: &Path) -> Result<Vec<PathBuf>, BagError> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        rosbag2_bagfile_information: Information,
    }
    #[derive(serde::Deserialize)]
    struct Information {
        relative_file_paths: Vec<String>,
    }
    let listed = std::fs::read_to_string(dir.join("metadata.yaml"))
        .ok()
        .and_then(|text| serde_yaml_ng::from_str::<Metadata>(&text).ok())
        .map(|m| m.rosbag2_bagfile_information.relative_file_paths);
    if let Some(files) = listed.filter(|f| !f.is_empty()) {
        // Paths are relative to the folder; before metadata version 4 (Dashing, Eloquent) they
        // start with the folder's own name, so relative to its parent.
        for base in [Some(dir), dir.parent()].into_iter().flatten() {
            let paths: Vec<PathBuf> = files.iter().map(|f| base.join(f)).collect();
            if paths.iter().all(|p| p.is_file()) {
                return Ok(paths);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| BagError::Open {
            path: dir.to_owned(),
            message: e.to_string(),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("mcap" | "db3")))
        .collect();
    let split_index = |p: &PathBuf| -> u64 {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        stem.rsplit_once('_').and_then(|(_, n)| n.parse().ok()).unwrap_or(0)
    };
    found.sort_by_key(|p| (split_index(p), p.clone()));
    Ok(found)
}

impl BagContents {
    /// Add the next file of a split bag.
    fn append(&mut self, next: BagContents) {
        for topic in next.topics {
            if !self.topics.contains(&topic) {
                self.topics.push(topic);
            }
        }
        self.messages.extend(next.messages);
        self.read_error = match (self.read_error.take(), next.read_error) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
    }
}

/// Where and why reading stopped early.
fn stopped(path: &Path, messages: usize, e: impl std::fmt::Display) -> String {
    format!("{}: stopped after {messages} messages: {e}", path.display())
}

/// Bytes an MCAP read asks the file for at once.
const READ_PIECE: usize = 1 << 20;

/// The records in file order (chunks unpacked), so a channel declared before a break is listed
/// even when none of its messages made it, and a complete file's channels without messages too.
/// The file is read in pieces: only the messages are held, not the file as well.
fn read_mcap(path: &Path) -> Result<BagContents, BagError> {
    let open_err = |e: std::io::Error| BagError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(open_err)?;
    let mut reader = LinearReader::new();
    let mut out = BagContents {
        storage: "mcap",
        ..BagContents::default()
    };
    let mut schemas: HashMap<u16, String> = HashMap::new();
    // Channel id → index into out.topics.
    let mut channels: HashMap<u16, usize> = HashMap::new();
    let mut records = 0usize;
    while let Some(event) = reader.next_event() {
        let record = match event {
            Ok(LinearReadEvent::ReadRequest(need)) => {
                // The request is a record's declared length: read it in pieces, so a corrupt
                // length costs the bytes the file holds, not the bytes it claims.
                match file.read(reader.insert(need.min(READ_PIECE))) {
                    Ok(n) => reader.notify_read(n),
                    Err(e) => {
                        out.read_error = Some(stopped(path, out.messages.len(), e));
                        break;
                    }
                }
                continue;
            }
            Ok(LinearReadEvent::Record { opcode, data }) => mcap::parse_record(opcode, data),
            Err(e) => Err(e),
        };
        let record = match record {
            Ok(record) => record,
            Err(e) if records == 0 => {
                return Err(BagError::Open {
                    path: path.to_owned(),
                    message: format!("not an MCAP file: {e}"),
                })
            }
            Err(e) => {
                out.read_error = Some(stopped(path, out.messages.len(), e));
                break;
            }
        };
        records += 1;
        match record {
            Record::Schema { header, .. } => {
                schemas.insert(header.id, header.name);
            }
            Record::Channel(channel) => {
                let type_name = schemas.get(&channel.schema_id).cloned().unwrap_or_default();
                let topic = (channel.topic, type_name);
                let index = out.topics.iter().position(|t| *t == topic).unwrap_or_else(|| {
                    out.topics.push(topic);
                    out.topics.len() - 1
                });
                channels.insert(channel.id, index);
            }
            Record::Message { header, data } => {
                let Some(&index) = channels.get(&header.channel_id) else {
                    let e = format!(
                        "message on channel {}, which no channel record declared",
                        header.channel_id
                    );
                    out.read_error = Some(stopped(path, out.messages.len(), e));
                    break;
                };
                let (topic, type_name) = out.topics[index].clone();
                out.messages.push(BagMessage {
                    topic,
                    type_name,
                    log_time_ns: header.log_time as i64,
                    data: data.into_owned(),
                });
            }
            _ => {}
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
