//! The robot's latest state (from `sensor_msgs/JointState`), shared between the input
//! callback and the planner and control threads. Fixed capacity: copying it never allocates.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use thiserror::Error;

use crate::frames::clock_reset;

/// Joints the state can hold.
pub const MAX_JOINTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateSample {
    pub stamp_ns: i64,
    pub joints: usize,
    pub position: [f64; MAX_JOINTS],
    pub velocity: [f64; MAX_JOINTS],
}

impl StateSample {
    /// None when there are more than MAX_JOINTS joints or velocity is neither empty nor as long.
    pub fn new(stamp_ns: i64, position: &[f64], velocity: &[f64]) -> Option<Self> {
        let n = position.len();
        if n > MAX_JOINTS || !(velocity.is_empty() || velocity.len() == n) {
            return None;
        }
        let mut s = Self {
            stamp_ns,
            joints: n,
            position: [0.0; MAX_JOINTS],
            velocity: [0.0; MAX_JOINTS],
        };
        s.position[..n].copy_from_slice(position);
        s.velocity[..velocity.len()].copy_from_slice(velocity);
        Some(s)
    }

    /// The observation vector: positions then velocities, or positions only when `out` has
    /// one value per joint (an end-effector state such as the fruit swap's).
    pub fn observation(&self, out: &mut [f64]) {
        let n = self.joints;
        out[..n].copy_from_slice(&self.position[..n]);
        if out.len() > n {
            out[n..2 * n].copy_from_slice(&self.velocity[..n]);
        }
    }
}

/// Why a `sensor_msgs/JointState` gave no state sample.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StateRejected<'a> {
    #[error("{positions} positions / {velocities} velocities: expected equal counts, at most {MAX_JOINTS}")]
    Counts { positions: usize, velocities: usize },
    #[error("{names} names for {positions} positions: topics.state_joints reads joints by name")]
    Names { names: usize, positions: usize },
    #[error("joint {joint:?} (topics.state_joints) not named exactly once among the message's names {present:?}")]
    Joint { joint: &'a str, present: &'a [String] },
    #[error("{what} {value} of the state's joint {joint}: expected finite values")]
    NotFinite {
        what: &'static str,
        joint: usize,
        value: f64,
    },
    #[error("{joints} joints: expected {} for the model's observation_dim {observation_dim}", joints_for(*.observation_dim))]
    Size { joints: usize, observation_dim: usize },
    #[error("no velocities for the {joints} joints: the model's observation ({observation_dim} values) is positions then velocities")]
    NoVelocities { joints: usize, observation_dim: usize },
    #[error(
        "{joints} joints: the PD controller (serve.execute / serve.hold_radius) reads positions then velocities, \
         expected {} joints with velocities (the model's observation_dim {observation_dim})",
        observation_dim / 2
    )]
    NotPositionsThenVelocities { joints: usize, observation_dim: usize },
    #[error("duplicate stamp")]
    Duplicate,
    #[error("stamp out of order")]
    OutOfOrder,
}

/// The joint counts that make an observation of `observation_dim` values.
fn joints_for(observation_dim: usize) -> String {
    match observation_dim % 2 {
        0 => format!(
            "{observation_dim} (positions only) or {} (positions then velocities)",
            observation_dim / 2
        ),
        _ => format!("{observation_dim} (positions only)"),
    }
}

/// The joints of a `sensor_msgs/JointState` that make the state, by name in the model's order
/// (`topics.state_joints`): drivers publish every joint, grippers included, in an order of
/// their own. Empty: every joint, in the message's order.
#[derive(Debug, Clone, Default)]
pub struct JointSelection {
    names: Vec<String>,
}

/// A `topics.state_joints` list that cannot select a state.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("expected {expected}, got {got}")]
pub struct InvalidJointList {
    pub expected: String,
    pub got: String,
}

impl JointSelection {
    /// At most MAX_JOINTS distinct, non-empty names.
    pub fn new(names: &[String]) -> Result<Self, InvalidJointList> {
        if names.len() > MAX_JOINTS {
            return Err(InvalidJointList {
                expected: format!("at most {MAX_JOINTS} names"),
                got: names.len().to_string(),
            });
        }
        if let Some((k, name)) = names
            .iter()
            .enumerate()
            .find(|(k, name)| name.is_empty() || names[..*k].contains(name))
        {
            return Err(InvalidJointList {
                expected: "distinct, non-empty joint names".into(),
                got: format!("{name:?} at index {k}"),
            });
        }
        Ok(Self { names: names.to_vec() })
    }

    /// How many joints the state has; 0: as many as each message names.
    pub fn joints(&self) -> usize {
        self.names.len()
    }

    /// The state sample of one message. Allocates nothing, a rejection included: it borrows
    /// the names it reports, and a live node formats it only when it logs it.
    pub fn sample<'a>(
        &'a self,
        stamp_ns: i64,
        names: &'a [String],
        position: &[f64],
        velocity: &[f64],
    ) -> Result<StateSample, StateRejected<'a>> {
        let counts = || StateRejected::Counts {
            positions: position.len(),
            velocities: velocity.len(),
        };
        if self.names.is_empty() {
            return finite(StateSample::new(stamp_ns, position, velocity).ok_or_else(counts)?);
        }
        if !(velocity.is_empty() || velocity.len() == position.len()) {
            return Err(counts());
        }
        if names.len() != position.len() {
            return Err(StateRejected::Names {
                names: names.len(),
                positions: position.len(),
            });
        }
        let mut s = StateSample {
            stamp_ns,
            joints: self.names.len(),
            position: [0.0; MAX_JOINTS],
            velocity: [0.0; MAX_JOINTS],
        };
        for (k, joint) in self.names.iter().enumerate() {
            let mut found = names.iter().enumerate().filter(|(_, n)| *n == joint).map(|(i, _)| i);
            let (Some(i), None) = (found.next(), found.next()) else {
                // Missing, or named twice: which of two positions is the joint's is unknowable.
                return Err(StateRejected::Joint { joint, present: names });
            };
            s.position[k] = position[i];
            if !velocity.is_empty() {
                s.velocity[k] = velocity[i];
            }
        }
        finite(s)
    }
}

/// A NaN or infinite value would keep the state looking fresh while the planner refuses it:
/// refused here, the state goes stale and the control loop falls back by its own timeout.
fn finite<'a>(s: StateSample) -> Result<StateSample, StateRejected<'a>> {
    let n = s.joints;
    for (what, values) in [("position", &s.position[..n]), ("velocity", &s.velocity[..n])] {
        if let Some(joint) = values.iter().position(|v| !v.is_finite()) {
            return Err(StateRejected::NotFinite {
                what,
                joint,
                value: values[joint],
            });
        }
    }
    Ok(s)
}

/// One JointState stream's way in, the same live, in replay and through `serve`'s bridge: the
/// configured joints (`JointSelection`), as many as the model's observation takes, velocities
/// where the model's observation has them (rather than zeros that would read as a robot at
/// rest), then stamps that move forward, so that a late message never replaces a newer state.
/// A stamp more than CLOCK_RESET_NS before the last one is a clock reset (a restarted
/// simulation), taken as the camera frames take it.
#[derive(Debug)]
pub struct StateIntake {
    selection: JointSelection,
    observation_dim: usize,
    last_stamp_ns: Option<i64>,
    /// Only positions then velocities (a PD controller in the loop reads them).
    velocities_required: bool,
}

impl StateIntake {
    pub fn new(selection: JointSelection, observation_dim: usize) -> Self {
        Self {
            selection,
            observation_dim,
            last_stamp_ns: None,
            velocities_required: false,
        }
    }

    /// Refuse states that are not positions then velocities: a PD controller would read
    /// other positions as velocities.
    pub fn requiring_velocities(mut self) -> Self {
        self.velocities_required = true;
        self
    }

    /// A new episode on a clock that starts over: the next stamp may be any.
    pub fn restart(&mut self) {
        self.last_stamp_ns = None;
    }

    pub fn take<'a>(
        &'a mut self,
        stamp_ns: i64,
        names: &'a [String],
        position: &[f64],
        velocity: &[f64],
    ) -> Result<StateSample, StateRejected<'a>> {
        if let Some(last) = self.last_stamp_ns {
            if stamp_ns == last {
                return Err(StateRejected::Duplicate);
            }
            if stamp_ns < last && !clock_reset(last, stamp_ns) {
                return Err(StateRejected::OutOfOrder);
            }
        }
        let sample = self.selection.sample(stamp_ns, names, position, velocity)?;
        if self.velocities_required && 2 * sample.joints != self.observation_dim {
            return Err(StateRejected::NotPositionsThenVelocities {
                joints: sample.joints,
                observation_dim: self.observation_dim,
            });
        }
        // Only a message-order selection (no `topics.state_joints`) can have another count.
        if sample.joints != self.observation_dim && 2 * sample.joints != self.observation_dim {
            return Err(StateRejected::Size {
                joints: sample.joints,
                observation_dim: self.observation_dim,
            });
        }
        if velocity.is_empty() && 2 * sample.joints == self.observation_dim {
            return Err(StateRejected::NoVelocities {
                joints: sample.joints,
                observation_dim: self.observation_dim,
            });
        }
        self.last_stamp_ns = Some(stamp_ns);
        Ok(sample)
    }
}

/// The newest values, stamped, in a fixed ring (no allocation after `new`): a thread that
/// runs a step late reads what was current at the step's time, not what is current now.
#[derive(Debug, Clone)]
pub struct Recent<T: Copy> {
    /// Apart from the values, so that a search by time reads 8 bytes an entry, not a state.
    stamps: Vec<i64>,
    values: Vec<T>,
    /// Where the next entry goes.
    next: usize,
    len: usize,
}

impl<T: Copy> Recent<T> {
    pub fn new(capacity: usize, fill: T) -> Self {
        Self {
            stamps: vec![i64::MIN; capacity.max(1)],
            values: vec![fill; capacity.max(1)],
            next: 0,
            len: 0,
        }
    }

    /// Keep `value`, stamped `stamp_ns`; the oldest goes when the ring is full.
    pub fn push(&mut self, stamp_ns: i64, value: T) {
        (self.stamps[self.next], self.values[self.next]) = (stamp_ns, value);
        self.next = (self.next + 1) % self.stamps.len();
        self.len = (self.len + 1).min(self.stamps.len());
    }

    /// Indices, newest first.
    fn newest_first(&self) -> impl Iterator<Item = usize> {
        let (n, next) = (self.stamps.len(), self.next);
        (1..=self.len).map(move |k| (next + n - k) % n)
    }

    pub fn latest(&self) -> Option<T> {
        self.newest_first().next().map(|i| self.values[i])
    }

    /// Whether a value stamped at or before `t_ns` is still kept: `at(t_ns)` reads the one
    /// current then, not the oldest kept.
    pub fn reaches(&self, t_ns: i64) -> bool {
        self.newest_first().any(|i| self.stamps[i] <= t_ns)
    }

    /// The newest value stamped at or before `t_ns`; if every value kept is newer, the oldest
    /// kept, the nearest to `t_ns`. Values from before a clock reset (a stamp that went back
    /// by `CLOCK_RESET_NS`) are not read once one on the new clock exists. None when empty.
    pub fn at(&self, t_ns: i64) -> Option<T> {
        let mut oldest: Option<usize> = None;
        for i in self.newest_first() {
            let stamp = self.stamps[i];
            if oldest.is_some_and(|newer| clock_reset(stamp, self.stamps[newer])) {
                break;
            }
            if stamp <= t_ns {
                return Some(self.values[i]);
            }
            oldest = Some(i);
        }
        oldest.map(|i| self.values[i])
    }
}

/// Robot states kept: at 1 kHz the last 4.1 s, further back than a late planner step reads
/// (`live::memory_reach_ns`: 2.55 s at 100 Hz ticks), so a fast driver does not cut the
/// planner's memory short. 1.1 MB.
const STATES_KEPT: usize = 4096;

/// The robot's recent states: writers push, readers copy. The control tick uses `try_read`
/// so it never waits; a contended read returns None and the tick keeps its previous sample.
#[derive(Debug)]
pub struct StateCell {
    inner: Mutex<Recent<StateSample>>,
    /// Messages the intake refused (`StateIntake`), for the diagnostics.
    rejected: AtomicU64,
}

impl Default for StateCell {
    fn default() -> Self {
        let empty = StateSample {
            stamp_ns: 0,
            joints: 0,
            position: [0.0; MAX_JOINTS],
            velocity: [0.0; MAX_JOINTS],
        };
        Self {
            inner: Mutex::new(Recent::new(STATES_KEPT, empty)),
            rejected: AtomicU64::new(0),
        }
    }
}

impl StateCell {
    pub fn publish(&self, sample: StateSample) {
        self.inner.lock().push(sample.stamp_ns, sample);
    }

    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Whether the state at `t_ns` is still kept (`Recent::reaches`).
    pub fn reaches(&self, t_ns: i64) -> bool {
        self.inner.lock().reaches(t_ns)
    }

    /// The state at `t_ns` (`Recent::at`): for a planner step that runs late.
    pub fn read_at(&self, t_ns: i64) -> Option<StateSample> {
        self.inner.lock().at(t_ns)
    }

    pub fn try_read(&self) -> Option<Option<StateSample>> {
        self.inner.try_lock().map(|g| g.latest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn named_joints_are_read_in_the_configured_order_and_others_ignored() {
        let selection = JointSelection::new(&names(&["ee_x", "ee_y"])).unwrap();
        let msg = names(&["finger", "ee_y", "ee_x"]);
        let s = selection.sample(5, &msg, &[0.9, 2.0, 1.0], &[9.0, 20.0, 10.0]).unwrap();
        assert_eq!((s.stamp_ns, s.joints), (5, 2));
        assert_eq!(
            (&s.position[..2], &s.velocity[..2]),
            (&[1.0, 2.0][..], &[10.0, 20.0][..])
        );
        let positions_only = selection.sample(5, &msg, &[0.9, 2.0, 1.0], &[]).unwrap();
        assert_eq!(&positions_only.velocity[..2], &[0.0, 0.0]);
    }

    #[test]
    fn a_message_without_a_configured_joint_is_rejected_by_name() {
        let selection = JointSelection::new(&names(&["ee_x", "ee_z"])).unwrap();
        let without_ee_z = names(&["ee_x", "ee_y"]);
        let err = selection.sample(0, &without_ee_z, &[1.0, 2.0], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"joint "ee_z" (topics.state_joints) not named exactly once among the message's names ["ee_x", "ee_y"]"#
        );
        let twice = names(&["ee_z", "ee_x", "ee_z"]);
        let err = selection.sample(0, &twice, &[1.0, 2.0, 3.0], &[]).unwrap_err();
        assert!(matches!(err, StateRejected::Joint { joint, .. } if joint == "ee_z"));
        let err = selection.sample(0, &[], &[1.0, 2.0], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0 names for 2 positions: topics.state_joints reads joints by name"
        );
        let both = names(&["ee_x", "ee_z"]);
        let err = selection.sample(0, &both, &[1.0, 2.0], &[3.0]).unwrap_err();
        assert!(matches!(
            err,
            StateRejected::Counts {
                positions: 2,
                velocities: 1
            }
        ));
    }

    #[test]
    fn a_joint_list_is_at_most_max_joints_distinct_names() {
        let too_many: Vec<String> = (0..=MAX_JOINTS).map(|k| format!("j{k}")).collect();
        let err = JointSelection::new(&too_many).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("expected at most {MAX_JOINTS} names, got {}", MAX_JOINTS + 1)
        );
        let err = JointSelection::new(&names(&["a", "b", "a"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"expected distinct, non-empty joint names, got "a" at index 2"#
        );
        assert!(JointSelection::new(&names(&["a", ""])).is_err());
        assert_eq!(
            JointSelection::new(&too_many[..MAX_JOINTS]).unwrap().joints(),
            MAX_JOINTS
        );
    }

    #[test]
    fn without_names_every_joint_is_read_in_the_message_order() {
        let all = JointSelection::default();
        let s = all.sample(0, &names(&["b", "a"]), &[1.0, 2.0], &[]).unwrap();
        assert_eq!(&s.position[..s.joints], &[1.0, 2.0]);
        let err = all.sample(0, &[], &[0.0; MAX_JOINTS + 1], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{} positions / 0 velocities: expected equal counts, at most {MAX_JOINTS}",
                MAX_JOINTS + 1
            )
        );
    }

    #[test]
    fn a_non_finite_value_is_refused_by_what_and_joint() {
        let all = JointSelection::default();
        let err = all.sample(0, &[], &[1.0, f64::NAN], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "position NaN of the state's joint 1: expected finite values"
        );
        let selection = JointSelection::new(&names(&["ee_x", "ee_y"])).unwrap();
        let msg = names(&["ee_y", "ee_x"]);
        let err = selection
            .sample(0, &msg, &[1.0, 2.0], &[f64::INFINITY, 0.0])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "velocity inf of the state's joint 1: expected finite values"
        );
    }

    #[test]
    fn the_intake_refuses_stamps_that_do_not_move_forward_unless_the_clock_was_reset() {
        let mut intake = StateIntake::new(JointSelection::default(), 1);
        let mut take = |stamp_ns: i64| {
            intake
                .take(stamp_ns, &[], &[1.0], &[])
                .map(|s| s.stamp_ns)
                .map_err(|e| e.to_string())
        };
        assert_eq!(take(5_000_000_000), Ok(5_000_000_000));
        assert_eq!(take(5_000_000_000), Err("duplicate stamp".into()));
        assert_eq!(take(4_500_000_000), Err("stamp out of order".into()));
        assert_eq!(take(5_010_000_000), Ok(5_010_000_000));
        assert_eq!(take(1_000_000), Ok(1_000_000), "a simulation restarted");
        assert_eq!(take(2_000_000), Ok(2_000_000));
        intake.restart();
        assert_eq!(
            intake.take(1_000_000, &[], &[1.0], &[]).map(|s| s.stamp_ns),
            Ok(1_000_000),
            "a new episode's clock, however near the last stamp"
        );
    }

    #[test]
    fn the_intake_takes_as_many_joints_as_the_observation_has() {
        // Joints in the message's order: the count is the message's, checked here.
        let mut intake = StateIntake::new(JointSelection::default(), 4);
        let err = intake.take(1, &[], &[1.0, 2.0, 3.0], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "3 joints: expected 4 (positions only) or 2 (positions then velocities) for the model's observation_dim 4"
        );
        let mut intake = StateIntake::new(JointSelection::default(), 3);
        let err = intake.take(1, &[], &[1.0, 2.0], &[0.0, 0.0]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "2 joints: expected 3 (positions only) for the model's observation_dim 3"
        );
        assert!(intake.take(2, &[], &[1.0, 2.0, 3.0], &[]).is_ok());
    }

    #[test]
    fn the_intake_wants_velocities_where_the_model_observes_them() {
        // Observation of 4 values: two joints' positions then velocities, or four positions.
        let mut intake = StateIntake::new(JointSelection::default(), 4);
        let err = intake.take(1, &[], &[1.0, 2.0], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no velocities for the 2 joints: the model's observation (4 values) is positions then velocities"
        );
        assert!(intake.take(2, &[], &[1.0, 2.0], &[0.1, 0.2]).is_ok());
        assert!(intake.take(3, &[], &[1.0, 2.0, 3.0, 4.0], &[]).is_ok());
    }

    #[test]
    fn recent_values_are_read_as_they_were_at_a_time() {
        let mut r = Recent::new(3, 0);
        assert_eq!((r.latest(), r.at(5)), (None, None));
        for (stamp, v) in [(10, 1), (20, 2), (30, 3), (40, 4)] {
            r.push(stamp, v);
        }
        // 10 fell out of the ring of three.
        assert_eq!(r.latest(), Some(4));
        assert_eq!(
            [r.at(20), r.at(29), r.at(30), r.at(100)],
            [Some(2), Some(2), Some(3), Some(4)]
        );
        assert_eq!(r.at(15), Some(2), "every kept value is newer: the oldest, the nearest");
        // A clock reset (back by more than CLOCK_RESET_NS): the old clock's values are not read.
        let s = 2 * crate::frames::CLOCK_RESET_NS;
        let mut r = Recent::new(4, 0);
        for (stamp, v) in [(s, 1), (s + 10, 2), (5, 3), (15, 4)] {
            r.push(stamp, v);
        }
        assert_eq!([r.at(20), r.at(15), r.at(10)], [Some(4), Some(4), Some(3)]);
        assert_eq!(
            r.at(1),
            Some(3),
            "before the new clock's first value: that one, not the old clock's"
        );
    }

    #[test]
    fn with_a_pd_controller_only_positions_then_velocities_are_taken() {
        let mut intake = StateIntake::new(JointSelection::default(), 4).requiring_velocities();
        let err = intake.take(1, &[], &[1.0, 2.0, 3.0, 4.0], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "4 joints: the PD controller (serve.execute / serve.hold_radius) reads positions then velocities, \
             expected 2 joints with velocities (the model's observation_dim 4)"
        );
        assert!(intake.take(2, &[], &[1.0, 2.0], &[0.1, 0.2]).is_ok());
    }
}
