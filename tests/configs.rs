//! Every shipped config parses, and its planner builds against the model it names: a config
//! whose horizon, goal dims or camera roles do not fit its model fails here, not on the arm.

mod common;

use std::path::Path;

use df_planner::config::NodeConfig;

#[test]
fn every_shipped_config_builds_its_planner() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(common::repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let mut cfg = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.model.runtime = common::cpu();
        df_planner::node::planner(&cfg).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
}

#[test]
fn state_joints_must_be_distinct_and_fit_the_model() {
    let path = common::repo().join("config/pointmass.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let shipped = "state_joints: [joint0, joint1]";
    assert!(text.contains(shipped));
    let with_joints =
        |joints: &str| NodeConfig::parse(&text.replace(shipped, &format!("state_joints: {joints}")), &path);
    for (joints, problem) in [
        (
            "[a, b, a]",
            "expected distinct, non-empty joint names, got \"a\" at index 2",
        ),
        (
            "[a, '']",
            "expected distinct, non-empty joint names, got \"\" at index 1",
        ),
        (
            "[j0, j1, j2, j3, j4, j5, j6, j7, j8, j9, j10, j11, j12, j13, j14, j15, j16]",
            "expected at most 16 names, got 17",
        ),
    ] {
        let e = with_joints(joints).unwrap_err().to_string();
        assert!(e.ends_with(&format!("`topics.state_joints`: {problem}")), "{e}");
    }
    // The point mass observes 4 values: 4 positions, or 2 positions and their velocities.
    for (joints, fits) in [("[x, y]", true), ("[x, y, vx, vy]", true), ("[x, y, z]", false)] {
        let mut cfg = with_joints(joints).unwrap();
        cfg.model.runtime = common::cpu();
        match df_planner::node::planner(&cfg) {
            Ok(_) => assert!(fits, "{joints} was accepted"),
            Err(e) => assert_eq!(
                (fits, e.to_string()),
                (false, "topics.state_joints: expected 4 or 2 names (the model's observation_dim 4: positions, or positions then velocities), got 3".into())
            ),
        }
    }
}

#[test]
fn measured_action_names_one_state_position_per_action() {
    let path = common::repo().join("config/pointmass.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let with = |measured: &str| {
        let yaml = text.replace(
            "  fallback: hold",
            &format!("  fallback: hold\n  measured_action: {measured}"),
        );
        NodeConfig::parse(&yaml, &path)
    };
    let unnamed = text
        .replace("state_joints: [joint0, joint1]", "state_joints: []")
        .replace("  fallback: hold", "  fallback: hold\n  measured_action: [0, 1]");
    let e = NodeConfig::parse(&unnamed, &path).unwrap_err().to_string();
    assert!(
        e.ends_with("`control.measured_action`: expected topics.state_joints naming the joints it indexes, got no topics.state_joints"),
        "{e}"
    );
    let e = with("[0]").unwrap_err().to_string();
    assert!(
        e.ends_with("`control.measured_action`: expected [] (actions are not positions) or 2 state indices, one per action dimension, got 1 indices"),
        "{e}"
    );
    // Position outputs: without measured_action a hold would command stop_action, wherever
    // the arm is.
    for output in ["joint_trajectory\n  joint_names: [j0, j1]", "pose_stamped"] {
        let yaml = text.replace("action_type: float64_multi_array", &format!("action_type: {output}"));
        let e = NodeConfig::parse(&yaml, &path).unwrap_err().to_string();
        assert!(
            e.ends_with("`control.measured_action`: expected the state indices the actions are positions of: joint_trajectory and pose_stamped outputs are position targets, got []"),
            "{e}"
        );
        let measured = yaml.replace("  fallback: hold", "  fallback: hold\n  measured_action: [0, 1]");
        NodeConfig::parse(&measured, &path).unwrap();
    }
    // state_joints lists 2 joints: positions 0 and 1.
    for (measured, fits) in [("[1, 0]", true), ("[0, 2]", false)] {
        let mut cfg = with(measured).unwrap();
        cfg.model.runtime = common::cpu();
        match df_planner::node::planner(&cfg) {
            Ok(_) => assert!(fits, "{measured} was accepted"),
            Err(e) => assert_eq!(
                (fits, e.to_string()),
                (
                    false,
                    "control.measured_action: expected indices below 2 (the state's positions), got 2".into()
                )
            ),
        }
    }
}

#[test]
fn a_pose_output_refuses_an_action_it_would_cut_short() {
    // Fruit swap's [x, y, z, gripper]: a pose would drop the gripper.
    let path = common::repo().join("config/fruit_swap.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let yaml = text.replace("action_type: float64_multi_array", "action_type: pose_stamped");
    let e = NodeConfig::parse(&yaml, &path).unwrap_err().to_string();
    assert!(
        e.ends_with("`topics.action_type`: expected float64_multi_array or joint_trajectory for an action of more than 3 dimensions: a pose carries x, y, z only, got pose_stamped for 4 dimensions"),
        "{e}"
    );
}

#[test]
fn model_and_matrix_problems_name_the_config_field() {
    let path = common::repo().join("config/pointmass.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let planner_err = |yaml: &str, at: &Path| {
        let mut cfg = NodeConfig::parse(yaml, at).unwrap();
        cfg.model.runtime = common::cpu();
        if cfg.model.path.is_relative() {
            cfg.model.path = at.parent().unwrap().parent().unwrap().join(&cfg.model.path);
        }
        df_planner::node::planner(&cfg).err().expect("refused").to_string()
    };
    let e = planner_err(&text.replace("sampling_steps: 10", "sampling_steps: 0"), &path);
    assert_eq!(e, "planner.sampling_steps: expected >= 1, got 0");
    // A copy kept elsewhere finds no model from its folder's parent, and says where it looked.
    let elsewhere = std::env::temp_dir().join("df_planner_copy").join("copy.yaml");
    let e = planner_err(&text, &elsewhere);
    assert!(
        e.starts_with("model.path: expected an ONNX model; a relative model.path starts at the config folder's parent")
            && e.ends_with("onnx/models/pointmass.onnx (not found)"),
        "{e}"
    );
}

/// Writes `files` (path, text) into a fresh folder of their own and loads the first.
fn load_written(test: &str, files: &[(&str, &str)]) -> Result<NodeConfig, df_planner::config::ConfigError> {
    let dir = std::env::temp_dir().join(format!("df_planner_configs_{test}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    NodeConfig::load(&dir.join(files[0].0))
}

#[test]
fn a_config_laid_over_its_bases_merges_mappings_and_replaces_the_rest() {
    let shipped = std::fs::read_to_string(common::repo().join("config/pointmass.yaml")).unwrap();
    // Over two bases: a nested scalar, a list shorter than the base's, and a mapping's new key.
    let middle = "base: base.yaml\nplanner:\n  guidance_scale: 3.5\n  samples: 4\n";
    let top = "base: middle.yaml\nplanner:\n  samples: 8\n\
               model:\n  runtime:\n    providers: [cpu]\ntopics:\n  joint_names: [a, b]\n";
    let files = [
        ("top.yaml", top),
        ("middle.yaml", middle),
        ("base.yaml", shipped.as_str()),
    ];
    let derived = load_written("merge", &files).unwrap();
    let mut expected = load_written("merge", &files[2..]).unwrap();
    expected.planner.guidance_scale = 3.5;
    expected.planner.samples = 8;
    expected.model.runtime.providers = vec![df_planner::model::Provider::Cpu];
    expected.topics.joint_names = vec!["a".into(), "b".into()];
    assert_ne!(derived, load_written("merge", &files[2..]).unwrap());
    assert_eq!(derived, expected);
}

#[test]
fn a_bad_base_is_refused_naming_it() {
    let shipped = std::fs::read_to_string(common::repo().join("config/pointmass.yaml")).unwrap();
    let error = |test, files: &[(&str, &str)]| load_written(test, files).unwrap_err().to_string();
    let e = error("missing", &[("a.yaml", "base: nowhere.yaml\n")]);
    assert!(e.contains("field `base`: ") && e.contains("nowhere.yaml"), "{e}");
    let e = error("cycle", &[("a.yaml", "base: b.yaml\n"), ("b.yaml", "base: a.yaml\n")]);
    assert!(e.contains("field `base`: ") && e.ends_with("a cycle"), "{e}");
    let e = error("not_a_path", &[("a.yaml", "base: [b.yaml]\n")]);
    assert!(e.contains("field `base`: expected the path of another config"), "{e}");
    // Not YAML over a base: the syntax error and where, not `base` as an unknown field.
    let e = error(
        "unclosed",
        &[
            ("a.yaml", "base: b.yaml\nplanner: {samples: 2\n"),
            ("b.yaml", shipped.as_str()),
        ],
    );
    assert!(e.ends_with("a.yaml: did not find expected ',' or '}' at line 3 column 1, while parsing a flow mapping at line 2 column 10"), "{e}");
    // A typo over a base is still an unknown field, named.
    let e = error(
        "typo",
        &[
            ("a.yaml", "base: b.yaml\nplanner:\n  guidance_scal: 3.0\n"),
            ("b.yaml", &shipped),
        ],
    );
    assert!(
        e.contains("field `planner.guidance_scal`: unknown field `guidance_scal`"),
        "{e}"
    );
    assert!(e.ends_with("a.yaml line 3)"), "the typo's own line: {e}");
    // A bad value in the base is pointed at there, unless a config above it sets the field.
    let bad_base = shipped.replace("rate_hz: 50", "rate_hz: fast");
    let line = bad_base.lines().position(|l| l.contains("rate_hz: fast")).unwrap() + 1;
    let e = error("bad_in_base", &[("a.yaml", "base: b.yaml\n"), ("b.yaml", &bad_base)]);
    assert!(
        e.contains("field `control.rate_hz`: invalid type") && e.ends_with(&format!("b.yaml line {line})")),
        "{e}"
    );
    let e = error(
        "bad_above_base",
        &[
            ("a.yaml", "base: b.yaml\ncontrol:\n  rate_hz: slow\n"),
            ("b.yaml", &shipped),
        ],
    );
    assert!(e.ends_with("a.yaml line 3)"), "{e}");
    // A mapping merges key by key: a bad value inside it may be in any config that sets it.
    let bad_base = shipped.replace("uncertainty: 1.0}", "uncertainty: high}");
    assert_ne!(bad_base, shipped);
    let line = bad_base.lines().position(|l| l.contains("uncertainty: high")).unwrap() + 1;
    let e = error(
        "bad_in_merged_mapping",
        &[
            ("a.yaml", "base: b.yaml\nplanner:\n  matrix: {kind: pyramid}\n"),
            ("b.yaml", &bad_base),
        ],
    );
    assert!(e.contains("field `planner.matrix`"), "{e}");
    assert!(
        e.contains("a.yaml line 3, merged over ") && e.ends_with(&format!("b.yaml line {line})")),
        "{e}"
    );
    // A config given as text (not read from its path) is pointed at in that text.
    let base = common::repo().join("config/pointmass.yaml");
    let text = format!("base: {}\nplanner:\n  sead: 1\n", base.display());
    let e = NodeConfig::parse(&text, &std::env::temp_dir().join("df_planner_not_on_disk.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("df_planner_not_on_disk.yaml line 3)"), "{e}");
}

#[test]
fn a_yaml_merge_key_is_refused_pointing_at_base() {
    let shipped = std::fs::read_to_string(common::repo().join("config/pointmass.yaml")).unwrap();
    let merged = shipped.replacen("planner:\n", "planner:\n  <<: {samples: 4}\n", 1);
    assert_ne!(merged, shipped);
    let e = load_written("merge_key", &[("a.yaml", &merged)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("field `planner.<<`: unknown field `<<`")
            && e.ends_with("YAML merge keys are not applied, a config can start from another with `base: other.yaml`"),
        "{e}"
    );
}

#[test]
fn a_relative_model_path_is_found_from_the_package_whatever_the_config_path_looks_like() {
    // A package written under the target folder, loaded by paths relative to the working
    // directory (the crate root under cargo test), one through `..` and one over a base.
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let relative = tmp
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .expect("target under the crate");
    let pkg = relative.join(format!("relative_paths_{}", std::process::id()));
    let shipped = std::fs::read_to_string(common::repo().join("config/pointmass.yaml")).unwrap();
    std::fs::create_dir_all(pkg.join("config/robots")).unwrap();
    std::fs::write(pkg.join("config/pointmass.yaml"), &shipped).unwrap();
    std::fs::write(
        pkg.join("config/robots/arm.yaml"),
        "base: ../pointmass.yaml
",
    )
    .unwrap();
    std::fs::write(
        pkg.join("config/child.yaml"),
        "base: pointmass.yaml
",
    )
    .unwrap();
    let expected = pkg.canonicalize().unwrap().join("onnx/models/pointmass.onnx");
    for config in [
        "config/child.yaml",
        "config/robots/arm.yaml",
        "config/robots/../pointmass.yaml",
    ] {
        let cfg = NodeConfig::load(&pkg.join(config)).unwrap();
        assert_eq!(cfg.model.path, expected, "{config}");
    }
}

#[test]
fn in_a_colcon_install_the_models_are_found_where_cargo_ament_build_puts_them() {
    // cargo-ament-build installs `onnx/models` as `share/df_planner/models`; the configs say
    // `onnx/models/...`. A user's config over an installed one finds them too.
    let share = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("install_{}/share/df_planner", std::process::id()));
    std::fs::create_dir_all(share.join("config")).unwrap();
    std::fs::create_dir_all(share.join("models")).unwrap();
    std::fs::copy(
        common::repo().join("config/pointmass.yaml"),
        share.join("config/pointmass.yaml"),
    )
    .unwrap();
    std::fs::write(share.join("models/pointmass.onnx"), b"").unwrap();
    let mine = share.parent().unwrap().join("mine.yaml");
    std::fs::write(&mine, "base: df_planner/config/pointmass.yaml\n").unwrap();
    let expected = share.canonicalize().unwrap().join("models/pointmass.onnx");
    for config in [share.join("config/pointmass.yaml"), mine] {
        assert_eq!(
            NodeConfig::load(&config).unwrap().model.path,
            expected,
            "{}",
            config.display()
        );
    }
}

#[test]
fn a_changed_variant_replaces_the_bases_and_a_bases_model_path_stays_its_own() {
    let shipped = std::fs::read_to_string(common::repo().join("config/pointmass.yaml")).unwrap();
    // The base's pyramid has an uncertainty; a trapezoid over it must give its own.
    let files = [
        (
            "mine.yaml",
            "base: pkg/config/pointmass.yaml\nplanner:\n  matrix: {kind: trapezoid}\n",
        ),
        ("pkg/config/pointmass.yaml", shipped.as_str()),
    ];
    let e = load_written("variant", &files).unwrap_err().to_string();
    assert!(e.contains("field `planner.matrix`: missing field `uncertainty`"), "{e}");
    let mine = "base: pkg/config/pointmass.yaml\nplanner:\n  matrix: {kind: trapezoid, uncertainty: 2.0}\n";
    let cfg = load_written("variant", &[("mine.yaml", mine), files[1]]).unwrap();
    assert_eq!(
        cfg.planner.matrix,
        df_planner::diffusion::MatrixKind::Trapezoid { uncertainty: 2.0 }
    );
    // onnx/models/pointmass.onnx from pkg/config/'s package root, pkg/, not from mine.yaml's.
    assert!(
        cfg.model.path.ends_with("pkg/onnx/models/pointmass.onnx"),
        "{}",
        cfg.model.path.display()
    );
}

/// A config shipped in `config/`, loaded as the node loads it.
fn shipped_config(name: &str) -> NodeConfig {
    NodeConfig::load(&common::repo().join("config").join(name)).unwrap()
}

/// The model variants are their maze's shipped config with their model, horizon, guidance
/// scale, goal squash and plan age limit changed, and nothing else.
#[test]
fn the_maze_variants_are_their_maze_config_with_their_changes() {
    let models = common::repo().join("onnx/models");
    for (maze, variant, horizon, scale, squash) in [
        ("medium", "episode", 60, 30.0, "linear"),
        ("medium", "long", 31, 30.0, "tanh"),
        ("medium", "wide", 15, 10.0, "linear"),
        ("medium", "wide_episode", 60, 10.0, "linear"),
        ("large", "episode", 80, 10.0, "linear"),
    ] {
        let mut expected = shipped_config(&format!("maze2d_{maze}.yaml"));
        expected.model.path = models.join(format!("maze2d_{maze}_{variant}.onnx"));
        expected.planner.horizon_tokens = Some(horizon);
        expected.planner.guidance_scale = scale;
        let goal = expected.planner.goal.as_mut().unwrap();
        goal.squash = serde_yaml_ng::from_str(squash).unwrap();
        // Their plans take longer than the 16-token model's on CPU; a whole-episode plan runs to
        // its end.
        expected.safety.max_plan_age_s = if variant.ends_with("episode") { None } else { Some(3.0) };
        assert_eq!(
            shipped_config(&format!("maze2d_{maze}_{variant}.yaml")),
            expected,
            "{maze} {variant}"
        );
    }
}

/// The U-Maze variant with which MCG beat no-MCG (docs/maze2d.md, "A powered test of the same
/// reward") is the shipped U-Maze config with only the goal's aggregate changed, as it was
/// tested: a later edit of the shipped config carries over, and nothing else may drift.
#[test]
fn the_umaze_reach_config_is_the_shipped_one_with_the_soft_max_aggregate() {
    assert_reach_variant("maze2d_umaze.yaml", "maze2d_umaze_reach.yaml");
}

/// `reach` is `base` with only the goal's aggregate moved from the plan's average to the
/// reach-at-any-step soft maximum (τ 0.1) with which the reach configs were tested.
fn assert_reach_variant(base: &str, reach: &str) {
    use df_planner::planner::Aggregate;

    let mut expected = shipped_config(base);
    let goal = expected
        .planner
        .goal
        .as_mut()
        .unwrap_or_else(|| panic!("{base} guides to a goal"));
    assert_eq!(goal.aggregate, Aggregate::Mean, "{base}");
    goal.aggregate = Aggregate::SoftMax { temperature: 0.1 };
    assert_eq!(shipped_config(reach), expected, "{reach}");
}

/// The PD-tracked whole-episode variants (docs/maze2d.md, "Tracking whole-episode plans with a
/// PD controller", "A whole-episode model for Large") are their whole-episode configs with only
/// their execution and replan interval changed, as they were tested.
#[test]
fn the_pd_tracked_configs_are_their_whole_episode_ones_tracked_by_a_pd_controller() {
    use df_planner::serve::Execute;

    for episode in ["maze2d_medium_wide_episode", "maze2d_large_episode"] {
        let mut expected = shipped_config(&format!("{episode}.yaml"));
        let serve = expected
            .serve
            .as_mut()
            .expect("the Maze2D configs have a serve section");
        assert_eq!(serve.execute, Execute::DiffusedActions);
        serve.execute = Execute::PdController;
        expected.planner.replan_every = 50;
        assert_eq!(shipped_config(&format!("{episode}_pd.yaml")), expected, "{episode}");
    }
}

/// The 40k-step Large model's config (docs/maze2d.md, "Trained twice as long (40k steps)") is
/// the 20k one's PD-tracked config with only its model changed, as it was tested.
#[test]
fn the_large_40k_config_is_the_pd_tracked_one_with_its_model() {
    let mut expected = shipped_config("maze2d_large_episode_pd.yaml");
    expected.model.path = common::repo().join("onnx/models/maze2d_large_episode_40k.onnx");
    assert_eq!(shipped_config("maze2d_large_episode_40k_pd.yaml"), expected);
}

/// The variants that track their plans faster than planned (docs/maze2d.md, "Tracking the plans
/// faster than planned"; Large's wide CPU model, "A wide whole-episode model for Large, trained on
/// this CPU") are PD-tracked whole-episode configs with only their tempo (and Large's model)
/// changed, as they were tested.
#[test]
fn the_tempo_configs_are_pd_tracked_ones_run_faster() {
    for (tempo_config, base, model) in [
        (
            "maze2d_medium_wide_episode_pd_tempo.yaml",
            "maze2d_medium_wide_episode_pd.yaml",
            None,
        ),
        (
            "maze2d_large_wide_episode_cpu_pd_tempo.yaml",
            "maze2d_large_episode_pd.yaml",
            Some("onnx/models/maze2d_large_wide_episode_cpu.onnx"),
        ),
    ] {
        let mut expected = shipped_config(base);
        if let Some(model) = model {
            expected.model.path = common::repo().join(model);
        }
        let serve = expected
            .serve
            .as_mut()
            .expect("the Maze2D configs have a serve section");
        assert_eq!(serve.tempo, 1.0, "{base}");
        serve.tempo = 1.3;
        assert_eq!(shipped_config(tempo_config), expected, "{tempo_config}");
    }
}

/// Large's official-guidance-form config (docs/maze2d.md, "The official guidance form on the
/// whole-episode models") is the wide CPU model's tempo config with only its guidance form and
/// scale changed, as it was tested.
#[test]
fn the_large_next_state_config_is_the_tempo_one_guided_in_the_official_form() {
    use df_planner::diffusion::GuidanceForm;

    let mut expected = shipped_config("maze2d_large_wide_episode_cpu_pd_tempo.yaml");
    assert_eq!(expected.planner.guidance_form, GuidanceForm::Score { max_gain: 100.0 });
    expected.planner.guidance_form = GuidanceForm::NextState;
    expected.planner.guidance_scale = 1000.0;
    assert_eq!(
        shipped_config("maze2d_large_wide_episode_cpu_next_state.yaml"),
        expected
    );
}

/// Large's faster-tracked official-form config (docs/maze2d.md, "Tempo 2.0 on Large, a test set
/// beforehand") is the official-form config with only its tempo changed, as it was tested.
#[test]
fn the_large_tempo2_config_is_the_next_state_one_tracked_faster() {
    let mut expected = shipped_config("maze2d_large_wide_episode_cpu_next_state.yaml");
    let serve = expected
        .serve
        .as_mut()
        .expect("the Maze2D configs have a serve section");
    assert_eq!(serve.tempo, 1.3);
    serve.tempo = 2.0;
    assert_eq!(
        shipped_config("maze2d_large_wide_episode_cpu_next_state_tempo2.yaml"),
        expected
    );
}

/// Medium's common-random-numbers config (docs/maze2d.md, "MCG with common random numbers, a
/// test set beforehand") is the tempo config with only its noise streams changed, as it was
/// tested.
#[test]
fn the_medium_per_sample_config_is_the_tempo_one_with_a_noise_stream_per_future() {
    use df_planner::diffusion::NoiseStreams;

    let mut expected = shipped_config("maze2d_medium_wide_episode_pd_tempo.yaml");
    assert_eq!(expected.planner.noise_streams, NoiseStreams::Shared);
    expected.planner.noise_streams = NoiseStreams::PerSample;
    assert_eq!(
        shipped_config("maze2d_medium_wide_episode_pd_tempo_per_sample.yaml"),
        expected
    );
}

/// Medium's reach-at-any-step config (docs/maze2d.md, "MCG with the reach-at-any-step reward on
/// Medium, a test set beforehand") is the per-sample config with only the goal's aggregate
/// changed, as it was tested.
#[test]
fn the_medium_reach_config_is_the_per_sample_one_with_the_soft_max_aggregate() {
    assert_reach_variant(
        "maze2d_medium_wide_episode_pd_tempo_per_sample.yaml",
        "maze2d_medium_wide_episode_pd_tempo_reach.yaml",
    );
}
