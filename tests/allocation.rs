//! What reading bags allocates: a corrupt length costs a bounded amount, not the length it
//! declares, an MCAP bag read whole is held once (its messages), not twice, and replay holds a
//! window of the bag, not the bag. Its own test binary: the global allocator records, per
//! thread, the largest request and the peak of live bytes.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use df_planner::config::NodeConfig;
use df_planner::frames::Resize;
use df_planner::msgs::{float64_array, from_cdr, to_cdr, Header, Image, ImageRef, JointState, Time};
use df_planner::replay::{read_bag, read_bag_topics, replay, ReplayOptions};

struct Tracking;

/// Per thread: the largest single request, and live and peak bytes (allocated on this thread
/// and freed on it; the tests allocate and free on one thread).
#[derive(Clone, Copy)]
struct Usage {
    largest: usize,
    live: isize,
    peak: isize,
}

thread_local! {
    static USAGE: Cell<Usage> = const { Cell::new(Usage { largest: 0, live: 0, peak: 0 }) };
}

fn record(requested: usize, grown: isize) {
    // try_with: a thread being torn down has no slot left, and allocation must not panic.
    let _ = USAGE.try_with(|usage| {
        let mut u = usage.get();
        u.largest = u.largest.max(requested);
        u.live += grown;
        u.peak = u.peak.max(u.live);
        usage.set(u);
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(0, -(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size, new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// `f`'s result, the largest request it made and its peak of live bytes above the start.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let start = USAGE.with(|usage| {
        let u = usage.get();
        usage.set(Usage {
            largest: 0,
            peak: u.live,
            ..u
        });
        u.live
    });
    let out = f();
    let u = USAGE.with(Cell::get);
    (out, u.largest, (u.peak - start) as usize)
}

#[test]
fn a_corrupt_length_is_an_error_that_allocates_at_most_a_mebibyte() {
    let header = Header {
        frame_id: "cam".into(),
        ..Header::default()
    };
    let (height, width, step) = (1, 2, 6);
    let (encoding, data) = ("rgb8".into(), vec![7; 6]);
    let bytes = to_cdr(&Image {
        header,
        height,
        width,
        encoding,
        is_bigendian: 0,
        step,
        data,
    });
    // The frame_id length (after the 4-byte header and the 8-byte stamp), then the data length
    // (the last 4 bytes before the 6 data bytes), set to nearly 4 GiB.
    for at in [4 + 8, bytes.len() - 6 - 4] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&0xFFFF_FFF0_u32.to_le_bytes());
        let (decoded, largest, _) = measure(|| from_cdr::<Image>(&bad));
        assert!(decoded.is_err(), "length at byte {at}");
        // 1 MiB: serde's cap on what a sequence reserves for a length it cannot trust.
        assert!(
            largest <= 1 << 20,
            "length at byte {at}: one allocation of {largest} bytes"
        );
        // Read in place (replay's path): nothing is allocated but the error's text.
        let (in_place, largest, _) = measure(|| ImageRef::from_cdr(&bad).map(|_| ()));
        assert!(in_place.is_err(), "length at byte {at}");
        assert!(largest < 256, "length at byte {at}: one allocation of {largest} bytes");
    }
}

fn temp_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("df_planner_allocation_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn an_mcap_bag_is_held_once_and_only_the_kept_topics() {
    const MESSAGES: usize = 16;
    const SIZE: usize = 1 << 20;
    let path = temp_file("two_topics.mcap");
    let image = "sensor_msgs/msg/Image";
    let messages = (0..2 * MESSAGES).map(|k| (k % 2, k as u64, vec![k as u8; SIZE]));
    // Unchunked: the file's bytes are the messages' bytes, nothing compressed.
    common::write_mcap_bag(&path, false, &[("/cam", image), ("/other_cam", image)], messages);

    let (all, _, peak_all) = measure(|| read_bag(&path).unwrap());
    assert_eq!(all.messages.len(), 2 * MESSAGES);
    drop(all);
    let (camera_only, _, peak_camera) = measure(|| read_bag_topics(&path, &|topic| topic == "/cam").unwrap());
    std::fs::remove_file(&path).unwrap();
    assert_eq!(camera_only.messages.len(), MESSAGES);
    assert!(camera_only.messages.iter().all(|m| m.topic == "/cam"));
    assert_eq!(camera_only.topics.len(), 2, "every topic is listed");
    // The messages plus a record's worth of read buffer; the whole file again would be 2x.
    let (held_all, held_camera) = (2 * MESSAGES * SIZE, MESSAGES * SIZE);
    assert!(
        peak_all < held_all + held_all / 8,
        "peak {peak_all} bytes for {held_all} bytes of messages"
    );
    assert!(
        peak_camera < held_camera + held_camera / 4,
        "peak {peak_camera} bytes for {held_camera} bytes kept"
    );
}

/// The MCAP magic and an empty Header record, then `records`.
fn mcap_bytes(records: &[u8]) -> Vec<u8> {
    let mut bytes = b"\x89MCAP0\r\n".to_vec();
    bytes.push(0x01);
    bytes.extend(8u64.to_le_bytes());
    bytes.extend([0u8; 8]);
    bytes.extend(records);
    bytes
}

/// A Message record (opcode 0x05) that claims `length` bytes and holds 64.
fn message_claiming(length: u64) -> Vec<u8> {
    let mut record = vec![0x05];
    record.extend(length.to_le_bytes());
    record.extend([0u8; 64]);
    record
}

#[test]
fn a_corrupt_mcap_record_length_costs_a_bounded_amount() {
    // At the top level, 256 MiB (under the longest record read): read in pieces, it costs
    // the bytes the file holds.
    let plain = mcap_bytes(&message_claiming(256 << 20));
    // Inside a zstd chunk, 1 TiB: mcap would reserve the declared length before decompressing.
    let inner = message_claiming(1 << 40);
    let compressed = zstd::bulk::compress(&inner, 3).unwrap();
    let mut chunk = vec![0x06];
    let mut body = Vec::new();
    body.extend([0u8; 16]); // message start and end times
    body.extend((inner.len() as u64).to_le_bytes());
    body.extend(0u32.to_le_bytes()); // no CRC
    body.extend(4u32.to_le_bytes());
    body.extend(b"zstd");
    body.extend((compressed.len() as u64).to_le_bytes());
    body.extend(&compressed);
    chunk.extend((body.len() as u64).to_le_bytes());
    chunk.extend(body);
    let chunked = mcap_bytes(&chunk);

    for (name, bytes) in [
        ("claims_256_mib.mcap", plain),
        ("chunk_claims_a_tebibyte.mcap", chunked),
    ] {
        let path = temp_file(name);
        std::fs::write(&path, &bytes).unwrap();
        let (bag, largest, _) = measure(|| read_bag(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(bag.messages.is_empty(), "{name}");
        let damage = bag.read_error.unwrap();
        assert!(damage.contains("stopped after 0 messages"), "{name}: {damage}");
        assert!(largest <= 4 << 20, "{name}: one allocation of {largest} bytes");
    }
}

#[test]
fn replay_holds_a_window_of_the_bag_not_the_bag() {
    // 30 s of a 10 Hz 296x296 rgb8 camera: 300 frames of 257 KiB, 75 MiB of input. The state
    // and recorded-action topics are declared without messages: the arm holds throughout,
    // and what is measured is the bag's path through replay.
    const FRAMES: i64 = 300;
    const PERIOD_NS: i64 = 100_000_000;
    let (width, height) = (296u32, 296u32);
    let frame_bytes = (width * height * 3) as usize;
    let path = temp_file("long_camera.mcap");
    pointmass_bag(
        &path,
        (0..FRAMES).map(|k| {
            let t = 1_000_000_000 + k * PERIOD_NS;
            let image = Image {
                header: Header {
                    stamp: Time::from_ns(t),
                    frame_id: "cam".into(),
                },
                height,
                width,
                encoding: "rgb8".into(),
                is_bigendian: 0,
                step: width * 3,
                data: vec![k as u8; frame_bytes],
            };
            (CAMERA, t, to_cdr(&image))
        }),
    );

    let mut cfg = NodeConfig::load(&common::repo().join("config/pointmass.yaml")).unwrap();
    cfg.model.runtime = common::cpu();
    cfg.camera.resize = Resize::Area;
    let out = temp_file("long_camera_out.mcap");
    let (summary, _, peak) = measure(|| replay(&cfg, &path, &out, &ReplayOptions::default()).unwrap());
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&out).unwrap();
    let images = &summary.topics[CAMERA];
    assert_eq!((images.read, images.used), (FRAMES as u64, FRAMES as u64), "{images:?}");
    // The frames of one reorder window (and the one being read), plus the loop and the
    // output writer's buffers; the whole input would be 75 MiB.
    let window_ns = (ReplayOptions::default().reorder_window_s * 1e9) as i64;
    let window = (window_ns / PERIOD_NS + 2) as usize * frame_bytes;
    println!(
        "replay of {} bytes of camera frames: peak live heap {peak} bytes",
        FRAMES as usize * frame_bytes
    );
    assert!(
        peak < window + (8 << 20),
        "peak {peak} bytes; a window of frames is {window}, the bag {}",
        FRAMES as usize * frame_bytes
    );
}

/// The topics config/pointmass.yaml replays, and their types.
const CAMERA: &str = "/camera/image_raw";
const STATE: &str = "/joint_states";
const ACTION: &str = "/action";

/// A chunked MCAP bag declaring the three pointmass topics, holding `messages` (topic, log
/// time, CDR bytes) in the order given.
fn pointmass_bag(path: &std::path::Path, messages: impl IntoIterator<Item = (&'static str, i64, Vec<u8>)>) {
    let channels = [
        (CAMERA, "sensor_msgs/msg/Image"),
        (STATE, "sensor_msgs/msg/JointState"),
        (ACTION, "std_msgs/msg/Float64MultiArray"),
    ];
    let messages = messages.into_iter().map(|(topic, t, data)| {
        let channel = channels.iter().position(|(name, _)| *name == topic).unwrap();
        (channel, t as u64, data)
    });
    common::write_mcap_bag(path, true, &channels, messages);
}

/// A bag of `seconds` in which the arm's state comes once a second under a joint the config
/// does not name (so the arm holds and nothing is planned) and its action once a second.
fn held_arm_bag(path: &std::path::Path, seconds: i64) {
    pointmass_bag(
        path,
        (0..seconds).flat_map(|k| {
            let t = 1_000_000_000 * (1 + k);
            let joints = JointState {
                header: Header {
                    stamp: Time::from_ns(t),
                    frame_id: String::new(),
                },
                name: vec!["elbow".into()],
                position: vec![0.0],
                velocity: vec![],
                effort: vec![],
            };
            [
                (STATE, t, to_cdr(&joints)),
                (ACTION, t, to_cdr(&float64_array(&[0.1, -0.1]))),
            ]
        }),
    );
}

#[test]
fn replay_memory_does_not_grow_with_the_bags_length() {
    // An hour at 50 ticks a second publishes 180,000 actions; what replay keeps of them (the
    // planned-vs-recorded error) must not grow with their number.
    let mut cfg = NodeConfig::load(&common::repo().join("config/pointmass.yaml")).unwrap();
    cfg.model.runtime = common::cpu();
    cfg.topics.recorded_action = Some(ACTION.into());
    let peak_for = |seconds: i64| {
        let (bag, out) = (
            temp_file(&format!("held_{seconds}.mcap")),
            temp_file(&format!("held_{seconds}_out.mcap")),
        );
        held_arm_bag(&bag, seconds);
        let (summary, _, peak) = measure(|| replay(&cfg, &bag, &out, &ReplayOptions::default()).unwrap());
        std::fs::remove_file(&bag).unwrap();
        std::fs::remove_file(&out).unwrap();
        let compared = summary.planned_vs_recorded.as_ref().map_or(0, |e| e.compared);
        assert_eq!(
            compared, seconds as usize,
            "every recorded action is compared: {summary:?}"
        );
        println!(
            "replay of {seconds} s ({} ticks): peak live heap {peak} bytes",
            summary.ticks
        );
        peak
    };
    let (minutes, hour) = (peak_for(360), peak_for(3600));
    assert!(
        hour < minutes + (1 << 20),
        "an hour's replay peaked at {hour} bytes, six minutes' at {minutes}"
    );
}
