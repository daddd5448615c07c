//! Turning a tick's action and the plan in force into what an arm's controller consumes.

use crate::planner::Plan;

/// One point of a joint trajectory chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectoryPoint {
    pub positions: Vec<f64>,
    pub velocities: Vec<f64>,
    pub time_from_start_ns: i64,
}

/// The plan from the action in force now to its end, as position targets with
/// finite-difference velocities, ending with a point at rest (zero velocity) one step after
/// the last action so that ros2_control's trajectory controller can blend and stop.
/// Without a plan: the published action alone, at rest.
pub fn trajectory_chunk(
    action: &[f64],
    plan: Option<&Plan>,
    index: Option<usize>,
    now_ns: i64,
) -> Vec<TrajectoryPoint> {
    let rest = |positions: &[f64], t: i64| TrajectoryPoint {
        positions: positions.to_vec(),
        velocities: vec![0.0; positions.len()],
        time_from_start_ns: t,
    };
    let (Some(plan), Some(start)) = (plan, index) else {
        return vec![rest(action, 0)];
    };
    let dt_s = plan.dt_ns as f64 / 1e9;
    let mut points = Vec::with_capacity(plan.len() - start + 1);
    points.push(TrajectoryPoint {
        positions: action.to_vec(),
        velocities: vec![0.0; action.len()],
        time_from_start_ns: 0,
    });
    let mut prev = action.to_vec();
    for i in start + 1..plan.len() {
        let a = plan.action(i);
        let velocities = a.iter().zip(&prev).map(|(x, p)| (x - p) / dt_s).collect();
        points.push(TrajectoryPoint {
            positions: a.to_vec(),
            velocities,
            time_from_start_ns: plan.time_of(i) - now_ns,
        });
        prev = a.to_vec();
    }
    if points.len() > 1 {
        points[0].velocities = points[1].velocities.clone();
    }
    let end = points.last().map_or(0, |p| p.time_from_start_ns) + plan.dt_ns;
    points.push(rest(&prev, end));
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_covers_the_rest_of_the_plan_and_ends_at_rest() {
        let mut plan = Plan::with_capacity(4, 1, 1, 1);
        plan.set_len(4);
        plan.t0_ns = 1_000;
        plan.dt_ns = 100;
        for i in 0..4 {
            plan.action_mut(i)[0] = i as f64;
        }
        let pts = trajectory_chunk(&[1.0], Some(&plan), Some(1), 1_120);
        let times: Vec<i64> = pts.iter().map(|p| p.time_from_start_ns).collect();
        assert_eq!(times, vec![0, 80, 180, 280]);
        assert_eq!(pts[1].positions, vec![2.0]);
        assert!((pts[1].velocities[0] - 1e7).abs() < 1e-6, "1 unit per 100 ns");
        assert_eq!(pts.last().unwrap().velocities, vec![0.0]);
        assert_eq!(pts.last().unwrap().positions, vec![3.0]);
        assert_eq!(trajectory_chunk(&[0.5], None, None, 0).len(), 1);
    }
}
