//! Camera frames into the planner: decoding of `sensor_msgs/Image` encodings into RGB8 and a
//! ring buffer of preallocated frames between the camera callback and the planner, one per
//! camera.

mod cameras;
mod decode;
mod ring;

pub use cameras::{camera_rings, CameraFrames, CameraRing, CameraStats, Cameras, MAX_CAMERAS};
pub use decode::{decode_into, Encoding, Frame, FrameError, ImageView, Resize};
pub use ring::{clock_reset, frame_ring, FrameReader, FrameStats, FrameStatsSnapshot, FrameWriter, CLOCK_RESET_NS};
