//! Arrive-and-hold in the node's own loop (planner task, control tick, safety filter on the
//! virtual clock, as replay and the bridge run it), closed around a point mass: the behaviour
//! the Maze2D evaluation measured through `serve`, now on the robot's path.

mod common;

use df_planner::config::NodeConfig;
use df_planner::control::{ActionSink, Diagnostics, Source, StateSample, TickReport};
use df_planner::planner::Plan;
use df_planner::replay::build_loop;

#[derive(Default)]
struct LastAction {
    action: [f64; 2],
    source: Option<Source>,
}

impl ActionSink for LastAction {
    fn action(&mut self, report: &TickReport, action: &[f64], _: Option<&Plan>) {
        self.action.copy_from_slice(action);
        self.source = Some(report.source);
    }
    fn plan(&mut self, _: &Plan) {}
    fn diagnostics(&mut self, _: i64, _: &Diagnostics) {}
}

/// D4RL's point mass (gear 100, Euler at 0.01 s: one step changes the velocity by 0.234 ×
/// the action, clipped to ±5), in U-Maze's open top corridor, from 0.6 beside the fixed goal
/// (1, 1) for `steps` steps of the node's loop. Returns the final position and velocity and
/// the loop's diagnostics.
fn run(hold_radius: Option<f64>, steps: i64) -> ([f64; 2], [f64; 2], Diagnostics) {
    let mut cfg = NodeConfig::load(&common::repo().join("config/maze2d_umaze.yaml")).unwrap();
    cfg.model.runtime = common::cpu();
    cfg.serve.as_mut().unwrap().hold_radius = hold_radius;
    let mut lp = build_loop(&cfg).unwrap();
    let step_ns = cfg.control.step().as_nanos() as i64;
    let (mut x, mut v) = ([1.0, 1.6], [0.0, 0.0]);
    let mut sink = LastAction::default();
    for k in 1..=steps {
        let t = k * step_ns;
        lp.ingest_state(StateSample::new(t, &x, &v).unwrap());
        lp.advance_to(t + 1, &mut sink).unwrap();
        assert_ne!(sink.source, Some(Source::Stop), "step {k}");
        for d in 0..2 {
            v[d] = (v[d] + 0.234 * sink.action[d]).clamp(-5.0, 5.0);
            x[d] += 0.01 * v[d];
        }
    }
    (x, v, lp.diagnostics())
}

#[test]
fn the_node_holds_the_goal_at_rest_once_a_plan_arrives() {
    let (x, v, diag) = run(Some(0.3), 200);
    let (distance, speed) = ((x[0] - 1.0).hypot(x[1] - 1.0), v[0].hypot(v[1]));
    println!(
        "after 2 s with the hold: distance {distance:.3}, speed {speed:.3}, {} of {} ticks held the goal",
        diag.goal_held, diag.ticks
    );
    assert!(distance < 0.05 && speed < 0.05, "distance {distance}, speed {speed}");
    assert!(diag.goal_held > 100, "{} ticks held the goal", diag.goal_held);
    assert_eq!(diag.plan_errors, 0);

    let (x, v, diag) = run(None, 200);
    let (distance, speed) = ((x[0] - 1.0).hypot(x[1] - 1.0), v[0].hypot(v[1]));
    println!("after 2 s without: distance {distance:.3}, speed {speed:.3}");
    assert_eq!(diag.goal_held, 0);
}
