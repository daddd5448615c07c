//! The goal a node plans toward: the goal reward, where a goal may lie, and the goal now —
//! the config's `planner.goal.target` at start, then each goal message (`topics.goal`). A goal
//! that fails a check is refused whole and the node keeps planning toward the one before.

use serde::Serialize;

use crate::diffusion::Guidance;

use super::reward::GoalReward;

/// Where goals may lie: inside `bounds`, outside every `keepout` box (walls, fixtures).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GoalRegion {
    pub bounds: Option<[[f64; 2]; 2]>,
    pub keepout: Vec<[[f64; 2]; 2]>,
}

impl GoalRegion {
    /// Refuse a goal that is not finite, lies outside `bounds` or inside a `keepout` box; the
    /// message starts with the goal.
    pub fn check(&self, g: [f64; 2]) -> Result<(), String> {
        if !g.iter().all(|v| v.is_finite()) {
            return Err(format!("{g:?}: expected two finite numbers"));
        }
        if let Some([lo, hi]) = self.bounds {
            if (0..2).any(|i| g[i] < lo[i] || g[i] > hi[i]) {
                return Err(format!(
                    "{g:?}: outside the workspace, expected within {lo:?}..{hi:?} (serve.goal_bounds)"
                ));
            }
        }
        if let Some([lo, hi]) = self
            .keepout
            .iter()
            .find(|[lo, hi]| (0..2).all(|i| lo[i] < g[i] && g[i] < hi[i]))
        {
            return Err(format!(
                "{g:?}: inside a keep-out box {lo:?}..{hi:?} (serve.goal_keepout), where the robot cannot be"
            ));
        }
        Ok(())
    }
}

/// What the diagnostics say of the goal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GoalStatus {
    /// The goal; None: none yet, and the node plans unguided.
    pub target: Option<[f64; 2]>,
    /// Whether plans are guided toward it (false at guidance_scale 0).
    pub guided: bool,
    /// Goal messages taken, and how many of them were refused.
    pub received: u64,
    pub rejected: u64,
    /// Goal messages that arrived faster than the planner took them and were dropped.
    pub dropped: u64,
    /// Distance from the latest state's position to the goal.
    pub distance: Option<f64>,
    /// Whether a state since the goal was set came within `planner.goal.reached_within` of it;
    /// None without that distance or a goal.
    pub reached: Option<bool>,
}

/// The goal reward and the goal it points at.
pub struct NodeGoal {
    reward: GoalReward,
    region: GoalRegion,
    /// The frame goal messages must be stamped in (messages with an empty frame_id pass).
    frame_id: String,
    /// The latest state's position (planner.goal.position_dims).
    position: Option<[f64; 2]>,
    /// Within this distance the goal counts as reached (planner.goal.reached_within).
    reached_within: Option<f64>,
    /// A state since the goal was set came within `reached_within` of it.
    reached: bool,
    status: GoalStatus,
}

impl NodeGoal {
    /// No goal yet: the node plans unguided until `set` or `receive` gives one; with `guided`
    /// false (guidance scale 0) goals are still checked and reported, but do not guide.
    pub fn new(reward: GoalReward, region: GoalRegion, frame_id: String, guided: bool) -> Self {
        Self {
            reward,
            region,
            frame_id,
            position: None,
            reached_within: None,
            reached: false,
            status: GoalStatus {
                guided,
                ..GoalStatus::default()
            },
        }
    }

    /// Report each goal reached once a state comes within `distance` of it (None: never);
    /// the state that counts is the first observed after the goal was set.
    pub fn with_reached_within(mut self, distance: Option<f64>) -> Self {
        self.reached_within = distance;
        self
    }

    /// Plan toward `target`, if the region allows it; otherwise the goal stays as it was.
    /// Ok(true) when the plans change: the node is guided and the target moved.
    pub fn set(&mut self, target: [f64; 2]) -> Result<bool, String> {
        self.region.check(target)?;
        let moved = self.status.target != Some(target);
        self.reward.set_goal(target);
        self.status.target = Some(target);
        if moved {
            self.reached = false;
        }
        Ok(moved && self.status.guided)
    }

    /// A goal message: `set`, after checking the frame it is stamped in; counted either way.
    pub fn receive(&mut self, message: &GoalMessage) -> Result<bool, String> {
        self.status.received += 1;
        let result = if message.frame_id.is_empty() || message.frame_id == self.frame_id {
            self.set(message.position)
        } else {
            Err(format!(
                "frame_id {:?}: expected {:?} (topics.goal.frame_id) or empty; goals are not transformed",
                message.frame_id, self.frame_id
            ))
        };
        if result.is_err() {
            self.status.rejected += 1;
        }
        result
    }

    /// The guidance toward the goal; None before the first goal and when not guided.
    pub fn guidance(&self) -> Option<&dyn Guidance> {
        let guides = self.status.guided && self.status.target.is_some();
        guides.then_some(&self.reward as &dyn Guidance)
    }

    /// The current goal, guided toward or not; None before the first goal.
    pub fn target(&self) -> Option<[f64; 2]> {
        self.status.target
    }

    /// The robot's state is `observation` (physical units). The first state within
    /// `reached_within` of the goal marks it reached, and says so in the log. A non-finite
    /// position is passed over, as the planner refuses its frame: the distance stays that of
    /// the last state it took.
    pub fn observe(&mut self, observation: &[f64]) {
        let position = self.reward.position_dims().map(|d| observation[d]);
        if !position.iter().all(|v| v.is_finite()) {
            return;
        }
        self.position = Some(position);
        if let (Some(within), false, Some(distance)) = (self.reached_within, self.reached, self.distance()) {
            if distance <= within {
                self.reached = true;
                tracing::info!(goal = ?self.status.target, distance, "goal reached");
            }
        }
    }

    /// Goal messages dropped before they reached `receive`, in all.
    pub fn set_dropped(&mut self, dropped: u64) {
        self.status.dropped = dropped;
    }

    pub fn status(&self) -> GoalStatus {
        GoalStatus {
            distance: self.distance(),
            reached: self.reached_within.and(self.status.target).map(|_| self.reached),
            ..self.status
        }
    }

    fn distance(&self) -> Option<f64> {
        match (self.status.target, self.position) {
            (Some([gx, gy]), Some([x, y])) => Some((gx - x).hypot(gy - y)),
            _ => None,
        }
    }
}

/// A goal as a message carries it: a position in the planner's position dims, and the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalMessage {
    pub position: [f64; 2],
    pub frame_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::reward::tests::config as reward_config;
    use crate::planner::{Aggregate, Squash};

    fn goal(guided: bool) -> NodeGoal {
        let contract = crate::model::ModelContract::from_json(&crate::model::example_json().to_string()).unwrap();
        let cfg = reward_config(Squash::Linear, Aggregate::Mean);
        let reward = GoalReward::new(cfg, &contract, [0.0, 0.0]).unwrap();
        let region = GoalRegion {
            bounds: Some([[0.0, 0.0], [4.0, 4.0]]),
            keepout: vec![[[1.0, 1.0], [2.0, 2.0]]],
        };
        NodeGoal::new(reward, region, "map".into(), guided)
    }

    fn message(x: f64, y: f64, frame_id: &str) -> GoalMessage {
        GoalMessage {
            position: [x, y],
            frame_id: frame_id.into(),
        }
    }

    #[test]
    fn a_refused_goal_message_keeps_the_goal_before_it_and_is_counted() {
        let mut g = goal(true);
        assert!(g.guidance().is_none(), "no goal: unguided");
        g.observe(&[0.5, 0.5, 0.0, 0.0]);
        assert!(g.receive(&message(3.0, 3.0, "map")).unwrap(), "a new target");
        assert_eq!(
            g.status().distance,
            Some(2.5_f64.hypot(2.5)),
            "measured from the last state at once"
        );
        assert!(!g.receive(&message(3.0, 3.0, "map")).unwrap(), "the same target again");
        assert!(g.receive(&message(0.5, 3.5, "")).unwrap());
        for (m, says) in [
            (message(5.0, 1.0, "map"), "outside the workspace"),
            (message(1.5, 1.5, "map"), "inside a keep-out box"),
            (message(f64::NAN, 1.0, "map"), "expected two finite numbers"),
            (
                message(3.0, 3.0, "odom"),
                "frame_id \"odom\": expected \"map\" (topics.goal.frame_id) or empty",
            ),
        ] {
            let e = g.receive(&m).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        assert!(g.guidance().is_some());
        let status = g.status();
        assert_eq!(status.distance, Some(3.0));
        assert_eq!(status.target, Some([0.5, 3.5]));
        assert_eq!((status.received, status.rejected), (7, 4));
    }

    #[test]
    fn a_goal_is_reached_once_a_state_comes_within_reached_within_and_a_new_goal_starts_over() {
        let mut g = goal(true);
        assert_eq!(g.status().reached, None, "no reached_within");
        g.set([3.0, 3.0]).unwrap();
        g.observe(&[3.0, 3.0, 0.0, 0.0]);
        assert_eq!(g.status().reached, None, "no reached_within: never reported");

        let mut g = goal(true).with_reached_within(Some(0.5));
        g.observe(&[0.5, 0.5, 0.0, 0.0]);
        assert_eq!(g.status().reached, None, "no goal yet");
        g.set([3.0, 3.0]).unwrap();
        assert_eq!(g.status().reached, Some(false));
        g.observe(&[2.0, 3.0, 0.0, 0.0]);
        g.observe(&[f64::NAN, 3.0, 0.0, 0.0]);
        assert_eq!(g.status().distance, Some(1.0), "a NaN position is passed over");
        assert_eq!(g.status().reached, Some(false));
        g.observe(&[2.6, 3.0, 0.0, 0.0]);
        assert_eq!(g.status().reached, Some(true), "0.4 from the goal");
        g.observe(&[0.5, 0.5, 0.0, 0.0]);
        assert_eq!(g.status().reached, Some(true), "reached stays for this goal");
        assert!(!g.set([3.0, 3.0]).unwrap());
        assert_eq!(g.status().reached, Some(true), "the same goal again");
        assert!(g.receive(&message(1.5, 1.5, "map")).is_err());
        assert_eq!(g.status().reached, Some(true), "a refused goal changes nothing");
        g.set([0.5, 3.5]).unwrap();
        assert_eq!(g.status().reached, Some(false), "a new goal");
        g.observe(&[0.5, 2.9, 0.0, 0.0]);
        assert_eq!(g.status().reached, Some(false), "0.6 from it");

        let mut g = goal(true);
        g.set([3.0, 3.0]).unwrap();
        let g = g.with_reached_within(Some(0.5));
        assert_eq!(g.status().reached, Some(false), "a goal set before the distance was");
    }

    #[test]
    fn an_unguided_node_goal_checks_and_reports_goals_but_does_not_guide() {
        let mut g = goal(false);
        assert!(
            !g.receive(&message(3.0, 3.0, "map")).unwrap(),
            "unguided: the plans do not change"
        );
        assert!(g.receive(&message(5.0, 3.0, "map")).is_err());
        assert!(g.guidance().is_none());
        let status = g.status();
        assert_eq!((status.target, status.guided), (Some([3.0, 3.0]), false));
        assert_eq!((status.received, status.rejected), (2, 1));
    }
}
