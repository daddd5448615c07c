//! Offline replay of the shipped bags: both storage formats, determinism, and every kind of
//! damage reported (never a panic, never a message dropped without being counted).

mod common;

use std::path::{Path, PathBuf};

use df_planner::config::NodeConfig;
use df_planner::frames::Resize;
use df_planner::replay::{replay, ReplayError, ReplayOptions, ReplaySummary};

fn config() -> NodeConfig {
    NodeConfig::load(&common::repo().join("config/pointmass.yaml")).unwrap()
}

fn bag(name: &str) -> PathBuf {
    common::repo().join("tests/fixtures/bags").join(name)
}

fn out(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("df_planner_replay_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run(cfg: &NodeConfig, bag_name: &str, out_name: &str) -> Result<ReplaySummary, ReplayError> {
    run_bag(cfg, &bag(bag_name), out_name)
}

/// Replay the bag at `path` on the CPU.
fn run_bag(cfg: &NodeConfig, path: &Path, out_name: &str) -> Result<ReplaySummary, ReplayError> {
    let mut cfg = cfg.clone();
    cfg.model.runtime = common::cpu();
    replay(&cfg, path, &out(out_name), &ReplayOptions::default())
}

/// The shipped MCAP bag's file.
fn shipped_mcap() -> Vec<u8> {
    std::fs::read(bag("pointmass_mcap").join("pointmass_mcap.mcap")).unwrap()
}

/// Write `messages`, with their channels and schemas, to a new MCAP file.
fn write_mcap<'a>(path: &Path, messages: impl IntoIterator<Item = mcap::Message<'a>>) {
    let mut w = mcap::Writer::new(std::io::BufWriter::new(std::fs::File::create(path).unwrap())).unwrap();
    for m in messages {
        w.write(&m).unwrap();
    }
    w.finish().unwrap();
}

/// (topic, log time, bytes) of every message on `topic` in an MCAP file.
fn messages(path: &Path, topic: &str) -> Vec<(u64, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    mcap::MessageStream::new(&bytes)
        .unwrap()
        .map(Result::unwrap)
        .filter(|m| m.channel.topic == topic)
        .map(|m| (m.log_time, m.data.into_owned()))
        .collect()
}

#[test]
fn mcap_and_sqlite3_bags_replay_alike_and_deterministically() {
    let cfg = config();
    let a = run(&cfg, "pointmass_mcap", "a.mcap").unwrap();
    run(&cfg, "pointmass_mcap", "b.mcap").unwrap();
    let c = run(&cfg, "pointmass_sqlite3", "c.mcap").unwrap();
    assert_eq!((a.storage, c.storage), ("mcap", "sqlite3"));
    for s in [&a, &c] {
        for (topic, count) in &s.topics {
            assert_eq!((count.read, count.used), (60, 60), "{topic}: {count:?}");
        }
        assert!(s.ticks > 250, "~6 s at 50 Hz");
        assert!(s.diagnostics.plans >= 29);
        assert_eq!(s.diagnostics.plan_errors, 0);
        assert!(s.planned_vs_recorded.as_ref().unwrap().compared == 60);
    }
    let actions = |name| messages(&out(name), "/df_planner/action");
    assert_eq!(
        actions("a.mcap"),
        actions("b.mcap"),
        "same bag, same seed: byte-identical actions"
    );
    assert_eq!(
        actions("a.mcap"),
        actions("c.mcap"),
        "the storage format does not matter"
    );
    assert_eq!(actions("a.mcap").len() as u64, a.ticks, "one action per tick");
    assert!(!messages(&out("a.mcap"), "/df_planner/plan").is_empty());
    assert!(!messages(&out("a.mcap"), "/diagnostics").is_empty());
}

#[test]
fn a_different_seed_changes_the_plans() {
    let mut cfg = config();
    cfg.planner.eta = 1.0;
    run(&cfg, "pointmass_mcap", "seed0.mcap").unwrap();
    cfg.planner.seed = 1;
    run(&cfg, "pointmass_mcap", "seed1.mcap").unwrap();
    let plans = |name| messages(&out(name), "/df_planner/plan");
    assert_ne!(plans("seed0.mcap"), plans("seed1.mcap"));
}

#[test]
fn every_fault_in_the_faulty_bag_is_counted() {
    let s = run(&config(), "faults_mcap", "faults.mcap").unwrap();
    let images = &s.topics["/camera/image_raw"];
    let skipped = |c: &df_planner::replay::TopicCount, needle: &str| -> u64 {
        c.skipped
            .iter()
            .filter(|(reason, _)| reason.contains(needle))
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!(skipped(images, "image encoding \"yuv422\""), 1, "{images:?}");
    assert_eq!(skipped(images, "image size 16x16: expected 32x32"), 1);
    assert_eq!(skipped(images, "is before the previous frame's"), 1);
    assert_eq!(skipped(images, "repeats the previous frame's"), 1);
    assert_eq!(
        images.read,
        images.used + images.skipped.values().sum::<u64>(),
        "every image accounted for"
    );
    let f = s.diagnostics.frames;
    assert_eq!(
        (
            f.rejected_encoding,
            f.rejected_size,
            f.rejected_out_of_order,
            f.rejected_duplicate
        ),
        (1, 1, 1, 1)
    );

    let states = &s.topics["/joint_states"];
    assert_eq!(skipped(states, "duplicate stamp"), 1, "{states:?}");
    assert_eq!(states.read, 50 + 1);
    assert_eq!(s.diagnostics.states_rejected, 1, "the diagnostics count it too");
    let actions = &s.topics["/action"];
    assert_eq!(skipped(actions, "3 values, expected 2"), 1);

    // The 1 s gap in joint states trips the state watchdog; the loop falls back and recovers.
    let stale = s
        .diagnostics
        .faults
        .iter()
        .find(|(n, _)| *n == "state_stale")
        .unwrap()
        .1;
    assert!(stale > 20, "state_stale {stale}");
    assert!(s.diagnostics.hold > 20);
    let from_plan = s.ticks - s.diagnostics.hold - s.diagnostics.stop;
    assert!(from_plan > 200, "the loop recovers after the gap");
}

#[test]
fn a_truncated_mcap_replays_what_it_holds_and_says_where_it_broke() {
    let s = run(&config(), "truncated.mcap", "truncated_out.mcap").unwrap();
    let damage = s.bag_read_error.as_deref().unwrap();
    assert!(damage.contains("stopped after"), "{damage}");
    assert!(s.ticks > 0);
}

#[test]
fn a_corrupt_db3_is_a_clear_error() {
    let err = run(&config(), "corrupt.db3", "corrupt_out.mcap")
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt.db3"), "{err}");
    assert!(err.contains("not a database"), "{err}");
}

#[test]
fn a_file_that_is_not_an_mcap_is_a_clear_error() {
    for (name, bytes) in [("empty.mcap", &b""[..]), ("text.mcap", &b"topic,time\n/cam,1\n"[..])] {
        let path = out(name);
        std::fs::write(&path, bytes).unwrap();
        let err = run_bag(&config(), &path, "not_mcap_out.mcap").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("bag {}: not an MCAP file: ", path.display())),
            "{err}"
        );
    }
}

#[test]
fn a_bag_that_is_not_there_is_named_as_missing() {
    for name in ["nowhere.mcap", "nowhere"] {
        let path = out(name);
        let err = run_bag(&config(), &path, "nowhere_out.mcap").unwrap_err().to_string();
        assert_eq!(err, format!("bag {}: no such file or folder", path.display()));
    }
}

#[test]
fn config_topics_the_bag_lacks_are_named() {
    let mut cfg = config();
    cfg.topics.state = "/robot/state".into();
    let err = run(&cfg, "pointmass_mcap", "missing.mcap").unwrap_err().to_string();
    assert!(
        err.starts_with("config topics.state = \"/robot/state\": not in the bag (its topics: "),
        "{err}"
    );
    assert!(err.contains("/joint_states [sensor_msgs/msg/JointState]"), "{err}");

    let mut cfg = config();
    cfg.topics.recorded_action = Some("/camera/image_raw".into());
    let err = run(&cfg, "pointmass_mcap", "wrongtype.mcap").unwrap_err().to_string();
    assert!(
        err.contains("has type sensor_msgs/msg/Image, expected std_msgs/msg/Float64MultiArray"),
        "{err}"
    );
}

#[test]
fn malformed_configs_are_named() {
    let text = std::fs::read_to_string(common::repo().join("config/pointmass.yaml")).unwrap();
    let cases = [
        (
            text.replace("rate_hz: 50", "rate_hz: fast"),
            "field `control.rate_hz`: invalid type",
        ),
        (
            text.replace("fallback: hold", "fallback: panic"),
            "field `control.fallback`: unknown variant `panic`, expected `hold` or `stop`",
        ),
        (
            text.replace("  seed: 0", "  seed: 0\n  sead: 1"),
            "field `planner.sead`: unknown field `sead`",
        ),
        (
            text.replace("max_rate: [20.0, 20.0]", "max_rate: [20.0]"),
            "`safety.max_rate`: expected 2 values, as many as safety.action_min has, got 1",
        ),
        (
            text.replace("action_min: [-1.0, -1.0]", "action_min: [.nan, -1.0]"),
            "`safety.action_min`: expected finite values, got NaN at [0]",
        ),
        (
            text.replace("stop_action: [0.0, 0.0]", "stop_action: [0.0, 5.0]"),
            "`control.stop_action`: expected within [-1, 1] at index 1, got 5",
        ),
        (
            text.replace("kind: pyramid", "kind: zigzag"),
            "field `planner.matrix.kind`: unknown variant `zigzag`",
        ),
        (
            text.replace("  seed: 0", "  seed: 0\n  mcg: repeats"),
            "field `planner.mcg`: unknown variant `repeats`, expected one of `futures`, `prior_futures`, `redraws`",
        ),
        (
            text.replace("rate_hz: 50", "rate_hz: 1e10"),
            "`control.rate_hz`: expected a rate whose period is from 1 µs to 1 day, got 10000000000",
        ),
        (
            text.replace("action_dt_s: 0.1", "action_dt_s: 1e-10"),
            "`control.action_dt_s`: expected a period from 1 µs to 1 day, got 0.0000000001",
        ),
        (
            text.replace("max_plan_age_s: 1.0", "max_plan_age_s: -1"),
            "`safety.max_plan_age_s`: expected a finite number > 0, got -1",
        ),
        (
            text.replace("max_plan_age_s: 1.0", "max_plan_age_s: 0.2"),
            "`safety.max_plan_age_s`: expected more than the replan interval, planner.replan_every x control.action_dt_s = 0.2 s, plus the plans' latency, got 0.2",
        ),
        (
            text.replace("hold_timeout_s: 0.5", "hold_timeout_s: 1e6"),
            "`control.hold_timeout_s`: expected a time from 1 µs to 1 day, got 1000000",
        ),
        (
            text.replace("width: 32", "width: 0"),
            "`camera.width`: expected >= 1 pixel, got 0",
        ),
        (
            text.replace("  plan: ~/plan", "  plan: ~/plan\n  goal: {topic: /goal_pose, frame_id: map}"),
            "`topics.goal`: expected null, or a planner.goal section (the goal reward whose goal it sets), got topic \"/goal_pose\" with no planner.goal",
        ),
        (
            text.replace("  plan: ~/plan", "  plan: ~/plan\n  goal: /goal_pose"),
            "field `topics.goal`: invalid type: string \"/goal_pose\", expected struct GoalTopic",
        ),
        (
            text.replace(
                "  seed: 0",
                "  seed: 0\n  goal: {position_dims: [0, 1], squash: linear, sigma: 1.0, aggregate: {kind: mean}, reached_within: 0}",
            ),
            "`planner.goal.reached_within`: expected a distance > 0, or null, got 0",
        ),
        (
            text.replace("  plan: ~/plan", "  plan: ~/df planner/plan"),
            "`topics.plan`: expected a ROS 2 topic name (character ' ': a name has only letters, digits, '_', '/' and a leading '~'), got \"~/df planner/plan\"",
        ),
        ("model: [".to_string(), "config x.yaml:"),
    ];
    for (yaml, expected) in cases {
        let err = NodeConfig::parse(&yaml, Path::new("x.yaml")).unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?}\n  lacks {expected:?}");
    }
}

#[test]
fn a_split_bag_replays_every_file_in_order() {
    // The shipped bag cut in two as `ros2 bag record --max-bag-size` would: name_9, name_10
    // (numeric order, not the names' order), no metadata.yaml listing them.
    let dir = out("split");
    std::fs::create_dir_all(&dir).unwrap();
    let whole = shipped_mcap();
    let all: Vec<_> = mcap::MessageStream::new(&whole).unwrap().map(Result::unwrap).collect();
    let (first, second) = all.split_at(all.len() / 2);
    for (name, part) in [("split_9.mcap", first), ("split_10.mcap", second)] {
        write_mcap(&dir.join(name), part.iter().cloned());
    }
    let split = run_bag(&config(), &dir, "split.mcap").unwrap();
    for (topic, count) in &split.topics {
        assert_eq!((count.read, count.used), (60, 60), "{topic}: {count:?}");
    }
    assert_eq!(split.reordered_by_log_time, 0, "the files were read in split order");
    assert!(split.bag_read_error.is_none());
}

#[test]
fn a_split_bag_whose_last_file_is_empty_replays_the_files_before_it() {
    // A recording killed just after a split: the next file exists but holds nothing yet.
    let dir = out("split_empty");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("split_empty_0.mcap"), shipped_mcap()).unwrap();
    std::fs::write(dir.join("split_empty_1.mcap"), b"").unwrap();
    let s = run_bag(&config(), &dir, "split_empty.mcap").unwrap();
    for (topic, count) in &s.topics {
        assert_eq!((count.read, count.used), (60, 60), "{topic}: {count:?}");
    }
    let damage = s.bag_read_error.expect("the empty file is reported");
    assert!(damage.contains("split_empty_1.mcap"), "{damage}");
}

#[test]
fn zstd_and_lz4_compressed_bags_replay_as_the_uncompressed_one() {
    let whole = shipped_mcap();
    run(&config(), "pointmass_mcap", "uncompressed_out.mcap").unwrap();
    let actions = |name: &str| messages(&out(name), "/df_planner/action");
    for (name, compression) in [("zstd", mcap::Compression::Zstd), ("lz4", mcap::Compression::Lz4)] {
        let path = out(&format!("{name}.mcap"));
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut w = mcap::WriteOptions::new()
            .compression(Some(compression))
            .create(file)
            .unwrap();
        for m in mcap::MessageStream::new(&whole).unwrap() {
            w.write(&m.unwrap()).unwrap();
        }
        w.finish().unwrap();
        assert!(
            std::fs::read(&path)
                .unwrap()
                .windows(name.len())
                .any(|b| b == name.as_bytes()),
            "{name} chunks"
        );
        let out_name = format!("{name}_out.mcap");
        let s = run_bag(&config(), &path, &out_name).unwrap();
        for (topic, count) in &s.topics {
            assert_eq!((count.read, count.used), (60, 60), "{name} {topic}: {count:?}");
        }
        assert_eq!(actions(&out_name), actions("uncompressed_out.mcap"), "{name}");
    }
}

#[test]
fn a_bag_whose_closing_magic_is_damaged_replays_whole() {
    let mut bytes = shipped_mcap();
    *bytes.last_mut().unwrap() ^= 0xff;
    let path = out("end_magic.mcap");
    std::fs::write(&path, bytes).unwrap();
    let s = run_bag(&config(), &path, "end_magic_out.mcap").unwrap();
    for (topic, count) in &s.topics {
        assert_eq!((count.read, count.used), (60, 60), "{topic}: {count:?}");
    }
}

#[test]
fn a_topic_not_encoded_as_cdr_is_named_before_anything_replays() {
    let whole = shipped_mcap();
    let messages = mcap::MessageStream::new(&whole).unwrap().map(|m| {
        let mut m = m.unwrap();
        if m.channel.topic == "/joint_states" {
            let mut channel = (*m.channel).clone();
            channel.message_encoding = "json".into();
            m.channel = std::sync::Arc::new(channel);
        }
        m
    });
    let path = out("json_states.mcap");
    write_mcap(&path, messages);
    let expected = "config topics.state = \"/joint_states\": the bag's messages are encoded \"json\", expected \"cdr\"";
    let err = run_bag(&config(), &path, "json_states_out.mcap")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(expected), "{err}");

    // sqlite3 bags say it in the topics table.
    let dir = out("json_states_sqlite3");
    std::fs::create_dir_all(&dir).unwrap();
    let db3 = dir.join("json_states_sqlite3.db3");
    std::fs::copy(bag("pointmass_sqlite3").join("pointmass_sqlite3.db3"), &db3).unwrap();
    rusqlite::Connection::open(&db3)
        .unwrap()
        .execute(
            "UPDATE topics SET serialization_format = 'json' WHERE name = '/joint_states'",
            [],
        )
        .unwrap();
    let err = run_bag(&config(), &db3, "json_states_sqlite3_out.mcap")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(expected), "{err}");
}

#[test]
fn a_gap_in_log_times_is_jumped_not_ticked_through() {
    // The first message stamped 0, as under sim time before /clock arrives: ticking from 0 to
    // the others' wall-clock times at 50 Hz would take ~8e10 ticks.
    let whole = shipped_mcap();
    let messages = mcap::MessageStream::new(&whole).unwrap().enumerate().map(|(k, m)| {
        let mut m = m.unwrap();
        if k == 0 {
            m.log_time = 0;
        }
        m
    });
    let path = out("gap.mcap");
    write_mcap(&path, messages);
    let s = run_bag(&config(), &path, "gap_out.mcap").unwrap();
    assert_eq!(s.gaps_jumped, 1);
    assert!(s.gap_s_jumped > 1e9, "{}", s.gap_s_jumped);
    let normal = run(&config(), "pointmass_mcap", "no_gap_out.mcap").unwrap();
    assert!(
        s.ticks <= normal.ticks + 1,
        "{} ticks against {}",
        s.ticks,
        normal.ticks
    );
}

#[test]
fn a_non_finite_or_glitched_recorded_action_is_skipped_and_counted() {
    // The shipped bag with one recorded action's last value set to NaN, and another's to 1e9
    // (finite, but a billion standard deviations from the model's actions).
    let dir = out("nan_action");
    std::fs::create_dir_all(&dir).unwrap();
    let whole = shipped_mcap();
    let mut actions = 0;
    let messages = mcap::MessageStream::new(&whole).unwrap().map(|m| {
        let mut m = m.unwrap();
        if m.channel.topic == "/action" {
            actions += 1;
            if let Some(bad) = [(1, f64::NAN), (20, 1e9)]
                .iter()
                .find(|(k, _)| *k == actions)
                .map(|b| b.1)
            {
                let mut data = m.data.into_owned();
                let n = data.len();
                data[n - 8..].copy_from_slice(&bad.to_le_bytes());
                m.data = data.into();
            }
        }
        m
    });
    write_mcap(&dir.join("nan.mcap"), messages);
    let s = run_bag(&config(), &dir, "nan.mcap").unwrap();
    let action = &s.topics["/action"];
    assert_eq!((action.read, action.used), (60, 58), "{action:?}");
    assert_eq!(action.skipped.get("non-finite value"), Some(&1));
    assert_eq!(
        action
            .skipped
            .get("a value more than 1000 standard deviations from the model's actions"),
        Some(&1),
        "{action:?}"
    );
    assert!(s.planned_vs_recorded.as_ref().unwrap().rmse.is_finite());
    assert_eq!(s.diagnostics.plan_errors, 0);
}

#[test]
fn an_old_bag_whose_metadata_prefixes_its_files_with_the_folder_replays() {
    // rosbag2 metadata before version 4 lists `folder/file.mcap`, relative to the folder's parent.
    let dir = out("old_metadata").join("recording");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("recording_0.mcap"), shipped_mcap()).unwrap();
    let listed = "rosbag2_bagfile_information:\n  version: 3\n  relative_file_paths:\n  - recording/recording_0.mcap\n";
    std::fs::write(dir.join("metadata.yaml"), listed).unwrap();
    let bag = df_planner::replay::read_bag(&dir).unwrap();
    assert_eq!((bag.storage, bag.messages.len()), ("mcap", 180));
}

/// A camera-model bag: 30 end-effector states on /ee_state and `width` x `height` rgb8 frames
/// on one camera topic, /cam, at 10 Hz.
fn one_camera_bag(name: &str, width: u32, height: u32) -> PathBuf {
    use df_planner::msgs::{to_cdr, Header, Image, JointState, Time};

    let path = out(name);
    let channels = [
        ("/ee_state", "sensor_msgs/msg/JointState"),
        ("/cam", "sensor_msgs/msg/Image"),
    ];
    let messages = (0..30u32).flat_map(|k| {
        let t = 1_000_000_000 + i64::from(k) * 100_000_000;
        let header = Header {
            stamp: Time::from_ns(t),
            frame_id: String::new(),
        };
        let joints = JointState {
            header: header.clone(),
            name: ["ee_x", "ee_y", "ee_z", "gripper"].map(String::from).into(),
            position: vec![0.3, 0.1, 0.2, 1.0],
            velocity: vec![],
            effort: vec![],
        };
        let image = Image {
            header,
            height,
            width,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: 3 * width,
            data: vec![(k * 8) as u8; (3 * width * height) as usize],
        };
        [(0, t as u64, to_cdr(&joints)), (1, t as u64, to_cdr(&image))]
    });
    common::write_mcap_bag(&path, true, &channels, messages);
    path
}

/// The fruit-swap config with both camera roles on /cam and no recorded actions.
fn one_camera_config() -> NodeConfig {
    let mut cfg = NodeConfig::load(&common::repo().join("config/fruit_swap.yaml")).unwrap();
    cfg.topics.recorded_action = None;
    cfg.camera.topics = [("front", "/cam"), ("wrist", "/cam")]
        .map(|(role, topic)| (role.to_string(), topic.to_string()))
        .into();
    cfg
}

#[test]
fn two_camera_roles_on_one_topic_both_receive_its_frames() {
    let path = one_camera_bag("one_camera.mcap", 32, 32);
    let s = run_bag(&one_camera_config(), &path, "one_camera_out.mcap").unwrap();
    assert_eq!((s.topics["/cam"].read, s.topics["/cam"].used), (30, 30));
    assert_eq!(s.diagnostics.plan_errors, 0, "{:?}", s.last_plan_error);
    assert!(s.diagnostics.plans >= 2);
}

#[test]
fn camera_images_of_another_size_are_averaged_down_or_rejected_by_size() {
    let path = one_camera_bag("vga_camera.mcap", 64, 48);
    let mut cfg = one_camera_config();
    assert_eq!(cfg.camera.resize, Resize::Area, "config/fruit_swap.yaml resizes");
    let s = run_bag(&cfg, &path, "vga_area_out.mcap").unwrap();
    assert_eq!((s.topics["/cam"].read, s.topics["/cam"].used), (30, 30));
    assert_eq!(s.diagnostics.plan_errors, 0, "{:?}", s.last_plan_error);
    assert!(s.diagnostics.plans >= 2);

    cfg.camera.resize = Resize::Exact;
    let s = run_bag(&cfg, &path, "vga_exact_out.mcap").unwrap();
    let cam = &s.topics["/cam"];
    assert_eq!(cam.used, 0);
    assert_eq!(
        cam.skipped.get("image size 64x48: expected 32x32"),
        Some(&30),
        "{cam:?}"
    );
    assert_eq!(s.diagnostics.plans, 0);
}

#[test]
fn an_mcap_lists_its_declared_channels_even_those_without_messages() {
    let path = out("channels.mcap");
    let joints = "sensor_msgs/msg/JointState";
    let channels = [("/early", joints), ("/late", joints), ("/silent", joints)];
    let messages = [0; 10].into_iter().chain([1; 10]).enumerate();
    // Unchunked, so that cutting the file leaves the channel records before the cut readable.
    common::write_mcap_bag(
        &path,
        false,
        &channels,
        messages.map(|(i, channel)| (channel, i as u64, [0u8; 64])),
    );
    let declared =
        |bag: &df_planner::replay::BagContents| -> Vec<String> { bag.topics.iter().map(|t| t.name.clone()).collect() };

    let whole = df_planner::replay::read_bag(&path).unwrap();
    assert_eq!(declared(&whole), ["/early", "/late", "/silent"]);
    // Read from the summary section, the same.
    let summary = df_planner::replay::declared_topics(&path).unwrap();
    assert_eq!(summary.topics, whole.topics);
    // A summary damaged where it still parses fails its CRC: the topics come from the data.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(7).rposition(|w| w == b"/silent").unwrap() + 6;
    bytes[at] = b'X';
    let damaged = out("channels_damaged_summary.mcap");
    std::fs::write(&damaged, &bytes).unwrap();
    assert_eq!(
        df_planner::replay::declared_topics(&damaged).unwrap().topics,
        whole.topics
    );
    // Read through, the damage lies after the data: every message, and no read error.
    let through = df_planner::replay::read_bag(&damaged).unwrap();
    assert_eq!((through.messages.len(), through.read_error), (20, None));
    assert_eq!(whole.messages.len(), 20);
    assert!(whole.read_error.is_none(), "{:?}", whole.read_error);
    assert!(whole.topics.iter().all(|t| t.type_name == "sensor_msgs/msg/JointState"));

    // Cut inside the early messages: /late has no message left, but its channel was declared.
    let bytes = std::fs::read(&path).unwrap();
    let cut = out("channels_cut.mcap");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let truncated = df_planner::replay::read_bag(&cut).unwrap();
    assert_eq!(declared(&truncated), ["/early", "/late", "/silent"]);
    // No summary left: read through.
    assert_eq!(
        df_planner::replay::declared_topics(&cut).unwrap().topics,
        truncated.topics
    );
    assert!(truncated.messages.iter().all(|m| m.topic == "/early"));
    assert!(
        (1..10).contains(&truncated.messages.len()),
        "{}",
        truncated.messages.len()
    );
    assert!(truncated.read_error.is_some());
}

#[test]
fn state_joints_read_the_state_by_name_and_a_missing_joint_is_counted() {
    // The bag's JointState names its joints joint0, joint1, as the config does: reading them by
    // name reads the same state as reading every joint in the message's order.
    let mut named = config();
    assert_eq!(named.topics.state_joints, ["joint0", "joint1"]);
    let mut plain = config();
    plain.topics.state_joints.clear();
    let plain = run(&plain, "pointmass_mcap", "joints_plain.mcap").unwrap();
    let s = run(&named, "pointmass_mcap", "joints_named.mcap").unwrap();
    assert_eq!(
        messages(&out("joints_named.mcap"), "/df_planner/action"),
        messages(&out("joints_plain.mcap"), "/df_planner/action")
    );
    assert_eq!(s.topics["/joint_states"].used, plain.topics["/joint_states"].used);

    // Another robot's joint: no state at all, every message counted, and the arm never
    // moves on a plan.
    named.topics.state_joints = vec!["joint0".into(), "wrist".into()];
    let s = run(&named, "pointmass_mcap", "joints_missing.mcap").unwrap();
    let states = &s.topics["/joint_states"];
    assert_eq!(states.used, 0);
    let (reason, count) = states.skipped.iter().next().unwrap();
    assert_eq!(*count, states.read);
    assert!(
        reason.starts_with(r#"joint "wrist" (topics.state_joints) not named exactly once among the message's names ["joint0", "joint1"]"#),
        "{reason}"
    );
    assert_eq!(s.diagnostics.plans, 0);
    assert_eq!(s.diagnostics.hold + s.diagnostics.stop, s.ticks);
}

#[test]
fn the_declared_topics_are_the_topics_a_full_read_lists() {
    for name in ["pointmass_mcap", "pointmass_sqlite3", "faults_mcap", "truncated.mcap"] {
        let all = df_planner::replay::read_bag(&bag(name)).unwrap();
        let declared = df_planner::replay::declared_topics(&bag(name)).unwrap();
        assert_eq!(declared.topics, all.topics, "{name}");
        assert_eq!(declared.storage, all.storage, "{name}");
    }
}

#[test]
fn only_the_kept_topics_messages_are_held_in_both_formats() {
    for name in ["pointmass_mcap", "pointmass_sqlite3"] {
        let all = df_planner::replay::read_bag(&bag(name)).unwrap();
        let kept = df_planner::replay::read_bag_topics(&bag(name), &|topic| topic == "/joint_states").unwrap();
        assert_eq!(kept.topics, all.topics, "{name}: every topic is listed");
        let states: Vec<_> = all.messages.iter().filter(|m| m.topic == "/joint_states").collect();
        assert_eq!(kept.messages.iter().collect::<Vec<_>>(), states, "{name}");
        assert!(states.len() < all.messages.len(), "{name}: the bag has other topics");
    }
}

#[test]
fn messages_stored_out_of_log_time_order_replay_in_order_within_the_window() {
    // The shipped bag with the state at 2 s stored 0.5 s late (a slow recorder callback) and
    // the state at 3 s stored at the end, about 3 s late.
    let whole = shipped_mcap();
    let mut all: Vec<_> = mcap::MessageStream::new(&whole).unwrap().map(Result::unwrap).collect();
    let states: Vec<usize> = (0..all.len())
        .filter(|&i| all[i].channel.topic == "/joint_states")
        .collect();
    let slightly_late = all.remove(states[20]);
    all.insert(states[20] + 15, slightly_late);
    let very_late = all.remove(states[30]);
    let very_late_ns = very_late.log_time;
    all.push(very_late);
    let path = out("reordered.mcap");
    write_mcap(&path, all);

    let s = run_bag(&config(), &path, "reordered_out.mcap").unwrap();
    assert_eq!(s.reordered_by_log_time, 2, "the two late states");
    let states = &s.topics["/joint_states"];
    assert_eq!((states.read, states.used), (60, 59), "{states:?}");
    assert_eq!(
        states
            .skipped
            .get("stored more than the 2 s reorder window after later messages"),
        Some(&1),
        "{states:?}"
    );
    // The slightly late state (2 s) replays where it belongs: the run matches the shipped
    // bag's up to the very late state's time (3 s).
    let plain = run(&config(), "pointmass_mcap", "reordered_plain.mcap").unwrap();
    assert_eq!(plain.reordered_by_log_time, 0);
    let before = |name| -> Vec<_> {
        messages(&out(name), "/df_planner/action")
            .into_iter()
            .filter(|(t, _)| *t < very_late_ns)
            .collect()
    };
    assert!(!before("reordered_out.mcap").is_empty());
    assert_eq!(before("reordered_out.mcap"), before("reordered_plain.mcap"));

    // A window wide enough for the very late state: nothing skipped, the run as the shipped
    // bag's.
    let mut cfg = config();
    cfg.model.runtime = common::cpu();
    let wide = ReplayOptions {
        reorder_window_s: 5.0,
        ..ReplayOptions::default()
    };
    let s = replay(&cfg, &path, &out("reordered_wide.mcap"), &wide).unwrap();
    assert_eq!(s.topics["/joint_states"].used, 60);
    let actions = |name| messages(&out(name), "/df_planner/action");
    assert_eq!(actions("reordered_wide.mcap"), actions("reordered_plain.mcap"));
}

/// The shipped MCAP bag at `name` (in the output folder) with each topic renamed by `rename`,
/// as a robot whose launch named its topics otherwise records it.
fn shipped_bag_renamed(name: &str, rename: impl Fn(&str) -> String) -> PathBuf {
    let bytes = shipped_mcap();
    let renamed: Vec<_> = mcap::MessageStream::new(&bytes)
        .unwrap()
        .map(|m| {
            let mut m = m.unwrap();
            let mut channel = (*m.channel).clone();
            channel.topic = rename(&channel.topic);
            m.channel = std::sync::Arc::new(channel);
            m
        })
        .collect();
    let path = out(name);
    write_mcap(&path, renamed);
    path
}

/// Replays `path` with `options` into `out_name`: the actions it writes on `action_topic` must
/// be those the shipped bag's root replay writes on /df_planner/action, and plans must be on
/// `plan_topic`.
fn assert_replays_as_the_root_replay(
    cfg: &NodeConfig,
    path: &Path,
    options: &ReplayOptions,
    out_name: &str,
    [action_topic, plan_topic]: [&str; 2],
) -> ReplaySummary {
    let s = replay(cfg, path, &out(out_name), options).unwrap();
    let root_name = format!("{out_name}.root.mcap");
    run(&config(), "pointmass_mcap", &root_name).unwrap();
    let actions = messages(&out(out_name), action_topic);
    assert!(!actions.is_empty());
    assert_eq!(actions, messages(&out(&root_name), "/df_planner/action"));
    assert!(!messages(&out(out_name), plan_topic).is_empty());
    s
}

#[test]
fn relative_and_private_topics_resolve_in_the_recorded_namespace() {
    // The shipped bag as a robot in /arm1 records it; the config names the inputs relative to
    // the node and the outputs privately (~/action, the default).
    let path = shipped_bag_renamed("arm1.mcap", |topic| format!("/arm1{topic}"));
    let mut cfg = config();
    cfg.model.runtime = common::cpu();
    (cfg.topics.state, cfg.topics.image) = ("joint_states".into(), "camera/image_raw".into());
    cfg.topics.recorded_action = Some("action".into());
    assert_eq!(
        (cfg.topics.action.as_str(), cfg.topics.plan.as_str()),
        ("~/action", "~/plan")
    );
    let in_arm1 = ReplayOptions {
        namespace: "/arm1".into(),
        ..ReplayOptions::default()
    };
    let topics = ["/arm1/df_planner/action", "/arm1/df_planner/plan"];
    let s = assert_replays_as_the_root_replay(&cfg, &path, &in_arm1, "arm1_out.mcap", topics);
    assert_eq!(s.topics["/arm1/joint_states"].used, 60);
    // In the root namespace the same config looks for /joint_states, which this bag lacks.
    let err = run_bag(&cfg, &path, "arm1_root.mcap").unwrap_err().to_string();
    assert!(
        err.starts_with("config topics.state = \"/joint_states\": not in the bag"),
        "{err}"
    );
}

#[test]
fn a_node_renamed_and_remapped_by_its_launch_is_replayed_under_its_names() {
    // The shipped bag as a node named `planner` records it, its launch having remapped the
    // state onto the arm's topic and the action elsewhere.
    let path = shipped_bag_renamed("remapped.mcap", |topic| match topic {
        "/joint_states" => "/arm/joint_states".into(),
        other => other.into(),
    });
    let mut cfg = config();
    cfg.model.runtime = common::cpu();
    let launched = ReplayOptions {
        node_name: "planner".into(),
        remaps: ["/joint_states:=/arm/joint_states", "~/action:=/arm/command"]
            .map(String::from)
            .to_vec(),
        ..ReplayOptions::default()
    };
    let topics = ["/arm/command", "/planner/plan"];
    let s = assert_replays_as_the_root_replay(&cfg, &path, &launched, "remapped_out.mcap", topics);
    assert_eq!(s.topics["/arm/joint_states"].used, 60);
    // Without the remaps the state is looked for where the config names it.
    let err = run_bag(&cfg, &path, "remapped_plain.mcap").unwrap_err().to_string();
    assert!(
        err.contains("\"/joint_states\": not in the bag") && err.ends_with("--remap"),
        "{err}"
    );
}

#[test]
fn replay_options_out_of_range_are_named() {
    let mut cfg = config();
    cfg.model.runtime = common::cpu();
    for (options, expected) in [
        (
            ReplayOptions {
                rate: Some(0.0),
                ..ReplayOptions::default()
            },
            "rate: expected a number >= 0.001, got 0.0",
        ),
        (
            ReplayOptions {
                rate: Some(1e-300),
                ..ReplayOptions::default()
            },
            "rate: expected a number >= 0.001, got 1e-300",
        ),
        (
            ReplayOptions {
                reorder_window_s: -1.0,
                ..ReplayOptions::default()
            },
            "reorder window: expected seconds from 0 to 86400, got -1.0",
        ),
        (
            ReplayOptions {
                namespace: "/arm-1".into(),
                ..ReplayOptions::default()
            },
            "namespace \"/arm-1\": expected a ROS 2 namespace such as / or /arm1 (character '-': a name has only letters, digits, '_', '/' and a leading '~')",
        ),
        (
            ReplayOptions {
                remaps: vec!["/joint_states=/arm/joint_states".into()],
                ..ReplayOptions::default()
            },
            "remap \"/joint_states=/arm/joint_states\": expected FROM:=TO (a topic name on each side)",
        ),
    ] {
        let err = replay(&cfg, &bag("pointmass_mcap"), &out("options.mcap"), &options).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
}

#[test]
fn a_folder_holding_two_recordings_and_no_metadata_is_refused() {
    let dir = out("two_recordings");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("morning_0.mcap"), shipped_mcap()).unwrap();
    std::fs::write(dir.join("evening_0.mcap"), shipped_mcap()).unwrap();
    let err = run_bag(&config(), &dir, "two_recordings.mcap").unwrap_err().to_string();
    assert!(
        err.contains("holds the files of 2 recordings (evening, morning) and no metadata.yaml"),
        "{err}"
    );
    // metadata.yaml says which files are the bag.
    let listed = "rosbag2_bagfile_information:\n  version: 5\n  relative_file_paths:\n  - morning_0.mcap\n";
    std::fs::write(dir.join("metadata.yaml"), listed).unwrap();
    let s = run_bag(&config(), &dir, "two_recordings.mcap").unwrap();
    assert_eq!(s.topics["/joint_states"].read, 60);
}

#[test]
fn a_bag_without_input_messages_fails_and_leaves_no_output() {
    // Every configured topic declared, none with a message.
    let path = out("declared_only.mcap");
    let channels = [
        ("/joint_states", "sensor_msgs/msg/JointState"),
        ("/camera/image_raw", "sensor_msgs/msg/Image"),
        ("/action", "std_msgs/msg/Float64MultiArray"),
    ];
    common::write_mcap_bag(&path, true, &channels, std::iter::empty::<(usize, u64, Vec<u8>)>());
    let err = run_bag(&config(), &path, "declared_only_out.mcap").unwrap_err();
    assert!(matches!(err, ReplayError::Empty { .. }), "{err}");
    assert!(
        !out("declared_only_out.mcap").exists(),
        "a failed replay leaves no output"
    );
    assert!(!out("declared_only_out.mcap.partial").exists());
    // A previous output stays as it was.
    std::fs::write(out("declared_only_out.mcap"), b"an earlier replay").unwrap();
    run_bag(&config(), &path, "declared_only_out.mcap").unwrap_err();
    assert_eq!(
        std::fs::read(out("declared_only_out.mcap")).unwrap(),
        b"an earlier replay"
    );
}

#[test]
fn an_output_inside_the_bag_is_refused() {
    let dir = out("output_inside");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("recording_0.mcap"), shipped_mcap()).unwrap();
    let mut cfg = config();
    cfg.model.runtime = common::cpu();
    for target in [dir.join("replayed.mcap"), dir.join("recording_0.mcap")] {
        let bag = if target.ends_with("recording_0.mcap") {
            target.clone()
        } else {
            dir.clone()
        };
        let err = replay(&cfg, &bag, &target, &ReplayOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("inside the bag"), "{err}");
    }
    assert!(!dir.join("replayed.mcap").exists());
    assert_eq!(std::fs::read(dir.join("recording_0.mcap")).unwrap(), shipped_mcap());
    assert!(replay(&cfg, &dir, &out("output_outside.mcap"), &ReplayOptions::default()).is_ok());
    // An output that links to the bag replaces the link, not the bag.
    let link = out("link_to_the_bag.mcap");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir.join("recording_0.mcap"), &link).unwrap();
    assert!(replay(&cfg, &dir, &link, &ReplayOptions::default()).is_ok());
    assert_eq!(std::fs::read(dir.join("recording_0.mcap")).unwrap(), shipped_mcap());
    assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
}

#[test]
fn replay_plans_toward_the_configs_goal_target_as_the_node_does() {
    use common::goal_reward as goal;

    let actions = |name| messages(&out(name), "/df_planner/action");
    let mut cfg = config();
    cfg.planner.guidance_scale = 30.0;
    run(&cfg, "pointmass_mcap", "goal_absent.mcap").unwrap();
    // A goal reward without a target is no guidance, as no goal reward is.
    cfg.planner.goal = Some(goal(None));
    run(&cfg, "pointmass_mcap", "goal_none.mcap").unwrap();
    assert_eq!(actions("goal_none.mcap"), actions("goal_absent.mcap"));
    // Each target steers the plans its own way.
    for (name, target) in [("goal_a.mcap", [1.0, -1.0]), ("goal_b.mcap", [-1.0, 1.0])] {
        cfg.planner.goal = Some(goal(Some(target)));
        let s = run(&cfg, "pointmass_mcap", name).unwrap();
        assert_eq!(s.diagnostics.plan_errors, 0);
        assert_ne!(
            actions(name),
            actions("goal_none.mcap"),
            "{name}: the target steers the plans"
        );
    }
    assert_ne!(
        actions("goal_a.mcap"),
        actions("goal_b.mcap"),
        "another target, other plans"
    );
    // At scale 0 the target changes nothing.
    cfg.planner.guidance_scale = 0.0;
    run(&cfg, "pointmass_mcap", "goal_unscaled.mcap").unwrap();
    cfg.planner.goal = None;
    run(&cfg, "pointmass_mcap", "goal_absent_unscaled.mcap").unwrap();
    assert_eq!(actions("goal_unscaled.mcap"), actions("goal_absent_unscaled.mcap"));

    cfg.planner.guidance_scale = 30.0;
    cfg.planner.goal = Some(goal(Some([f64::NAN, 0.0])));
    let err = run(&cfg, "pointmass_mcap", "goal_nan.mcap").unwrap_err().to_string();
    assert_eq!(err, "planner.goal.target [NaN, 0.0]: expected two finite numbers");
    cfg.serve = Some(df_planner::serve::ServeSection {
        goal_bounds: Some([[0.0, 0.0], [2.0, 2.0]]),
        ..Default::default()
    });
    cfg.planner.goal = Some(goal(Some([3.0, 1.0])));
    let err = run(&cfg, "pointmass_mcap", "goal_out.mcap").unwrap_err().to_string();
    assert!(
        err.starts_with("planner.goal.target [3.0, 1.0]: outside the workspace"),
        "{err}"
    );
    // The goal reward is checked even without a target, as serve checks it.
    let mut bad = goal(None);
    bad.position_dims = [0, 9];
    cfg.planner.goal = Some(bad);
    let err = run(&cfg, "pointmass_mcap", "goal_dims.mcap").unwrap_err().to_string();
    assert!(
        err.starts_with("planner.goal.position_dims: expected indices < observation_dim"),
        "{err}"
    );
}

/// The shipped MCAP bag with goals (seconds after its first message, x, y, frame id) on
/// /goal_pose, written to `name`; returns its path and its first log time.
fn shipped_with_goals(name: &str, goals: &[(f64, [f64; 2], &str)]) -> (PathBuf, u64) {
    use df_planner::msgs::{to_cdr, Header, Point, Pose, PoseStamped, Quaternion};

    let whole = shipped_mcap();
    let all: Vec<_> = mcap::MessageStream::new(&whole).unwrap().map(Result::unwrap).collect();
    let mut channels: Vec<(String, String)> = Vec::new();
    let mut messages: Vec<(usize, u64, Vec<u8>)> = Vec::new();
    for m in &all {
        let key = (m.channel.topic.clone(), m.channel.schema.as_ref().unwrap().name.clone());
        let channel = channels.iter().position(|c| *c == key).unwrap_or_else(|| {
            channels.push(key);
            channels.len() - 1
        });
        messages.push((channel, m.log_time, m.data.to_vec()));
    }
    let start = all.iter().map(|m| m.log_time).min().unwrap();
    channels.push(("/goal_pose".into(), "geometry_msgs/msg/PoseStamped".into()));
    for &(at_s, [x, y], frame_id) in goals {
        let pose = PoseStamped {
            header: Header {
                frame_id: frame_id.into(),
                ..Default::default()
            },
            pose: Pose {
                position: Point { x, y, z: 0.0 },
                orientation: Quaternion {
                    x: 0.0,
                    y: 0.0,
                    z: 0.0,
                    w: 1.0,
                },
            },
        };
        messages.push((channels.len() - 1, start + (at_s * 1e9) as u64, to_cdr(&pose)));
    }
    messages.sort_by_key(|m| m.1);
    let path = out(name);
    let channels: Vec<(&str, &str)> = channels.iter().map(|(t, ty)| (t.as_str(), ty.as_str())).collect();
    common::write_mcap_bag(&path, true, &channels, messages);
    (path, start)
}

#[test]
fn goal_messages_in_the_bag_move_the_goal_from_their_time_and_refused_ones_change_nothing() {
    use df_planner::planner::GoalStatus;

    // Goals on /goal_pose in frame map, within [-2, 2]².
    let cfg = NodeConfig::load(&common::repo().join("config/pointmass_goals.yaml")).unwrap();
    let actions = |name| messages(&out(name), "/df_planner/action");
    let split = |name, at: u64| -> (Vec<_>, Vec<_>) { actions(name).into_iter().partition(|(t, _)| *t < at) };
    // No goal message (the bag has no goal topic): unguided, as without a target.
    run(&cfg, "pointmass_mcap", "goals_none.mcap").unwrap();

    let a = [1.0, -1.0];
    let (bag, start) = shipped_with_goals("goals_a_bag.mcap", &[(1.0, a, "")]);
    let s = run_bag(&cfg, &bag, "goals_a.mcap").unwrap();
    assert_eq!(s.topics["/goal_pose"].used, 1);
    let at_a = start + 1_000_000_000;
    let (before, after) = split("goals_a.mcap", at_a);
    let (unguided_before, unguided_after) = split("goals_none.mcap", at_a);
    assert_eq!(before, unguided_before, "unguided until the goal's time");
    assert_ne!(after, unguided_after, "toward the goal after it");

    // Goals the node refuses (outside serve.goal_bounds, in another frame) after it: the run
    // is the one with the first goal alone, and the diagnostics count them.
    let (bag, _) = shipped_with_goals(
        "goals_refused_bag.mcap",
        &[(1.0, a, "map"), (2.0, [3.0, 0.0], ""), (2.5, [-1.0, 1.0], "odom")],
    );
    let s = run_bag(&cfg, &bag, "goals_refused.mcap").unwrap();
    assert_eq!(actions("goals_refused.mcap"), actions("goals_a.mcap"));
    let goals = &s.topics["/goal_pose"];
    assert_eq!((goals.read, goals.used), (3, 1), "{goals:?}");
    let reasons: Vec<&String> = goals.skipped.keys().collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("[3.0, 0.0]: outside the workspace")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("frame_id \"odom\": expected \"map\" (topics.goal.frame_id) or empty")),
        "{reasons:?}"
    );
    let status = s.diagnostics.goal.unwrap();
    assert_eq!(
        status,
        GoalStatus {
            target: Some(a),
            guided: true,
            received: 3,
            rejected: 2,
            dropped: 0,
            distance: status.distance,
            reached: Some(false), // the recorded robot does not come within 0.25 of [1, -1] after 1 s
        }
    );
    // And so does the output's last /diagnostics message, as the node publishes it.
    let (_, last) = messages(&out("goals_refused.mcap"), "/diagnostics").pop().unwrap();
    let array = df_planner::msgs::from_cdr::<df_planner::msgs::DiagnosticArray>(&last).unwrap();
    let value = |key: &str| {
        let kv = array.status[0].values.iter().find(|kv| kv.key == key);
        kv.map(|kv| kv.value.clone())
    };
    assert_eq!(value("goal").as_deref(), Some("1, -1"));
    assert_eq!(value("goals_received").as_deref(), Some("3"));
    assert_eq!(value("goals_rejected").as_deref(), Some("2"));
    // The distance to the goal from the state of the last step: the bag's last state or the
    // one before it (steps run strictly before the last message's time).
    let d: f64 = value("goal_distance").unwrap().parse().unwrap();
    let from_state = |(_, bytes): &(u64, Vec<u8>)| {
        let js = df_planner::msgs::from_cdr::<df_planner::msgs::JointState>(bytes).unwrap();
        (js.position[0] - a[0]).hypot(js.position[1] - a[1])
    };
    let states = messages(&bag, "/joint_states");
    let last_two: Vec<f64> = states[states.len() - 2..].iter().map(from_state).collect();
    assert!(last_two.iter().any(|e| (d - e).abs() < 1e-4), "{d} vs {last_two:?}");
    assert!((d - status.distance.unwrap()).abs() < 1e-4, "{d} {status:?}");

    // A second goal re-aims the plans from its time on.
    let (bag, _) = shipped_with_goals("goals_ab_bag.mcap", &[(1.0, a, ""), (3.0, [-1.0, 1.0], "")]);
    run_bag(&cfg, &bag, "goals_ab.mcap").unwrap();
    let at_b = start + 3_000_000_000;
    let (before, after) = split("goals_ab.mcap", at_b);
    let (a_before, a_after) = split("goals_a.mcap", at_b);
    assert_eq!(before, a_before);
    assert_ne!(after, a_after);
}

#[test]
fn a_goal_the_recorded_robot_passes_within_reached_within_is_reported_reached() {
    let cfg = NodeConfig::load(&common::repo().join("config/pointmass_goals.yaml")).unwrap();
    assert_eq!(cfg.planner.goal.as_ref().unwrap().reached_within, Some(0.25));
    // The goal (sent at 1 s) is where the recorded robot is three quarters through the bag.
    let states = messages(&bag("pointmass_mcap").join("pointmass_mcap.mcap"), "/joint_states");
    let (at, bytes) = &states[3 * states.len() / 4];
    let js = df_planner::msgs::from_cdr::<df_planner::msgs::JointState>(bytes).unwrap();
    let passed = [js.position[0], js.position[1]];
    let (bag, start) = shipped_with_goals("goal_passed_bag.mcap", &[(1.0, passed, "")]);
    assert!(
        *at > start + 1_500_000_000,
        "the robot passes the goal after it is sent"
    );
    let s = run_bag(&cfg, &bag, "goal_passed.mcap").unwrap();
    let status = s.diagnostics.goal.unwrap();
    assert_eq!(
        (status.target, status.reached),
        (Some(passed), Some(true)),
        "{status:?}"
    );
    let (_, last) = messages(&out("goal_passed.mcap"), "/diagnostics").pop().unwrap();
    let array = df_planner::msgs::from_cdr::<df_planner::msgs::DiagnosticArray>(&last).unwrap();
    let reached = array.status[0].values.iter().find(|kv| kv.key == "goal_reached");
    assert_eq!(reached.map(|kv| kv.value.as_str()), Some("true"));
    // The shipped goals end at [-1, 1]: the recorded robot does not come within 0.25 of it.
    let s = run(&cfg, "goals_mcap", "goals_not_reached.mcap").unwrap();
    assert_eq!(s.diagnostics.goal.unwrap().reached, Some(false));
}

#[test]
fn the_shipped_goals_bag_replays_with_the_shipped_goals_config() {
    use df_planner::planner::GoalStatus;

    let cfg = NodeConfig::load(&common::repo().join("config/pointmass_goals.yaml")).unwrap();
    let s = run(&cfg, "goals_mcap", "goals_shipped.mcap").unwrap();
    let goals = &s.topics["/goal_pose"];
    assert_eq!((goals.read, goals.used), (4, 2), "{goals:?}");
    let status = s.diagnostics.goal.unwrap();
    assert_eq!(
        status,
        GoalStatus {
            target: Some([-1.0, 1.0]),
            guided: true,
            received: 4,
            rejected: 2,
            dropped: 0,
            distance: status.distance,
            reached: Some(false), // as in the test above
        }
    );
    // The same episode without the goals: the plans were unguided until the first (at 1 s).
    let plain = run(&cfg, "pointmass_mcap", "goals_shipped_plain.mcap").unwrap();
    assert!(plain.diagnostics.goal.unwrap().target.is_none());
    let actions = |name| messages(&out(name), "/df_planner/action");
    assert_ne!(actions("goals_shipped.mcap"), actions("goals_shipped_plain.mcap"));
}

#[test]
fn mangled_messages_are_skipped_and_counted_and_the_rest_replays() {
    // One message in four of the shipped bag cut short, emptied or with a byte made 0xff.
    let bytes = shipped_mcap();
    let mut draws = common::Draws(11);
    let mut mangled = 0;
    let messages_in: Vec<_> = mcap::MessageStream::new(&bytes)
        .unwrap()
        .map(|m| {
            let mut m = m.unwrap();
            if draws.pick(4) == 0 && !m.data.is_empty() {
                mangled += 1;
                let mut data = m.data.into_owned();
                let at = draws.pick(data.len());
                match draws.pick(3) {
                    0 => data.truncate(at),
                    1 => data.clear(),
                    _ => data[at] = 0xff,
                }
                m.data = data.into();
            }
            m
        })
        .collect();
    let path = out("mangled.mcap");
    write_mcap(&path, messages_in);
    let mut cfg = config();
    cfg.model.runtime = common::cpu();
    let s = replay(&cfg, &path, &out("mangled_out.mcap"), &ReplayOptions::default()).unwrap();
    let mut skipped = 0;
    for (topic, c) in &s.topics {
        let n: u64 = c.skipped.values().sum();
        assert_eq!(c.read, c.used + n, "{topic}: every message accounted for: {c:?}");
        skipped += n;
    }
    println!("{mangled} mangled, {skipped} skipped: {:?}", s.topics);
    assert!(
        skipped > mangled / 2 && skipped <= mangled,
        "{skipped} skipped of {mangled} mangled"
    );
    // What the node published is what it may: finite actions within the limits.
    let actions = messages(&out("mangled_out.mcap"), "/df_planner/action");
    assert!(actions.len() > 100, "{} actions", actions.len());
    for (_, data) in actions {
        let a: df_planner::msgs::Float64MultiArray = df_planner::msgs::from_cdr(&data).unwrap();
        assert!(common::finite_within_limits(&a.data, &cfg.safety), "{:?}", a.data);
    }
}
