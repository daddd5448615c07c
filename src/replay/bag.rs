//! Reading ROS 2 bags without ROS: MCAP files and rosbag2 sqlite3 (`.db3`) storage.
//! A bag that ends early (truncated, corrupt) yields what it holds and says where it broke.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use mcap::read::ChannelAccumulator;
use mcap::records::Record;
use mcap::sans_io::linear_reader::{LinearReadEvent, LinearReader, LinearReaderOptions};
use mcap::sans_io::summary_reader::{SummaryReadEvent, SummaryReader, SummaryReaderOptions};
use mcap::McapError;

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

/// One serialized message from a bag (its topic's type is in `BagContents::topics`).
#[derive(Debug, Clone, PartialEq)]
pub struct BagMessage {
    pub topic: String,
    pub log_time_ns: i64,
    pub data: Vec<u8>,
}

/// A topic as a bag declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredTopic {
    pub name: String,
    /// The ROS type, e.g. `sensor_msgs/msg/JointState`; empty when the bag does not say.
    pub type_name: String,
    /// How its messages are serialized: MCAP's message encoding, rosbag2 sqlite3's
    /// serialization_format (`cdr` for ROS 2); empty when the bag does not say.
    pub encoding: String,
}

/// What a bag declares, and why reading it stopped early, if it did.
#[derive(Debug, Default)]
pub struct BagInfo {
    /// Every topic the bag declares (also those without messages).
    pub topics: Vec<DeclaredTopic>,
    pub read_error: Option<String>,
    pub storage: &'static str,
}

/// All messages of a bag in storage order, with what it declares.
#[derive(Debug, Default)]
pub struct BagContents {
    pub messages: Vec<BagMessage>,
    pub topics: Vec<DeclaredTopic>,
    pub read_error: Option<String>,
    pub storage: &'static str,
}

/// Read a `.mcap` or `.db3` file, or a rosbag2 folder: every storage file of a split bag
/// (`--max-bag-size` / `--max-bag-duration`), in the order of its metadata.yaml.
pub fn read_bag(path: &Path) -> Result<BagContents, BagError> {
    read_bag_topics(path, &|_| true)
}

/// `read_bag` holding only the messages of the topics `keep` accepts; `topics` still lists
/// every topic.
pub fn read_bag_topics(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<BagContents, BagError> {
    let mut messages = Vec::new();
    let info = for_each_message(path, keep, &mut |m| messages.push(m))?;
    Ok(BagContents {
        messages,
        topics: info.topics,
        read_error: info.read_error,
        storage: info.storage,
    })
}

/// Hand each message of the topics `keep` accepts to `each` as it is read, in storage order,
/// and return what the bag declares. Nothing is held: a bag larger than memory streams.
pub fn for_each_message(
    path: &Path,
    keep: &dyn Fn(&str) -> bool,
    each: &mut dyn FnMut(BagMessage),
) -> Result<BagInfo, BagError> {
    each_file(path, &mut |file| read_file(file, keep, each))
}

/// What a bag declares, without reading its messages where the storage allows: an MCAP
/// file's summary section (its channels, repeated at the end by rosbag2's writer) or a
/// sqlite3 bag's topics table. An MCAP file without a sound summary (truncated, written
/// without one, or failing its CRC) is read through, holding nothing.
pub fn declared_topics(path: &Path) -> Result<BagInfo, BagError> {
    each_file(path, &mut |file| match file.extension().and_then(|e| e.to_str()) {
        Some("mcap") => match mcap_summary(file) {
            Some(info) => Ok(info),
            None => read_mcap(file, &|_| false, &mut |_| {}),
        },
        Some("db3") => open_sqlite(file).map(|bag| bag.info),
        _ => read_file(file, &|_| false, &mut |_| {}),
    })
}

/// `read` on a storage file, or on every file of a rosbag2 folder, merged.
fn each_file(path: &Path, read: &mut dyn FnMut(&Path) -> Result<BagInfo, BagError>) -> Result<BagInfo, BagError> {
    if let Err(e) = std::fs::metadata(path) {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or folder".to_owned(),
            _ => e.to_string(),
        };
        return Err(BagError::Open {
            path: path.to_owned(),
            message,
        });
    }
    if !path.is_dir() {
        return read(path);
    }
    let files = storage_files(path)?;
    let storage = |f: &PathBuf| f.extension().map(|e| e.to_owned());
    if let Some(other) = files.iter().find(|f| storage(f) != storage(&files[0])) {
        return Err(BagError::Open {
            path: path.to_owned(),
            message: format!("mixes storage formats: {} and {}", files[0].display(), other.display()),
        });
    }
    let mut all: Option<BagInfo> = None;
    for file in &files {
        let part = match (read(file), all.as_mut()) {
            (Ok(part), _) => part,
            // A later file that cannot be read (a recording killed just after a split leaves
            // an empty one) ends the bag there, as damage inside a file does: what came before
            // is replayed.
            (Err(e), Some(all)) => {
                all.append(BagInfo {
                    read_error: Some(e.to_string()),
                    ..BagInfo::default()
                });
                break;
            }
            (Err(e), None) => return Err(e),
        };
        match all.as_mut() {
            None => all = Some(part),
            Some(all) => all.append(part),
        }
    }
    all.ok_or_else(|| BagError::NoStorage { path: path.to_owned() })
}

fn read_file(file: &Path, keep: &dyn Fn(&str) -> bool, each: &mut dyn FnMut(BagMessage)) -> Result<BagInfo, BagError> {
    match file.extension().and_then(|e| e.to_str()) {
        Some("mcap") => read_mcap(file, keep, each),
        Some("db3") => read_sqlite(file, keep, each),
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
    // A split bag's files are `name_N`; files of two names are two recordings, which would
    // replay as one with their clocks interleaved.
    let split_name = |p: &PathBuf| -> (String, u64) {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        match stem
            .rsplit_once('_')
            .and_then(|(name, n)| Some((name, n.parse().ok()?)))
        {
            Some((name, n)) => (name.to_owned(), n),
            None => (stem.to_owned(), 0),
        }
    };
    let mut names: Vec<String> = found.iter().map(|p| split_name(p).0).collect();
    names.sort();
    names.dedup();
    if names.len() > 1 {
        return Err(BagError::Open {
            path: dir.to_owned(),
            message: format!(
                "holds the files of {} recordings ({}) and no metadata.yaml that lists one; \
                 replay a single file, or give each recording its own folder",
                names.len(),
                names.join(", ")
            ),
        });
    }
    found.sort_by_key(|p| (split_name(p).1, p.clone()));
    Ok(found)
}

impl BagInfo {
    /// The index of `topic` in `topics`, added if new; a type or encoding fills an empty one
    /// (a channel declared without a schema), and the first stays otherwise.
    fn add_topic(&mut self, name: &str, type_name: String, encoding: String) -> usize {
        match self.topics.iter().position(|t| t.name == name) {
            Some(i) => {
                let known = &mut self.topics[i];
                if known.type_name.is_empty() {
                    known.type_name = type_name;
                }
                if known.encoding.is_empty() {
                    known.encoding = encoding;
                }
                i
            }
            None => {
                self.topics.push(DeclaredTopic {
                    name: name.to_owned(),
                    type_name,
                    encoding,
                });
                self.topics.len() - 1
            }
        }
    }

    /// Add the next file of a split bag.
    fn append(&mut self, next: BagInfo) {
        for t in next.topics {
            self.add_topic(&t.name, t.type_name, t.encoding);
        }
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
/// The longest MCAP record read: far above any camera image (an 8K RGB frame is 100 MB), and
/// the most a corrupt record length can cost (mcap reserves a compressed record's declared
/// length before it decompresses it).
const MAX_RECORD: usize = 512 << 20;

/// The records in file order (chunks unpacked), so a channel declared before a break is listed
/// even when none of its messages made it, and a complete file's channels without messages too.
/// The file is read in pieces and nothing is held but the record being read.
fn read_mcap(path: &Path, keep: &dyn Fn(&str) -> bool, each: &mut dyn FnMut(BagMessage)) -> Result<BagInfo, BagError> {
    let mut file = std::fs::File::open(path).map_err(|e| BagError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut reader =
        LinearReader::new_with_options(LinearReaderOptions::default().with_record_length_limit(MAX_RECORD));
    let mut bag = McapRecords {
        out: BagInfo {
            storage: "mcap",
            ..BagInfo::default()
        },
        ..McapRecords::default()
    };
    let mut bytes_read = 0;
    while let Some(event) = reader.next_event() {
        let added = match event {
            Ok(LinearReadEvent::ReadRequest(need)) => {
                // The request is a record's declared length: read it in pieces, so a corrupt
                // length costs the bytes the file holds, not the bytes it claims.
                match read_retrying(&mut file, reader.insert(need.min(READ_PIECE))) {
                    Ok(n) => {
                        bytes_read += n;
                        reader.notify_read(n);
                        continue;
                    }
                    Err(e) => Err(McapError::Io(e)),
                }
            }
            Ok(LinearReadEvent::Record { opcode, data }) => {
                bag.any_record = true;
                mcap::parse_record(opcode, data).and_then(|r| bag.add(r, keep, each))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = added {
            // Too short to hold the magic, or another format's bytes where it should be; past
            // the first record, an error (a bad closing magic included) is damage to an MCAP file.
            if bytes_read < mcap::MAGIC.len() || (matches!(e, McapError::BadMagic) && !bag.any_record) {
                return Err(BagError::Open {
                    path: path.to_owned(),
                    message: format!("not an MCAP file: {e}"),
                });
            }
            if bag.data_ended {
                // Every message has been read; a damaged summary loses nothing replay uses.
                tracing::warn!(bag = %path.display(), error = %e, "the MCAP summary is damaged; the data section was read whole");
            } else {
                bag.out.read_error = Some(stopped(path, bag.messages_read, e));
            }
            break;
        }
    }
    Ok(bag.out)
}

/// The topics of a complete MCAP file from its summary section, in channel id order; None
/// when it has none, lists no channels, fails its CRC or cannot be read (the caller then reads
/// the file through, which reports any damage).
fn mcap_summary(path: &Path) -> Option<BagInfo> {
    let mut file = std::fs::File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    if !summary_crc_holds(&mut file, size)? {
        tracing::warn!(bag = %path.display(), "the MCAP summary fails its CRC; reading the topics from the data");
        return None;
    }
    let mut reader = SummaryReader::new_with_options(
        SummaryReaderOptions::default()
            .with_file_size(size)
            .with_record_length_limit(MAX_RECORD),
    );
    while let Some(event) = reader.next_event() {
        match event.ok()? {
            SummaryReadEvent::ReadRequest(need) => {
                let n = read_retrying(&mut file, reader.insert(need.min(READ_PIECE))).ok()?;
                reader.notify_read(n);
            }
            SummaryReadEvent::SeekRequest(to) => {
                let at = file.seek(to).ok()?;
                reader.notify_seeked(at);
            }
        }
    }
    let summary = reader.finish()?;
    let mut channels: Vec<_> = summary.channels.values().collect();
    channels.sort_by_key(|c| c.id);
    let mut info = BagInfo {
        storage: "mcap",
        ..BagInfo::default()
    };
    for channel in channels {
        let type_name = channel.schema.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        info.add_topic(&channel.topic, type_name, channel.message_encoding.clone());
    }
    (!info.topics.is_empty()).then_some(info)
}

/// Whether the summary section's bytes match the footer's CRC32 (true when the writer left it
/// 0, unknown). None when there is no summary to check: no footer and closing magic (a
/// truncated file), a footer that points at no summary, or a read that fails. A summary
/// damaged where it still parses would otherwise name topics the bag does not hold.
fn summary_crc_holds(file: &mut std::fs::File, size: u64) -> Option<bool> {
    // The footer record (opcode 0x02, length 20, summary_start, summary_offset_start, crc),
    // then the closing magic.
    const FOOTER: usize = 1 + 8 + 8 + 8 + 4;
    let mut tail = [0u8; FOOTER + 8];
    let footer_at = size.checked_sub(tail.len() as u64)?;
    file.seek(std::io::SeekFrom::Start(footer_at)).ok()?;
    file.read_exact(&mut tail).ok()?;
    let word = |at: usize| u64::from_le_bytes(tail[at..at + 8].try_into().expect("8 bytes"));
    let (summary_start, crc) = (word(9), u32::from_le_bytes(tail[25..29].try_into().expect("4 bytes")));
    let complete = tail[0] == 0x02 && word(1) == 20 && tail[FOOTER..] == mcap::MAGIC[..];
    if !complete || summary_start == 0 || summary_start > footer_at {
        return None;
    }
    if crc == 0 {
        return Some(true);
    }
    // From the summary's start through the footer's summary_offset_start field.
    let mut left = footer_at + 1 + 8 + 16 - summary_start;
    file.seek(std::io::SeekFrom::Start(summary_start)).ok()?;
    let mut piece = vec![0u8; left.min(READ_PIECE as u64) as usize];
    let mut hasher = crc32fast::Hasher::new();
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        file.read_exact(&mut piece[..n]).ok()?;
        hasher.update(&piece[..n]);
        left -= n as u64;
    }
    Some(hasher.finalize() == crc)
}

/// `file.read`, again when a signal interrupted it.
fn read_retrying(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => return read,
        }
    }
}

/// An MCAP file's records, collected into what the bag declares, its messages handed on: mcap's checks on schemas and channels (no
/// schema id 0, no redefinition that differs, no channel before its schema), and each channel's
/// topic in `topics`.
#[derive(Default)]
struct McapRecords {
    channels: ChannelAccumulator<'static>,
    /// Channel id → index into out.topics, and whether its messages are kept.
    topic_of: HashMap<u16, (usize, bool)>,
    /// On every topic, kept or not.
    messages_read: usize,
    /// Past the Data End record: what follows only repeats declarations (the summary).
    data_ended: bool,
    /// A record has been read: the file is an MCAP file, damaged or not.
    any_record: bool,
    bad_log_time_said: bool,
    out: BagInfo,
}

impl McapRecords {
    fn add(
        &mut self,
        record: Record,
        keep: &dyn Fn(&str) -> bool,
        each: &mut dyn FnMut(BagMessage),
    ) -> Result<(), McapError> {
        match record {
            Record::Schema { header, data } => self.channels.add_schema_from_slice(header, &data)?,
            Record::Channel(channel) => {
                let id = channel.id;
                self.channels.add_channel(channel)?;
                let channel = self.channels.get(id).expect("the channel just added");
                let type_name = channel.schema.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                let index = self
                    .out
                    .add_topic(&channel.topic, type_name, channel.message_encoding.clone());
                self.topic_of.insert(id, (index, keep(&channel.topic)));
            }
            Record::Message { header, data } => {
                let &(index, kept) = self
                    .topic_of
                    .get(&header.channel_id)
                    .ok_or(McapError::UnknownChannel(header.sequence, header.channel_id))?;
                self.messages_read += 1;
                if !kept {
                    return Ok(());
                }
                // Beyond the year 2262 (i64 nanoseconds, the loop's clock): a corrupt time,
                // skipped and said once.
                let Ok(log_time_ns) = i64::try_from(header.log_time) else {
                    if !self.bad_log_time_said {
                        self.bad_log_time_said = true;
                        let topic = &self.out.topics[index].name;
                        tracing::warn!(
                            topic,
                            log_time = header.log_time,
                            "message log time beyond i64 nanoseconds: skipped"
                        );
                    }
                    return Ok(());
                };
                each(BagMessage {
                    topic: self.out.topics[index].name.clone(),
                    log_time_ns,
                    data: data.into_owned(),
                });
            }
            Record::DataEnd(_) => self.data_ended = true,
            _ => {}
        }
        Ok(())
    }
}

/// A rosbag2 sqlite3 file opened read-only, with what it declares.
struct SqliteBag {
    db: rusqlite::Connection,
    info: BagInfo,
    /// Each topic's id and name.
    topic_ids: Vec<(i64, String)>,
}

fn open_sqlite(path: &Path) -> Result<SqliteBag, BagError> {
    let open_err = |e: rusqlite::Error| BagError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open_err)?;
    let mut info = BagInfo {
        storage: "sqlite3",
        ..BagInfo::default()
    };
    let declared = db
        .prepare("SELECT id, name, type, serialization_format FROM topics ORDER BY id")
        .and_then(|mut topics| {
            topics
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(open_err)?;
    let mut topic_ids = Vec::with_capacity(declared.len());
    for (id, name, type_name, encoding) in declared {
        info.add_topic(&name, type_name, encoding);
        topic_ids.push((id, name));
    }
    Ok(SqliteBag { db, info, topic_ids })
}

fn read_sqlite(
    path: &Path,
    keep: &dyn Fn(&str) -> bool,
    each: &mut dyn FnMut(BagMessage),
) -> Result<BagInfo, BagError> {
    let open_err = |e: rusqlite::Error| BagError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let SqliteBag {
        db,
        info: mut out,
        topic_ids,
    } = open_sqlite(path)?;
    let kept: HashMap<i64, String> = topic_ids.into_iter().filter(|(_, name)| keep(name)).collect();
    let kept_ids: Vec<String> = kept.keys().map(i64::to_string).collect();
    // The data of a message not kept is not even read out of the database (the CASE leaves
    // its blob unloaded), only its topic and time.
    let mut stmt = db
        .prepare(&format!(
            "SELECT topic_id, timestamp, CASE WHEN topic_id IN ({}) THEN data END FROM messages ORDER BY id",
            kept_ids.join(", ")
        ))
        .map_err(open_err)?;
    let rows = stmt
        .query_map([], |r| {
            let Some(data) = r.get::<_, Option<Vec<u8>>>(2)? else {
                return Ok(None);
            };
            Ok(Some((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, data)))
        })
        .map_err(open_err)?;
    for (read, row) in rows.enumerate() {
        match row {
            Ok(Some((topic_id, log_time_ns, data))) => each(BagMessage {
                topic: kept[&topic_id].clone(),
                log_time_ns,
                data,
            }),
            Ok(None) => {}
            Err(e) => {
                out.read_error = Some(stopped(path, read, e));
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u32).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    fn record(opcode: u8, body: Vec<u8>) -> Vec<u8> {
        let mut r = vec![opcode];
        r.extend((body.len() as u64).to_le_bytes());
        r.extend(body);
        r
    }

    fn schema(id: u16, name: &str) -> Vec<u8> {
        let mut b = id.to_le_bytes().to_vec();
        b.extend(string(name));
        b.extend(string("ros2msg"));
        b.extend(0u32.to_le_bytes());
        record(0x03, b)
    }

    fn channel(id: u16, schema_id: u16, topic: &str) -> Vec<u8> {
        let mut b = id.to_le_bytes().to_vec();
        b.extend(schema_id.to_le_bytes());
        b.extend(string(topic));
        b.extend(string("cdr"));
        b.extend(0u32.to_le_bytes()); // no metadata
        record(0x04, b)
    }

    fn message(channel_id: u16) -> Vec<u8> {
        let mut b = channel_id.to_le_bytes().to_vec();
        b.extend(0u32.to_le_bytes());
        b.extend([0u8; 16]);
        b.extend([1, 2, 3]);
        record(0x05, b)
    }

    /// A file of `records` between a Header record and an empty Footer, read back.
    fn read(name: &str, records: &[Vec<u8>]) -> BagContents {
        let mut bytes = mcap::MAGIC.to_vec();
        bytes.extend(record(0x01, [string(""), string("")].concat()));
        bytes.extend(records.concat());
        bytes.extend(record(0x02, vec![0; 20]));
        bytes.extend(mcap::MAGIC);
        let path = std::env::temp_dir().join(format!("df_planner_bag_{}_{name}.mcap", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let bag = read_bag(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        bag
    }

    #[test]
    fn a_channel_redefined_or_a_schema_id_0_is_damage() {
        let redefined = read(
            "redefined",
            &[
                schema(1, "a/msg/A"),
                channel(1, 1, "/a"),
                message(1),
                channel(1, 1, "/b"),
                message(1),
            ],
        );
        assert_eq!(redefined.messages.len(), 1);
        let damage = redefined.read_error.unwrap();
        assert!(
            damage.contains("stopped after 1 messages") && damage.contains("/b"),
            "{damage}"
        );

        let zero = read("schema_zero", &[schema(0, "a/msg/A"), channel(1, 0, "/a"), message(1)]);
        assert!(zero.messages.is_empty());
        assert!(zero.read_error.is_some());
    }

    #[test]
    fn a_topic_is_listed_once_with_the_type_a_channel_gives_it() {
        let bag = read(
            "two_channels",
            &[
                channel(1, 0, "/a"),
                schema(1, "a/msg/A"),
                channel(2, 1, "/a"),
                message(1),
                message(2),
            ],
        );
        let a = DeclaredTopic {
            name: "/a".into(),
            type_name: "a/msg/A".into(),
            encoding: "cdr".into(),
        };
        assert_eq!(bag.topics, [a]);
        assert_eq!(bag.messages.len(), 2);
        assert!(bag.read_error.is_none(), "{:?}", bag.read_error);
    }

    #[test]
    fn a_complete_bag_declares_its_topics_in_its_summary() {
        let shipped =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bags/pointmass_mcap/pointmass_mcap.mcap");
        let summary = mcap_summary(&shipped).expect("the shipped bag has a summary section");
        assert_eq!(summary.topics, read_bag(&shipped).unwrap().topics);
        let truncated = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bags/truncated.mcap");
        assert!(mcap_summary(&truncated).is_none());
    }

    #[test]
    fn a_file_cut_inside_its_first_record_is_truncated_not_foreign() {
        let mut bytes = mcap::MAGIC.to_vec();
        bytes.extend(&record(0x01, [string(""), string("")].concat())[..5]);
        let path = std::env::temp_dir().join(format!("df_planner_bag_{}_cut.mcap", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let bag = read_bag(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(bag.read_error.unwrap().contains("stopped after 0 messages"));
    }
}
