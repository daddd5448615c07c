//! The robot's latest state (from `sensor_msgs/JointState`), shared between the input
//! callback and the planner and control threads. Fixed capacity: copying it never allocates.

use parking_lot::Mutex;

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

/// Latest-value cell: writers replace, readers copy. The control tick uses `try_read` so it
/// never waits; a contended read returns None and the tick keeps its previous sample.
#[derive(Debug, Default)]
pub struct StateCell {
    inner: Mutex<Option<StateSample>>,
}

impl StateCell {
    pub fn publish(&self, sample: StateSample) {
        *self.inner.lock() = Some(sample);
    }

    pub fn read(&self) -> Option<StateSample> {
        *self.inner.lock()
    }

    pub fn try_read(&self) -> Option<Option<StateSample>> {
        self.inner.try_lock().map(|g| *g)
    }
}
