//! Frame sources: where frames come from, behind one trait.
//!
//! Real-time contract: a source allocates what it needs in `new` and `start` (scratch buffers, decoded replay
//! frames); `next_frame` writes into the caller's pooled [`FrameBuf`] and never allocates or reallocates it
//! (one exception: the synthetic camera's MJPEG encoder allocates inside `jpeg-encoder`). `next_frame` blocks
//! until the next frame is due (pacing to `fps`); the V4L2 source blocks on the device until a frame or its
//! stall timeout ([`SourceError::Stalled`]).

use std::path::PathBuf;

use crate::frame::{FrameBuf, PixelFormat};

pub mod replay;
mod settings;
pub mod synthetic;
pub mod v4l2;

pub use replay::{write_raw_file, RawFrameReader, RawFrameWriter, ReplayProbe, ReplaySource};
pub use settings::{CameraSettings, SourceKind, SourceSettings, StallTimeout};
pub use synthetic::SyntheticSource;
pub use v4l2::{SequenceGaps, V4l2Source};

/// A camera, file or generator that delivers frames one at a time.
pub trait FrameSource: Send {
    /// One line for logs: kind, name, format, size, rate.
    fn describe(&self) -> String;
    /// Opens the source and checks that it can deliver the configured format and size; allocates what
    /// `next_frame` needs. Errors here are configuration or hardware problems a person must fix.
    fn start(&mut self) -> Result<(), SourceError>;
    /// Blocks until the next frame (or a timeout); writes it into `buf` (never reallocates it) and fills
    /// `buf.meta`.
    fn next_frame(&mut self, buf: &mut FrameBuf) -> Result<(), SourceError>;
    /// Releases the device or file; `start` may be called again.
    fn stop(&mut self);
    /// Bytes a buffer needs to hold any frame of this source (pools are sized with it).
    fn max_frame_bytes(&self) -> usize;
}

/// Why a source could not start or deliver a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("camera {camera}: cannot deliver {format} at {width}x{height}: {reason}")]
    Unsupported {
        camera: String,
        format: PixelFormat,
        width: u32,
        height: u32,
        reason: String,
    },
    #[error("failed to open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    BadFile { path: PathBuf, message: String },
    #[error("frame buffer of {capacity} bytes is too small for a {needed}-byte frame: size pools with max_frame_bytes()")]
    BufferTooSmall { needed: usize, capacity: usize },
    #[error("camera {camera}: next_frame called before start()")]
    NotStarted { camera: String },
    #[error("camera {camera}: replay reached its last frame (set loop = true to replay again)")]
    EndOfStream { camera: String },
    #[error("camera {camera}: no frame within {timeout_ms} ms")]
    Timeout { camera: String, timeout_ms: u64 },
    #[error("camera {camera}: encoding the frame as {format} failed: {message}")]
    Encode {
        camera: String,
        format: PixelFormat,
        message: String,
    },
    #[error("camera {camera}: no frame within {waited_ms} ms: the camera stalled (it is reopened; if it is only slow, raise stall-periods or stall-timeout-ms)")]
    Stalled { camera: String, waited_ms: u64 },
    #[error("camera {camera}: {} is gone ({reason}); waiting for it to return at that path (check the cable and `ocellus cameras`; a /dev/v4l/by-id/... name survives re-enumeration, /dev/videoN may not)", path.display())]
    Disconnected {
        camera: String,
        path: PathBuf,
        reason: String,
    },
    #[error("camera {camera}: {what} {}: {source}{hint}", path.display())]
    Device {
        camera: String,
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
        /// What to check, starting with a space, or empty.
        hint: &'static str,
    },
    #[error("camera {camera}: source \"{kind}\" is not available in this build: {hint}")]
    NotAvailable {
        camera: String,
        kind: &'static str,
        hint: &'static str,
    },
}

/// Makes the source of camera number `index` as configured (not started).
pub fn open(index: usize, camera: &CameraSettings) -> Result<Box<dyn FrameSource>, SourceError> {
    match &camera.source {
        SourceSettings::Synthetic { .. } => Ok(Box::new(SyntheticSource::new(index, camera)?)),
        SourceSettings::Replay { .. } => Ok(Box::new(ReplaySource::new(index, camera)?)),
        SourceSettings::V4l2 { .. } => Ok(Box::new(V4l2Source::new(index, camera)?)),
    }
}

/// Memory a camera's source holds besides its frame pool, for the memory budget: the synthetic camera's
/// render and conversion scratch, a replay's frames (it reads every frame at start), a V4L2 driver's mmap
/// buffers. A replay path that cannot be probed counts 0 here; opening the source reports the problem.
pub fn resident_bytes(camera: &CameraSettings) -> u64 {
    match &camera.source {
        SourceSettings::Synthetic { .. } => synthetic::resident_bytes(camera.width, camera.height),
        SourceSettings::Replay { path, .. } => replay::probe(path)
            .map(|p| p.resident_bytes(camera.format))
            .unwrap_or(0),
        SourceSettings::V4l2 { buffers, .. } => *buffers as u64 * camera.max_frame_bytes() as u64,
    }
}

/// Sleeps until `deadline_ns` on CLOCK_MONOTONIC (returns at once if it has passed).
pub(crate) fn sleep_until(deadline_ns: u64) {
    let now = crate::clock::monotonic_ns();
    if deadline_ns > now {
        std::thread::sleep(std::time::Duration::from_nanos(deadline_ns - now));
    }
}

/// Paces frames to a rate: the deadline of frame n is `first + n * period`; when a frame is late by more than a
/// period the schedule restarts from now instead of bursting to catch up.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    period_ns: u64,
    next_ns: u64,
}

impl Pacer {
    pub(crate) fn new(fps: u32) -> Pacer {
        Pacer {
            period_ns: if fps == 0 {
                0
            } else {
                1_000_000_000 / fps as u64
            },
            next_ns: 0,
        }
    }

    /// Waits for the next deadline; returns the time it is (the frame's capture time).
    pub(crate) fn wait(&mut self) -> u64 {
        if self.period_ns == 0 {
            return crate::clock::monotonic_ns();
        }
        let now = crate::clock::monotonic_ns();
        if self.next_ns == 0 || now > self.next_ns + self.period_ns {
            self.next_ns = now;
        }
        sleep_until(self.next_ns);
        self.next_ns += self.period_ns;
        crate::clock::monotonic_ns()
    }

    pub(crate) fn reset(&mut self) {
        self.next_ns = 0;
    }
}
