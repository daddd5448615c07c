//! Every shipped config parses, and its planner builds against the model it names: a config
//! whose horizon, goal dims or camera roles do not fit its model fails here, not on the arm.

mod common;

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
