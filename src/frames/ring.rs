//! A ring of preallocated frames between the camera callback (writer) and the planner
//! (reader). Frames cycle through two lock-free rings: `free` (reader → writer) and `filled`
//! (writer → reader), so nothing is allocated after start-up. Newest wins: the reader drains
//! `filled` and keeps only the newest frame, handing the older ones back and counting them as
//! superseded. While the reader is away (a plan takes a while) and no free frame is left, the
//! writer takes the oldest frame back out of `filled` for the new one, so that the newest
//! always gets through and the stale-camera watchdog judges the camera, not the planner's
//! pace; `filled` is therefore a bounded crossbeam channel, which both ends may take from.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::decode::{decode_into, Frame, FrameError, ImageView, Resize};

/// How far an input's stamp may go back before it is taken as a clock reset, not an input out
/// of order (camera frames here, robot states in `control::StateIntake`).
pub const CLOCK_RESET_NS: i64 = 1_000_000_000;

/// Whether `ns` lies more than CLOCK_RESET_NS before `previous_ns`: the clock was reset.
pub fn clock_reset(previous_ns: i64, ns: i64) -> bool {
    ns < previous_ns.saturating_sub(CLOCK_RESET_NS)
}

/// Counters shared by writer and reader. Every frame received ends up counted once as
/// delivered (handed to the planner), superseded (replaced by a newer one before the planner
/// looked), or rejected_*; up to ring capacity + 1 may still be in flight.
#[derive(Debug, Default)]
pub struct FrameStats {
    pub received: AtomicU64,
    pub superseded: AtomicU64,
    pub rejected_encoding: AtomicU64,
    pub rejected_size: AtomicU64,
    pub rejected_malformed: AtomicU64,
    pub rejected_out_of_order: AtomicU64,
    pub rejected_duplicate: AtomicU64,
    /// Frames stamped more than CLOCK_RESET_NS before the previous one, taken as a clock reset.
    pub clock_resets: AtomicU64,
    pub delivered: AtomicU64,
    /// Stamp of the newest frame accepted by the writer (i64::MIN before the first).
    pub newest_stamp_ns: AtomicI64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameStatsSnapshot {
    pub received: u64,
    pub superseded: u64,
    pub rejected_encoding: u64,
    pub rejected_size: u64,
    pub rejected_malformed: u64,
    pub rejected_out_of_order: u64,
    pub rejected_duplicate: u64,
    pub clock_resets: u64,
    pub delivered: u64,
}

impl std::ops::Add for FrameStatsSnapshot {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            received: self.received + o.received,
            superseded: self.superseded + o.superseded,
            rejected_encoding: self.rejected_encoding + o.rejected_encoding,
            rejected_size: self.rejected_size + o.rejected_size,
            rejected_malformed: self.rejected_malformed + o.rejected_malformed,
            rejected_out_of_order: self.rejected_out_of_order + o.rejected_out_of_order,
            rejected_duplicate: self.rejected_duplicate + o.rejected_duplicate,
            clock_resets: self.clock_resets + o.clock_resets,
            delivered: self.delivered + o.delivered,
        }
    }
}

impl FrameStats {
    pub fn snapshot(&self) -> FrameStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FrameStatsSnapshot {
            received: r(&self.received),
            superseded: r(&self.superseded),
            rejected_encoding: r(&self.rejected_encoding),
            rejected_size: r(&self.rejected_size),
            rejected_malformed: r(&self.rejected_malformed),
            rejected_out_of_order: r(&self.rejected_out_of_order),
            rejected_duplicate: r(&self.rejected_duplicate),
            clock_resets: r(&self.clock_resets),
            delivered: r(&self.delivered),
        }
    }
}

pub struct FrameWriter {
    free: HeapCons<Box<Frame>>,
    filled: Sender<Box<Frame>>,
    /// `filled` from the writer's end: where it takes back the oldest undelivered frame.
    reclaim: Receiver<Box<Frame>>,
    /// A frame taken from `free` and not yet filled: kept across decode errors so that no
    /// frame leaves the pool.
    spare: Option<Box<Frame>>,
    last_stamp_ns: Option<i64>,
    resize: Resize,
    stats: Arc<FrameStats>,
}

pub struct FrameReader {
    free: HeapProd<Box<Frame>>,
    filled: Receiver<Box<Frame>>,
    current: Option<Box<Frame>>,
    /// Whether `current` was handed to the planner (else replacing it counts as superseded).
    current_seen: bool,
    stats: Arc<FrameStats>,
}

/// A ring holding up to `capacity` undelivered frames of `width` x `height`, images of other
/// sizes resized as `resize` says.
pub fn frame_ring(capacity: usize, width: u32, height: u32, resize: Resize) -> (FrameWriter, FrameReader) {
    // capacity in flight + the reader's current frame + the one being written.
    let pool = capacity.max(1) + 2;
    let (mut free_prod, free_cons) = HeapRb::<Box<Frame>>::new(pool).split();
    let (filled_tx, filled_rx) = bounded::<Box<Frame>>(pool);
    for _ in 0..pool {
        let _ = free_prod.try_push(Box::new(Frame::new(width, height)));
    }
    let stats = Arc::new(FrameStats {
        newest_stamp_ns: AtomicI64::new(i64::MIN),
        ..FrameStats::default()
    });
    (
        FrameWriter {
            free: free_cons,
            filled: filled_tx,
            reclaim: filled_rx.clone(),
            spare: None,
            last_stamp_ns: None,
            resize,
            stats: stats.clone(),
        },
        FrameReader {
            free: free_prod,
            filled: filled_rx,
            current: None,
            current_seen: false,
            stats,
        },
    )
}

impl FrameWriter {
    /// Decode one image into the ring. Errors are counted and returned; the ring is unchanged.
    pub fn write(&mut self, img: &ImageView) -> Result<(), FrameError> {
        let s = &self.stats;
        s.received.fetch_add(1, Ordering::Relaxed);
        if let Some(prev) = self.last_stamp_ns {
            // A jump back this far is a new clock (a simulator reset, a bag played in a
            // loop, after a frame stamped far ahead): start over from it rather than reject
            // every frame until the stamps pass the old ones.
            if img.stamp_ns < prev && !clock_reset(prev, img.stamp_ns) {
                s.rejected_out_of_order.fetch_add(1, Ordering::Relaxed);
                return Err(FrameError::OutOfOrder {
                    stamp_ns: img.stamp_ns,
                    previous_ns: prev,
                });
            }
            if img.stamp_ns == prev {
                s.rejected_duplicate.fetch_add(1, Ordering::Relaxed);
                return Err(FrameError::Duplicate { stamp_ns: img.stamp_ns });
            }
        }
        if self.spare.is_none() {
            self.spare = self
                .free
                .try_pop()
                .or_else(|| {
                    // The reader is away and every other frame waits for it: the oldest makes
                    // room.
                    let oldest = self.reclaim.try_recv().ok();
                    if oldest.is_some() {
                        s.superseded.fetch_add(1, Ordering::Relaxed);
                    }
                    oldest
                })
                // Nothing waiting either: the reader drained `filled` in between, and it holds
                // at most two frames of a pool of at least three, so one is free now (and only
                // this writer takes free frames).
                .or_else(|| self.free.try_pop());
        }
        let frame = self.spare.as_mut().expect("a frame free or waiting in the pool");
        if let Err(e) = decode_into(img, frame, self.resize) {
            let counter = match e {
                FrameError::Encoding { .. } => &s.rejected_encoding,
                FrameError::Size { .. } => &s.rejected_size,
                _ => &s.rejected_malformed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        // Counted once the frame is taken, so that a reset frame dropped or rejected is not
        // counted again with the next one.
        if self.last_stamp_ns.is_some_and(|prev| img.stamp_ns < prev) {
            s.clock_resets.fetch_add(1, Ordering::Relaxed);
        }
        self.last_stamp_ns = Some(img.stamp_ns);
        s.newest_stamp_ns.store(img.stamp_ns, Ordering::Release);
        let frame = self.spare.take().expect("checked above");
        if self.filled.try_send(frame).is_err() {
            unreachable!("the pool never holds more frames than `filled` can take");
        }
        Ok(())
    }

    pub fn stats(&self) -> &Arc<FrameStats> {
        &self.stats
    }
}

impl FrameReader {
    /// The newest frame received so far (older undelivered ones are returned to the pool).
    pub fn latest(&mut self) -> Option<&Frame> {
        while let Ok(frame) = self.filled.try_recv() {
            if let Some(old) = self.current.replace(frame) {
                if !self.current_seen {
                    self.stats.superseded.fetch_add(1, Ordering::Relaxed);
                }
                let _ = self.free.try_push(old);
            }
            self.current_seen = false;
        }
        if self.current.is_some() && !self.current_seen {
            self.current_seen = true;
            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
        }
        self.current.as_deref()
    }

    pub fn stats(&self) -> &Arc<FrameStats> {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(stamp_ns: i64, value: u8, data: &mut Vec<u8>) -> ImageView<'_> {
        data.clear();
        data.resize(2 * 2 * 3, value);
        ImageView {
            encoding: "rgb8",
            width: 2,
            height: 2,
            step: 6,
            data,
            stamp_ns,
        }
    }

    #[test]
    fn newest_wins_and_older_frames_are_counted_as_superseded() {
        let (mut w, mut r) = frame_ring(4, 2, 2, Resize::Exact);
        let mut buf = Vec::new();
        assert!(r.latest().is_none());
        for i in 0..3 {
            w.write(&img(i, i as u8, &mut buf)).unwrap();
        }
        let f = r.latest().unwrap();
        assert_eq!((f.stamp_ns, f.rgb[0]), (2, 2));
        // Asking again without new frames returns the same frame and counts nothing new.
        assert_eq!(r.latest().unwrap().stamp_ns, 2);
        let s = w.stats().snapshot();
        assert_eq!((s.received, s.delivered, s.superseded), (3, 1, 2));
    }

    #[test]
    fn a_reader_away_gets_the_newest_frame_and_the_writer_keeps_its_stamp_fresh() {
        let (mut w, mut r) = frame_ring(2, 2, 2, Resize::Exact);
        let mut buf = Vec::new();
        assert_eq!(r.latest(), None);
        // The planner is away for 10 frames: the pool (capacity + 2 = 4) fills after 4, and
        // each later frame takes the oldest waiting one's place.
        for i in 0..10 {
            w.write(&img(i, i as u8, &mut buf)).unwrap();
            assert_eq!(w.stats().newest_stamp_ns.load(Ordering::Acquire), i);
        }
        assert_eq!(w.stats().snapshot().superseded, 6);
        let f = r.latest().unwrap();
        assert_eq!((f.stamp_ns, f.rgb[0]), (9, 9));
        let s = w.stats().snapshot();
        assert_eq!((s.received, s.delivered, s.superseded), (10, 1, 9));
        // The reader holds one frame; the other three cycle on.
        for i in 10..20 {
            w.write(&img(i, i as u8, &mut buf)).unwrap();
        }
        let f = r.latest().unwrap();
        assert_eq!((f.stamp_ns, f.rgb[0]), (19, 19));
        let s = w.stats().snapshot();
        assert_eq!((s.received, s.delivered + s.superseded), (20, 20));
    }

    #[test]
    fn a_writer_and_a_reader_racing_lose_no_frame_and_never_run_dry() {
        let (mut w, mut r) = frame_ring(1, 2, 2, Resize::Exact);
        let stats = w.stats().clone();
        let frames = 200_000;
        let writer = std::thread::spawn(move || {
            let mut buf = Vec::new();
            for i in 1..=frames {
                w.write(&img(i, 0, &mut buf)).unwrap();
            }
        });
        let mut newest = 0;
        while !writer.is_finished() {
            if let Some(f) = r.latest() {
                assert!(f.stamp_ns >= newest, "frames in order");
                newest = f.stamp_ns;
            }
        }
        writer.join().expect("the writer never found the pool empty");
        assert_eq!(r.latest().unwrap().stamp_ns, frames, "the newest gets through");
        let s = stats.snapshot();
        assert_eq!(s.delivered + s.superseded, s.received);
    }

    #[test]
    fn rejected_frames_are_counted_by_kind_and_lose_no_buffer() {
        let (mut w, mut r) = frame_ring(1, 2, 2, Resize::Exact);
        let mut buf = Vec::new();
        w.write(&img(5, 0, &mut buf)).unwrap();
        assert!(matches!(
            w.write(&img(4, 0, &mut buf)),
            Err(FrameError::OutOfOrder { .. })
        ));
        assert!(matches!(
            w.write(&img(5, 0, &mut buf)),
            Err(FrameError::Duplicate { .. })
        ));
        let bad = ImageView {
            encoding: "yuv422",
            width: 2,
            height: 2,
            step: 4,
            data: &[0; 8],
            stamp_ns: 6,
        };
        assert!(w.write(&bad).is_err());
        let small = ImageView {
            encoding: "rgb8",
            width: 1,
            height: 1,
            step: 3,
            data: &[0; 3],
            stamp_ns: 7,
        };
        assert!(w.write(&small).is_err());
        for _ in 0..20 {
            let truncated = ImageView {
                encoding: "rgb8",
                width: 2,
                height: 2,
                step: 6,
                data: &[0; 5],
                stamp_ns: 8,
            };
            assert!(w.write(&truncated).is_err());
        }
        let s = w.stats().snapshot();
        assert_eq!(
            (
                s.rejected_out_of_order,
                s.rejected_duplicate,
                s.rejected_encoding,
                s.rejected_size,
                s.rejected_malformed
            ),
            (1, 1, 1, 1, 20)
        );
        assert_eq!(r.latest().unwrap().stamp_ns, 5);
        w.write(&img(9, 0, &mut buf)).unwrap();
        assert_eq!(r.latest().unwrap().stamp_ns, 9);
        // More data than step x height describes is refused too.
        let oversized = ImageView {
            data: &[0; 13],
            ..img(10, 0, &mut buf)
        };
        assert!(matches!(
            w.write(&oversized),
            Err(FrameError::DataLength { expected: 12, got: 13 })
        ));
    }

    #[test]
    fn a_clock_that_jumps_back_starts_over_instead_of_locking_the_camera_out() {
        let (mut w, mut r) = frame_ring(2, 2, 2, Resize::Exact);
        let mut buf = Vec::new();
        let s = 1_000_000_000;
        // One frame stamped an hour ahead (or a simulator reset after it): the frames after
        // it are taken as a new clock, not rejected for an hour.
        w.write(&img(3600 * s, 0, &mut buf)).unwrap();
        w.write(&img(2 * s, 1, &mut buf)).unwrap();
        w.write(&img(2 * s + 1, 2, &mut buf)).unwrap();
        assert_eq!(r.latest().unwrap().stamp_ns, 2 * s + 1);
        // A small step back is still a frame out of order.
        assert!(matches!(
            w.write(&img(2 * s - 1000, 3, &mut buf)),
            Err(FrameError::OutOfOrder { .. })
        ));
        let snap = w.stats().snapshot();
        assert_eq!((snap.clock_resets, snap.rejected_out_of_order), (1, 1));
    }
}
