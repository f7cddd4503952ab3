//! What a camera is configured as: the validated `[[camera]]` table, owned here and filled in by `config`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::frame::PixelFormat;

/// Which kind of source a camera is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Synthetic,
    Replay,
    V4l2,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Synthetic => "synthetic",
            SourceKind::Replay => "replay",
            SourceKind::V4l2 => "v4l2",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The source of one camera with its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSettings {
    /// The demo scenes (docs/scene-spec.md), a new scene every `hold_frames` frames, drawn from `seed`.
    Synthetic { seed: u64, hold_frames: u32 },
    /// A directory of PNG/JPEG images or a recorded raw frame file (see `source::replay`), replayed at `fps`,
    /// from the start again after the last frame when `looping`.
    Replay { path: PathBuf, looping: bool },
    /// A V4L2 device (`/dev/video0` or a `/dev/v4l/by-id/...` name) streaming through `buffers` mmap buffers;
    /// no frame within `stall` means the camera stalled (it is flagged and reopened).
    V4l2 {
        device: PathBuf,
        buffers: u32,
        stall: StallTimeout,
    },
}

/// When a V4L2 camera counts as stalled: after this many frame periods without a frame, or after a fixed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallTimeout {
    /// `stall-periods`: a multiple of the negotiated frame period.
    Periods(u32),
    /// `stall-timeout-ms`: a fixed time.
    Fixed(Duration),
}

/// One camera (`[[camera]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraSettings {
    /// Unique name, used in logs and the status line.
    pub name: String,
    pub source: SourceSettings,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Frames per second; 0 delivers as fast as possible (synthetic, replay) or the driver's default (V4L2).
    pub fps: u32,
    /// Frame buffers allocated for this camera at start-up.
    pub pool_size: usize,
}

impl CameraSettings {
    pub fn kind(&self) -> SourceKind {
        match self.source {
            SourceSettings::Synthetic { .. } => SourceKind::Synthetic,
            SourceSettings::Replay { .. } => SourceKind::Replay,
            SourceSettings::V4l2 { .. } => SourceKind::V4l2,
        }
    }

    /// Bytes of each pooled buffer: the largest frame this camera can deliver.
    pub fn max_frame_bytes(&self) -> usize {
        self.format.max_frame_bytes(self.width, self.height)
    }

    /// Time between frames, or `None` for `fps = 0`.
    pub fn frame_period(&self) -> Option<Duration> {
        (self.fps > 0).then(|| Duration::from_nanos(1_000_000_000 / self.fps as u64))
    }
}
