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
    Step { step: u32, channels: u32, min: u64 },
    #[error("image data: {got} bytes, expected step x height = {expected}")]
    DataLength { expected: u64, got: usize },
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

/// What the camera bridge does with an image whose size is not the model's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Reject it (counted as `rejected_size`): the camera must publish the model's size.
    #[default]
    Exact,
    /// Crop the centre to the model's aspect ratio, then average each output pixel over its
    /// box of input pixels (an arm's 640x480 camera into a 32x32 model).
    Area,
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

/// Decode into `frame` (its size is the expected size), resized as `resize` says. Nothing is
/// written on error.
pub fn decode_into(img: &ImageView, frame: &mut Frame, resize: Resize) -> Result<(), FrameError> {
    let encoding: Encoding = img.encoding.parse()?;
    let same_size = (img.width, img.height) == (frame.width, frame.height);
    if !same_size && (resize == Resize::Exact || img.width == 0 || img.height == 0) {
        return Err(FrameError::Size {
            width: frame.width,
            height: frame.height,
            got_width: img.width,
            got_height: img.height,
        });
    }
    // In u64: with resizing the width and height are the message's own, and their products
    // must not wrap into values that pass these checks.
    let channels = encoding.channels();
    let min = u64::from(img.width) * u64::from(channels);
    if u64::from(img.step) < min {
        return Err(FrameError::Step {
            step: img.step,
            channels,
            min,
        });
    }
    let expected = u64::from(img.step) * u64::from(img.height);
    // Exactly: more data than the header describes is a header that lies about the image.
    // Past this check every row of width x channels bytes lies within `data`.
    if img.data.len() as u64 != expected {
        return Err(FrameError::DataLength {
            expected,
            got: img.data.len(),
        });
    }
    let channels = channels as usize;
    if same_size {
        let w = img.width as usize;
        for (row, out) in img.data.chunks(img.step as usize).zip(frame.rgb.chunks_mut(w * 3)) {
            for (px, o) in row[..w * channels].chunks(channels).zip(out.chunks_mut(3)) {
                o.copy_from_slice(&encoding.rgb(px));
            }
        }
    } else {
        area_resize(img, encoding, frame);
    }
    frame.stamp_ns = img.stamp_ns;
    Ok(())
}

impl Encoding {
    /// One pixel of this encoding as RGB.
    fn rgb(self, px: &[u8]) -> [u8; 3] {
        match self {
            Encoding::Rgb8 | Encoding::Rgba8 => [px[0], px[1], px[2]],
            Encoding::Bgr8 | Encoding::Bgra8 => [px[2], px[1], px[0]],
            Encoding::Mono8 => [px[0]; 3],
        }
    }
}

/// `Resize::Area` of a validated, non-empty image: the centred crop of the frame's aspect
/// ratio, each output pixel the rounded mean of its box (at least one input pixel).
fn area_resize(img: &ImageView, encoding: Encoding, frame: &mut Frame) {
    // usize is 64 bits on every target we build: products of two u32 sizes cannot wrap.
    let (sw, sh) = (img.width as usize, img.height as usize);
    let (dw, dh) = (frame.width as usize, frame.height as usize);
    // Wider than the frame: crop the sides; taller: crop top and bottom.
    let (cw, ch) = if sw * dh > sh * dw {
        ((sh * dw / dh).max(1), sh)
    } else {
        (sw, (sw * dh / dw).max(1))
    };
    let (x_off, y_off) = ((sw - cw) / 2, (sh - ch) / 2);
    let span = |i: usize, crop: usize, out: usize, offset: usize| {
        let start = offset + i * crop / out;
        start..(offset + (i + 1) * crop / out).max(start + 1)
    };
    let (step, channels) = (img.step as usize, encoding.channels() as usize);
    for (oy, out_row) in frame.rgb.chunks_mut(dw * 3).enumerate() {
        let rows = span(oy, ch, dh, y_off);
        for (ox, out) in out_row.chunks_mut(3).enumerate() {
            let cols = span(ox, cw, dw, x_off);
            let mut sum = [0u64; 3];
            for y in rows.clone() {
                let row = &img.data[y * step..];
                for x in cols.clone() {
                    let rgb = encoding.rgb(&row[x * channels..]);
                    sum.iter_mut().zip(rgb).for_each(|(s, v)| *s += u64::from(v));
                }
            }
            let n = (rows.len() * cols.len()) as u64;
            for (o, s) in out.iter_mut().zip(sum) {
                *o = ((s + n / 2) / n) as u8;
            }
        }
    }
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
            decode_into(&view(enc, 2, 1, step, &data), &mut f, Resize::Exact).unwrap();
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
        decode_into(&view("rgb8", 1, 2, 4, &[1, 2, 3, 0, 4, 5, 6, 0]), &mut f, Resize::Exact).unwrap();
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
            assert_eq!(decode_into(&img, &mut f, Resize::Exact).unwrap_err().to_string(), msg);
            assert_eq!(f, before);
        }
    }

    /// The pattern both sides of the area-resize parity resize: 70x45 rgb8, value
    /// (7x + 13y + 5c) mod 256 (onnx/tests/test_fruit_swap.py reads the same fixture;
    /// DF_WRITE_AREA_FIXTURE=1 rewrites it, for a resize meant to change, which the Python twin
    /// must then follow).
    fn parity_pattern() -> Vec<u8> {
        let (w, h) = (70, 45);
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| (0..3).map(move |c| ((7 * x + 13 * y + 5 * c) % 256) as u8)))
            .collect()
    }

    #[test]
    fn area_resize_matches_its_python_twin_on_the_shared_fixture() {
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/area_resize_70x45_to_32.bin");
        let mut f = Frame::new(32, 32);
        decode_into(&view("rgb8", 70, 45, 210, &parity_pattern()), &mut f, Resize::Area).unwrap();
        if std::env::var_os("DF_WRITE_AREA_FIXTURE").is_some() {
            std::fs::write(&fixture, &f.rgb).unwrap();
        }
        assert_eq!(f.rgb, std::fs::read(&fixture).unwrap());
    }

    #[test]
    fn area_resize_averages_boxes_of_the_centred_crop() {
        // 4x2 rgb8 -> 2x1: each output pixel is the mean of a 2x2 block.
        let data: Vec<u8> = [
            [0, 10, 20],
            [2, 12, 22],
            [100, 0, 0],
            [104, 0, 0],
            [4, 14, 24],
            [6, 16, 26],
            [100, 0, 0],
            [100, 0, 1],
        ]
        .concat();
        let mut f = Frame::new(2, 1);
        decode_into(&view("rgb8", 4, 2, 12, &data), &mut f, Resize::Area).unwrap();
        assert_eq!(f.rgb, [3, 13, 23, 101, 0, 0]);
        // 6x2 mono8 -> 2x2: a square frame takes the centre 2x2 (columns 2 and 3).
        let data = [9, 9, 1, 2, 9, 9, 9, 9, 3, 4, 9, 9];
        let mut f = Frame::new(2, 2);
        decode_into(&view("mono8", 6, 2, 6, &data), &mut f, Resize::Area).unwrap();
        assert_eq!(f.rgb, [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
        // Smaller than the frame: each input pixel is repeated where it lies.
        let mut f = Frame::new(4, 2);
        decode_into(&view("bgr8", 2, 1, 6, &[3, 2, 1, 6, 5, 4]), &mut f, Resize::Area).unwrap();
        assert_eq!(f.rgb, [[1, 2, 3], [1, 2, 3], [4, 5, 6], [4, 5, 6]].concat().repeat(2));
        // Uneven boxes over padded rows: 5x5 mono8 (step 8) -> 2x2 takes columns and rows
        // 0..2 and 2..5; the first column's mean of 1.5 rounds up.
        let data = [1, 2, 10, 20, 31, 99, 99, 99].repeat(5);
        let mut f = Frame::new(2, 2);
        decode_into(&view("mono8", 5, 5, 8, &data), &mut f, Resize::Area).unwrap();
        assert_eq!(f.rgb, [2, 2, 2, 20, 20, 20].repeat(2));
    }

    #[test]
    fn a_resized_image_is_still_checked_and_an_empty_one_rejected() {
        let mut f = Frame::new(2, 2);
        let err = decode_into(&view("rgb8", 0, 0, 0, &[]), &mut f, Resize::Area).unwrap_err();
        assert_eq!(err.to_string(), "image size 0x0: expected 2x2");
        let err = decode_into(&view("rgb8", 4, 4, 12, &[0; 47]), &mut f, Resize::Area).unwrap_err();
        assert_eq!(err.to_string(), "image data: 47 bytes, expected step x height = 48");
        let err = decode_into(&view("rgb8", 4, 4, 12, &[0; 48]), &mut f, Resize::Exact).unwrap_err();
        assert_eq!(err.to_string(), "image size 4x4: expected 2x2");
        // A width whose width x channels would wrap in u32 to pass a 2-byte step.
        let huge = view("rgb8", 0x5555_5556, 1, 2, &[0; 2]);
        let err = decode_into(&huge, &mut f, Resize::Area).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image step 2: expected at least width x 3 = 4294967298"
        );
        assert_eq!(f.stamp_ns, i64::MIN, "nothing written on error");
    }
}
