//! Turning a tick's action and the plan in force into what an arm's controller consumes.

use crate::planner::Plan;

use super::safety::Safety;

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
/// Every future point passes the safety filter as a tick's action would: clipped to the
/// limits and rate-limited against the point before it over the time between them; the
/// chunk ends before a non-finite action. Without a plan: the published action alone, at rest.
pub fn trajectory_chunk(
    action: &[f64],
    plan: Option<&Plan>,
    index: Option<usize>,
    now_ns: i64,
    safety: &Safety,
) -> Vec<TrajectoryPoint> {
    let rest = |positions: &[f64], t: i64| TrajectoryPoint {
        positions: positions.to_vec(),
        velocities: vec![0.0; positions.len()],
        time_from_start_ns: t,
    };
    let (Some(plan), Some(start)) = (plan, index) else {
        return vec![rest(action, 0)];
    };
    let mut points = Vec::with_capacity(plan.len() - start + 1);
    points.push(rest(action, 0));
    let (mut prev, mut prev_t) = (action.to_vec(), 0);
    for i in start + 1..plan.len() {
        let proposed = plan.action(i);
        if !proposed.iter().all(|v| v.is_finite()) {
            break;
        }
        let t = plan.time_of(i) - now_ns;
        let dt_s = (t - prev_t) as f64 / 1e9;
        let mut positions = vec![0.0; action.len()];
        safety.over(proposed, &prev, dt_s, &mut positions);
        let velocities = positions.iter().zip(&prev).map(|(x, p)| (x - p) / dt_s).collect();
        prev.copy_from_slice(&positions);
        prev_t = t;
        points.push(TrajectoryPoint {
            positions,
            velocities,
            time_from_start_ns: t,
        });
    }
    if points.len() > 1 {
        points[0].velocities = points[1].velocities.clone();
    }
    points.push(rest(&prev, prev_t + plan.dt_ns));
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
        let pts = trajectory_chunk(&[1.0], Some(&plan), Some(1), 1_120, &unlimited());
        let times: Vec<i64> = pts.iter().map(|p| p.time_from_start_ns).collect();
        assert_eq!(times, vec![0, 80, 180, 280]);
        assert_eq!(pts[1].positions, vec![2.0]);
        // From the action in force (1.0, now) to the next one (2.0, due in 80 ns).
        assert!((pts[1].velocities[0] - 1.25e7).abs() < 1e-3, "1 unit per 80 ns");
        assert_eq!(pts.last().unwrap().velocities, vec![0.0]);
        assert_eq!(pts.last().unwrap().positions, vec![3.0]);
        assert_eq!(trajectory_chunk(&[0.5], None, None, 0, &unlimited()).len(), 1);
    }

    fn unlimited() -> Safety {
        Safety::new(vec![-1e9], vec![1e9], &[1e18], 0.01)
    }

    #[test]
    fn future_points_are_clipped_rate_limited_and_end_before_a_non_finite_action() {
        // Limits ±1, at most 2 units/s; plan steps of 0.1 s: at most 0.2 from point to point.
        let safety = Safety::new(vec![-1.0], vec![1.0], &[2.0], 0.01);
        let mut plan = Plan::with_capacity(5, 1, 1, 1);
        plan.set_len(5);
        plan.dt_ns = 100_000_000;
        for (i, a) in [0.9, 0.95, 1.4, 1.6, f64::NAN].into_iter().enumerate() {
            plan.action_mut(i)[0] = a;
        }
        let pts = trajectory_chunk(&[0.5], Some(&plan), Some(0), 0, &safety);
        let positions: Vec<f64> = pts.iter().map(|p| p.positions[0]).collect();
        let expected = [0.5, 0.7, 0.9, 1.0, 1.0];
        assert_eq!(positions.len(), expected.len(), "{positions:?}");
        for (got, want) in positions.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{positions:?}");
        }
        assert!(
            pts.iter().all(|p| p.velocities[0].abs() <= 2.0 + 1e-9),
            "within the rate"
        );
    }
}
