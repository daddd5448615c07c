//! `sensor_msgs/Image` → packed RGB8 of the configured size, in a preallocated frame.

use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum FrameError {
    #[error("image encoding {got:?}: expected one of rgb8, bgr8, rgba8, bgra8, mono8")]
    Encoding { got: String },
    #[error("image size {got_width}x{got_height}: expected {width}x{height}")]
    Size {
        width: u32,
        height: u32,
        got_width: u32,
        got_height: u32,
    },
    #[error("image step {step}: expected at least width x {channels} = {min}")]
    Step { step: u32, channels: u32, min: u32 },
    #[error("image data: {got} bytes, expected step x height = {expected}")]
    DataLength { expected: usize, got: usize },
    #[error("image stamp {stamp_ns} ns is before the previous frame's {previous_ns} ns")]
    OutOfOrder { stamp_ns: i64, previous_ns: i64 },
    #[error("image stamp {stamp_ns} ns repeats the previous frame's")]
    Duplicate { stamp_ns: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Rgb8,
    Bgr8,
    Rgba8,
    Bgra8,
    Mono8,
}

impl Encoding {
    pub fn channels(self) -> u32 {
        match self {
            Self::Mono8 => 1,
            Self::Rgb8 | Self::Bgr8 => 3,
            Self::Rgba8 | Self::Bgra8 => 4,
        }
    }
}

impl FromStr for Encoding {
    type Err = FrameError;
    fn from_str(s: &str) -> Result<Self, FrameError> {
        match s {
            "rgb8" => Ok(Self::Rgb8),
            "bgr8" => Ok(Self::Bgr8),
            "rgba8" => Ok(Self::Rgba8),
            "bgra8" => Ok(Self::Bgra8),
            "mono8" => Ok(Self::Mono8),
            other => Err(FrameError::Encoding { got: other.to_owned() }),
        }
    }
}

/// A borrowed image message.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    pub encoding: &'a str,
    pub width: u32,
    pub height: u32,
    pub step: u32,
    pub data: &'a [u8],
    pub stamp_ns: i64,
}

/// A decoded frame: packed RGB8, `width * height * 3` bytes, allocated once.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub stamp_ns: i64,
}

impl Frame {
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            rgb: vec![0; (width * height * 3) as usize],
            stamp_ns: i64::MIN,
        }
    }
}

/// Decode into `frame` (its size is the expected size). Nothing is written on error.
pub fn decode_into(img: &ImageView, frame: &mut Frame) -> Result<(), FrameError> {
    let encoding: Encoding = img.encoding.parse()?;
    if (img.width, img.height) != (frame.width, frame.height) {
        return Err(FrameError::Size {
            width: frame.width,
            height: frame.height,
            got_width: img.width,
            got_height: img.height,
        });
    }
    let channels = encoding.channels();
    let min = img.width * channels;
    if img.step < min {
        return Err(FrameError::Step {
            step: img.step,
            channels,
            min,
        });
    }
    let expected = img.step as usize * img.height as usize;
    // Exactly: more data than the header describes is a header that lies about the image.
    if img.data.len() != expected {
        return Err(FrameError::DataLength {
            expected,
            got: img.data.len(),
        });
    }
    let w = img.width as usize;
    for (row, out) in img.data.chunks(img.step as usize).zip(frame.rgb.chunks_mut(w * 3)) {
        let row = &row[..w * channels as usize];
        for (px, o) in row.chunks(channels as usize).zip(out.chunks_mut(3)) {
            let (r, g, b) = match encoding {
                Encoding::Rgb8 | Encoding::Rgba8 => (px[0], px[1], px[2]),
                Encoding::Bgr8 | Encoding::Bgra8 => (px[2], px[1], px[0]),
                Encoding::Mono8 => (px[0], px[0], px[0]),
            };
            o.copy_from_slice(&[r, g, b]);
        }
    }
    frame.stamp_ns = img.stamp_ns;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(encoding: &'a str, w: u32, h: u32, step: u32, data: &'a [u8]) -> ImageView<'a> {
        ImageView {
            encoding,
            width: w,
            height: h,
            step,
            data,
            stamp_ns: 7,
        }
    }

    #[test]
    fn every_supported_encoding_becomes_rgb() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("rgb8", vec![1, 2, 3, 4, 5, 6]),
            ("bgr8", vec![3, 2, 1, 6, 5, 4]),
            ("rgba8", vec![1, 2, 3, 255, 4, 5, 6, 255]),
            ("bgra8", vec![3, 2, 1, 255, 6, 5, 4, 255]),
            ("mono8", vec![9, 8]),
        ];
        for (enc, data) in cases {
            let mut f = Frame::new(2, 1);
            let step = data.len() as u32;
            decode_into(&view(enc, 2, 1, step, &data), &mut f).unwrap();
            let expected = if enc == "mono8" {
                vec![9, 9, 9, 8, 8, 8]
            } else {
                vec![1, 2, 3, 4, 5, 6]
            };
            assert_eq!(f.rgb, expected, "{enc}");
            assert_eq!(f.stamp_ns, 7);
        }
    }

    #[test]
    fn row_padding_is_skipped() {
        let mut f = Frame::new(1, 2);
        decode_into(&view("rgb8", 1, 2, 4, &[1, 2, 3, 0, 4, 5, 6, 0]), &mut f).unwrap();
        assert_eq!(f.rgb, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn bad_images_are_named_and_leave_the_frame_alone() {
        let mut f = Frame::new(2, 2);
        let before = f.clone();
        let cases = [
            (
                view("yuv422", 2, 2, 4, &[0; 8]),
                "image encoding \"yuv422\": expected one of rgb8, bgr8, rgba8, bgra8, mono8",
            ),
            (view("rgb8", 3, 2, 9, &[0; 18]), "image size 3x2: expected 2x2"),
            (
                view("rgb8", 2, 2, 5, &[0; 10]),
                "image step 5: expected at least width x 3 = 6",
            ),
            (
                view("rgb8", 2, 2, 6, &[0; 11]),
                "image data: 11 bytes, expected step x height = 12",
            ),
        ];
        for (img, msg) in cases {
            assert_eq!(decode_into(&img, &mut f).unwrap_err().to_string(), msg);
            assert_eq!(f, before);
        }
    }
}
