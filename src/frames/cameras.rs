//! Every camera the planner sees, one frame ring each: the callbacks write their own ring, the
//! planner reads the newest frame of all of them together, and the control tick judges the
//! freshness of the set by its stalest camera.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::decode::Resize;
use super::ring::{frame_ring, FrameReader, FrameStats, FrameStatsSnapshot, FrameWriter};

/// Most cameras one model may see (the planner passes their frames without allocating).
pub const MAX_CAMERAS: usize = 4;

/// One camera input: its topic and the frames it must deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraRing {
    pub topic: String,
    pub width: u32,
    pub height: u32,
    pub capacity: usize,
    pub resize: Resize,
}

/// The cameras' newest frames for one planner step, in the rings' (the contract's) order:
/// rgb8 bytes and their stamps.
#[derive(Debug, Clone, Copy)]
pub struct CameraFrames<'a> {
    pub rgb: &'a [&'a [u8]],
    pub stamps_ns: &'a [i64],
}

/// The reading side of every camera's ring.
pub struct Cameras {
    readers: Vec<FrameReader>,
}

/// The cameras' counters, shared with the control tick and the diagnostics.
#[derive(Clone, Default)]
pub struct CameraStats(Vec<Arc<FrameStats>>);

/// A ring per camera, in the order given; at most `MAX_CAMERAS`.
pub fn camera_rings(rings: &[CameraRing]) -> (Vec<FrameWriter>, Cameras) {
    assert!(rings.len() <= MAX_CAMERAS, "at most {MAX_CAMERAS} cameras");
    let (writers, readers) = rings
        .iter()
        .map(|r| frame_ring(r.capacity, r.width, r.height, r.resize))
        .unzip();
    (writers, Cameras { readers })
}

impl Cameras {
    /// The newest frame of every camera, its bytes in `rgb` and its stamp in `stamps_ns`
    /// (buffers of the caller's, so that nothing is allocated); None until every camera has
    /// delivered a frame.
    pub fn latest<'a>(
        &'a mut self,
        rgb: &'a mut [&'a [u8]; MAX_CAMERAS],
        stamps_ns: &'a mut [i64; MAX_CAMERAS],
    ) -> Option<CameraFrames<'a>> {
        let (n, mut complete) = (self.readers.len(), true);
        for ((slot, stamp), reader) in rgb.iter_mut().zip(stamps_ns.iter_mut()).zip(self.readers.iter_mut()) {
            match reader.latest() {
                Some(frame) => (*slot, *stamp) = (&frame.rgb, frame.stamp_ns),
                None => complete = false,
            }
        }
        let (rgb, stamps_ns): (&'a [&'a [u8]; MAX_CAMERAS], &'a [i64; MAX_CAMERAS]) = (rgb, stamps_ns);
        complete.then_some(CameraFrames {
            rgb: &rgb[..n],
            stamps_ns: &stamps_ns[..n],
        })
    }

    pub fn stats(&self) -> CameraStats {
        CameraStats(self.readers.iter().map(|r| r.stats().clone()).collect())
    }
}

impl CameraStats {
    /// Of the cameras' newest frames, the stamp furthest from `now_ns` either way: the set is
    /// as fresh as that (a camera stamped ahead of the clock, as after a simulator reset while
    /// it was silent, must be judged too, not hidden behind the oldest). None when a camera has
    /// sent nothing yet, or when there are no cameras.
    pub fn stalest_stamp_ns(&self, now_ns: i64) -> Option<i64> {
        let mut stalest: Option<i64> = None;
        for s in &self.0 {
            let stamp = s.newest_stamp_ns.load(Ordering::Acquire);
            if stamp == i64::MIN {
                return None;
            }
            let off = |t: i64| now_ns.abs_diff(t);
            if stalest.is_none_or(|worst| off(stamp) > off(worst)) {
                stalest = Some(stamp);
            }
        }
        stalest
    }

    /// Counters summed over the cameras.
    pub fn snapshot(&self) -> FrameStatsSnapshot {
        self.0
            .iter()
            .fold(FrameStatsSnapshot::default(), |sum, s| sum + s.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::ImageView;

    fn ring(topic: &str) -> CameraRing {
        CameraRing {
            topic: topic.into(),
            width: 1,
            height: 1,
            capacity: 2,
            resize: Resize::Exact,
        }
    }

    fn pixel(stamp_ns: i64, value: &[u8; 3]) -> ImageView<'_> {
        ImageView {
            encoding: "rgb8",
            width: 1,
            height: 1,
            step: 3,
            data: value,
            stamp_ns,
        }
    }

    #[test]
    fn the_set_is_complete_and_as_fresh_as_its_stalest_camera() {
        let (mut writers, mut cameras) = camera_rings(&[ring("/front"), ring("/wrist")]);
        let stats = cameras.stats();
        writers[0].write(&pixel(10, &[1, 2, 3])).unwrap();
        assert_eq!(stats.stalest_stamp_ns(10), None, "the wrist camera has sent nothing");
        assert!(cameras.latest(&mut [&[]; MAX_CAMERAS], &mut [0; MAX_CAMERAS]).is_none());
        writers[1].write(&pixel(5, &[4, 5, 6])).unwrap();
        writers[0].write(&pixel(20, &[7, 8, 9])).unwrap();
        assert_eq!(stats.stalest_stamp_ns(20), Some(5));
        // A camera stamped ahead of the clock is the staler one when it is further off.
        assert_eq!(stats.stalest_stamp_ns(12), Some(20));
        assert_eq!(stats.stalest_stamp_ns(13), Some(5));
        let (mut rgb, mut stamps) = ([&[][..]; MAX_CAMERAS], [0; MAX_CAMERAS]);
        let latest = cameras.latest(&mut rgb, &mut stamps).unwrap();
        assert_eq!(latest.rgb, [&[7, 8, 9][..], &[4, 5, 6][..]]);
        assert_eq!(latest.stamps_ns, [20, 5]);
        let sum = stats.snapshot();
        assert_eq!((sum.received, sum.delivered, sum.superseded), (3, 3, 0));
    }
}
