//! Pixel formats, frame metadata and pooled frame buffers.
//!
//! Real-time contract: every [`FrameBuf`] is allocated when its [`FramePool`] is made, with a fixed length
//! (the largest frame the camera can deliver); writing a frame into it never reallocates. [`FramePool::take`]
//! and [`FramePool::give`] are lock-free (a crossbeam `ArrayQueue`) and never allocate or block.

use std::fmt;
use std::str::FromStr;

use crossbeam_queue::ArrayQueue;

/// How a frame's bytes encode its pixels (the V4L2 formats ocellus reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PixelFormat {
    /// Packed 4:2:2, `Y0 U Y1 V`, 2 bytes per pixel (V4L2 `YUYV`). Width must be even.
    #[default]
    Yuyv,
    /// 4:2:0, a Y plane then an interleaved `U V` plane at half resolution (V4L2 `NV12`). Width and height
    /// must be even.
    Nv12,
    /// 8-bit luma only, full range (V4L2 `GREY`).
    Grey,
    /// Packed `R G B`, 3 bytes per pixel (V4L2 `RGB3`).
    Rgb24,
    /// Packed `B G R`, 3 bytes per pixel (V4L2 `BGR3`).
    Bgr24,
    /// One baseline JPEG per frame (V4L2 `MJPG`); the byte count varies per frame.
    Mjpeg,
}

impl PixelFormat {
    /// Every format, in the order the config documentation lists them.
    pub const ALL: [PixelFormat; 6] = [
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Grey,
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
        PixelFormat::Mjpeg,
    ];

    /// The config name (`pixel-format = "yuyv"`).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Nv12 => "nv12",
            PixelFormat::Grey => "grey",
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Bgr24 => "bgr24",
            PixelFormat::Mjpeg => "mjpeg",
        }
    }

    /// The format of a config name (case-insensitive), if there is one.
    pub fn from_name(name: &str) -> Option<PixelFormat> {
        PixelFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// The names of all formats, comma-separated, for error messages.
    pub fn names() -> &'static str {
        "yuyv, nv12, grey, rgb24, bgr24, mjpeg"
    }

    /// The V4L2 FourCC code as four ASCII bytes.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Rgb24 => *b"RGB3",
            PixelFormat::Bgr24 => *b"BGR3",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    /// The FourCC as V4L2 packs it into a `u32` (`v4l2_fourcc(a, b, c, d)`, little-endian).
    pub fn fourcc_u32(self) -> u32 {
        u32::from_le_bytes(self.fourcc())
    }

    /// The format of a FourCC, if ocellus reads it. `JPEG` is accepted as an alias of `MJPG`.
    pub fn from_fourcc(code: [u8; 4]) -> Option<PixelFormat> {
        if &code == b"JPEG" {
            return Some(PixelFormat::Mjpeg);
        }
        PixelFormat::ALL.into_iter().find(|f| f.fourcc() == code)
    }

    /// The format of a V4L2 `u32` FourCC, if ocellus reads it.
    pub fn from_fourcc_u32(code: u32) -> Option<PixelFormat> {
        PixelFormat::from_fourcc(code.to_le_bytes())
    }

    /// Whether frames are compressed (their byte count varies).
    pub fn is_compressed(self) -> bool {
        self == PixelFormat::Mjpeg
    }

    /// Exact bytes of one `width` x `height` frame, or `None` for MJPEG (variable) or a size the format
    /// cannot hold (see [`PixelFormat::check_size`]).
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<usize> {
        self.check_size(width, height).ok()?;
        let pixels = width as usize * height as usize;
        match self {
            PixelFormat::Yuyv => Some(pixels * 2),
            PixelFormat::Nv12 => Some(pixels + pixels / 2),
            PixelFormat::Grey => Some(pixels),
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => Some(pixels * 3),
            PixelFormat::Mjpeg => None,
        }
    }

    /// Bytes a buffer needs to hold any frame of this format and size: the exact size for raw formats; for
    /// MJPEG an upper bound (3 bytes per pixel plus 64 KiB of headers), above what a camera or the synthetic
    /// encoder produces for a frame of that size.
    pub fn max_frame_bytes(self, width: u32, height: u32) -> usize {
        match self {
            PixelFormat::Mjpeg => width as usize * height as usize * 3 + 65_536,
            _ => self.frame_bytes(width, height).unwrap_or(0),
        }
    }

    /// Checks that a frame of this format can have this size: non-zero, at most 16384 per side, even width for
    /// YUYV, even width and height for NV12.
    pub fn check_size(self, width: u32, height: u32) -> Result<(), &'static str> {
        if width == 0 || height == 0 {
            return Err("width and height must be at least 1");
        }
        if width > 16_384 || height > 16_384 {
            return Err("width and height must be at most 16384");
        }
        match self {
            PixelFormat::Yuyv if width % 2 != 0 => {
                Err("yuyv needs an even width (two pixels share one U and V)")
            }
            PixelFormat::Nv12 if width % 2 != 0 || height % 2 != 0 => {
                Err("nv12 needs an even width and height (2x2 pixels share one U and V)")
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a [`PixelFormat`] name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPixelFormat(pub String);

impl fmt::Display for UnknownPixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown format '{}' (expected one of {})",
            self.0,
            PixelFormat::names()
        )
    }
}

impl std::error::Error for UnknownPixelFormat {}

impl FromStr for PixelFormat {
    type Err = UnknownPixelFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PixelFormat::from_name(s).ok_or_else(|| UnknownPixelFormat(s.to_owned()))
    }
}

/// What a frame is: where and when it was captured and how its bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// Index of the camera in the config.
    pub camera: usize,
    /// Frame number from the source, increasing by one per delivered frame (V4L2: the driver's sequence,
    /// where a gap means dropped frames).
    pub sequence: u64,
    /// Capture time on CLOCK_MONOTONIC, in nanoseconds (the clock of V4L2 buffer timestamps).
    pub capture_ns: u64,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Valid bytes at the start of [`FrameBuf::data`].
    pub bytes: usize,
    /// Ground truth of the synthetic camera (a scene class index), `None` for real cameras.
    pub label: Option<u16>,
}

/// A frame buffer of fixed length: `data.len()` is set at creation and never changes; the first
/// `meta.bytes` bytes hold the current frame.
#[derive(Debug, Clone)]
pub struct FrameBuf {
    pub meta: FrameMeta,
    pub data: Vec<u8>,
}

impl FrameBuf {
    /// A zeroed buffer of `capacity` bytes (allocated here, once).
    pub fn new(capacity: usize) -> FrameBuf {
        FrameBuf {
            meta: FrameMeta::default(),
            data: vec![0; capacity],
        }
    }

    /// The fixed size of the buffer in bytes.
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// The current frame's bytes (`data[..meta.bytes]`, clamped to the buffer).
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.meta.bytes.min(self.data.len())]
    }
}

/// A fixed set of equally sized frame buffers, allocated at start-up and recycled.
///
/// `take` and `give` are lock-free and may be called from any thread.
#[derive(Debug)]
pub struct FramePool {
    queue: ArrayQueue<FrameBuf>,
    buf_bytes: usize,
}

impl FramePool {
    /// Allocates `count` buffers of `buf_bytes` bytes each. A `count` of 0 is treated as 1.
    pub fn new(count: usize, buf_bytes: usize) -> FramePool {
        let count = count.max(1);
        let queue = ArrayQueue::new(count);
        for _ in 0..count {
            // Cannot fail: the queue has exactly `count` slots.
            let _ = queue.push(FrameBuf::new(buf_bytes));
        }
        FramePool { queue, buf_bytes }
    }

    /// A free buffer, or `None` when all are in use.
    pub fn take(&self) -> Option<FrameBuf> {
        self.queue.pop()
    }

    /// Returns a buffer to the pool. A buffer of another size, or one more than the pool holds, is handed
    /// back.
    pub fn give(&self, buf: FrameBuf) -> Result<(), FrameBuf> {
        if buf.data.len() != self.buf_bytes {
            return Err(buf);
        }
        self.queue.push(buf)
    }

    /// Number of buffers the pool was made with.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Number of buffers free now.
    pub fn available(&self) -> usize {
        self.queue.len()
    }

    /// Size of each buffer in bytes.
    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_fourccs_round_trip() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_name(f.name()), Some(f));
            assert_eq!(f.name().parse::<PixelFormat>(), Ok(f));
            assert_eq!(PixelFormat::from_fourcc(f.fourcc()), Some(f));
            assert_eq!(PixelFormat::from_fourcc_u32(f.fourcc_u32()), Some(f));
        }
        assert_eq!(PixelFormat::Yuyv.fourcc_u32(), 0x5659_5559);
        let err = "yuv2".parse::<PixelFormat>().unwrap_err().to_string();
        assert!(err.contains("'yuv2'") && err.contains("nv12"), "{err}");
    }

    #[test]
    fn frame_sizes() {
        assert_eq!(PixelFormat::Yuyv.frame_bytes(640, 480), Some(614_400));
        assert_eq!(PixelFormat::Nv12.frame_bytes(640, 480), Some(460_800));
        assert_eq!(PixelFormat::Grey.frame_bytes(640, 480), Some(307_200));
        assert_eq!(PixelFormat::Bgr24.frame_bytes(640, 480), Some(921_600));
        assert_eq!(PixelFormat::Mjpeg.frame_bytes(640, 480), None);
        assert!(PixelFormat::Mjpeg.max_frame_bytes(640, 480) > 921_600);
        assert_eq!(PixelFormat::Yuyv.frame_bytes(641, 480), None);
        assert_eq!(PixelFormat::Nv12.frame_bytes(640, 481), None);
        assert_eq!(PixelFormat::Grey.frame_bytes(0, 480), None);
    }

    #[test]
    fn pool_recycles_and_refuses_strangers() {
        let pool = FramePool::new(2, 16);
        let a = pool.take().expect("first buffer");
        let b = pool.take().expect("second buffer");
        assert!(pool.take().is_none());
        assert_eq!(pool.available(), 0);
        pool.give(a).expect("own buffer returns");
        assert!(pool.give(FrameBuf::new(8)).is_err());
        pool.give(b).expect("own buffer returns");
        assert!(pool.give(FrameBuf::new(16)).is_err(), "pool is full");
        assert_eq!(pool.available(), 2);
    }
}
