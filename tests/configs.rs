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
