//! V4L2 cameras: mmap streaming from a `/dev/video*` node (or a `/dev/v4l/by-id/...` name for it).
//!
//! Lifecycle: [`V4l2Source::new`] only records the config. `start` opens the device, checks that it is a
//! single-planar capture device that streams, negotiates the pixel format and size (`VIDIOC_S_FMT`) and the
//! frame rate (`VIDIOC_S_PARM`), refusing with a list of what the device can do when it cannot deliver what the
//! config asks, requests and maps `buffers` driver buffers and starts streaming. `stop` stops streaming,
//! unmaps and frees the buffers and closes the device; `start` may run again (a reconnect gets fresh buffers).
//!
//! Real-time contract: `next_frame` does not allocate. It waits in `poll(2)`, dequeues a buffer, copies its bytes
//! into the caller's pooled [`FrameBuf`] (dropping row padding if the driver pads rows) and queues the buffer
//! again. The frame carries the driver's sequence number (extended to 64 bits, continuing across reopens, so a
//! gap means frames the driver dropped, see [`SequenceGaps`]) and its capture timestamp on CLOCK_MONOTONIC
//! (the clock of [`crate::clock::monotonic_ns`]); a driver that stamps with another clock is logged once and its
//! frames are stamped at dequeue instead.
//!
//! Faults are errors the capture loop acts on: no frame within the stall timeout is
//! [`SourceError::Stalled`] (the loop flags the camera and reopens it), a device that went away (ENODEV, a
//! hang-up) is [`SourceError::Disconnected`] (the loop waits for the path to return and reopens it).
//! Buffers the driver marks as corrupt (`V4L2_BUF_FLAG_ERROR`) are queued again unread; they show as a sequence
//! gap. See docs/v4l2.md.

#[allow(unsafe_code)]
mod sys;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{CameraSettings, SourceSettings, StallTimeout};
use super::{FrameSource, SourceError};
use crate::clock::monotonic_ns;
use crate::frame::{FrameBuf, FrameMeta, PixelFormat};

pub use sys::{Capabilities, FormatDesc, FrameIntervals, FrameSizes, PixFormat};

/// The shortest stall timeout, whatever the frame rate: below it a scheduling hiccup would look like a stall.
pub const MIN_STALL_TIMEOUT: Duration = Duration::from_millis(100);
/// The first frame after (re)opening may take this long at least: cameras take time to start streaming
/// (auto exposure, USB bandwidth negotiation).
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(2);
/// Frame period assumed for the stall timeout when neither the config nor the driver gives a frame rate.
pub const UNKNOWN_FRAME_PERIOD: Duration = Duration::from_millis(100);
/// How far the driver's frame rate may be from the configured one (relative), e.g. 29.97 for 30.
pub const FPS_TOLERANCE: f64 = 0.02;

/// The stall timeout: `Fixed` as given, `Periods(n)` as n frame periods (the negotiated period, else
/// [`UNKNOWN_FRAME_PERIOD`]); never below [`MIN_STALL_TIMEOUT`].
pub fn stall_timeout(stall: StallTimeout, frame_period: Option<Duration>) -> Duration {
    let t = match stall {
        StallTimeout::Fixed(d) => d,
        StallTimeout::Periods(n) => frame_period
            .filter(|p| !p.is_zero())
            .unwrap_or(UNKNOWN_FRAME_PERIOD)
            .saturating_mul(n),
    };
    t.max(MIN_STALL_TIMEOUT)
}

/// A V4L2 `timeval` (seconds, microseconds) in nanoseconds; `None` if negative or out of range.
pub fn timeval_ns(sec: i64, usec: i64) -> Option<u64> {
    if sec < 0 || !(0..1_000_000).contains(&usec) {
        return None;
    }
    (sec as u64)
        .checked_mul(1_000_000_000)?
        .checked_add(usec as u64 * 1000)
}

/// A FourCC code as text: its four characters (non-printable ones as `.`), with `-BE` for the big-endian
/// variant (bit 31 set, where the `v4l` crate's `FourCC` prints nothing).
pub fn fourcc_name(code: u32) -> String {
    let big_endian = code & (1 << 31) != 0;
    let bytes = (code & !(1 << 31)).to_le_bytes();
    let mut s: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    let trimmed = s.trim_end().len();
    s.truncate(trimmed);
    if big_endian {
        s.push_str("-BE");
    }
    s
}

/// The FourCC codes a device may offer for `format`: one, or for MJPEG both `MJPG` and `JPEG`.
pub fn fourccs_of(format: PixelFormat) -> &'static [[u8; 4]] {
    const YUYV: [u8; 4] = *b"YUYV";
    const NV12: [u8; 4] = *b"NV12";
    const GREY: [u8; 4] = *b"GREY";
    const RGB3: [u8; 4] = *b"RGB3";
    const BGR3: [u8; 4] = *b"BGR3";
    const MJPG: [u8; 4] = *b"MJPG";
    const JPEG: [u8; 4] = *b"JPEG";
    match format {
        PixelFormat::Yuyv => &[YUYV],
        PixelFormat::Nv12 => &[NV12],
        PixelFormat::Grey => &[GREY],
        PixelFormat::Rgb24 => &[RGB3],
        PixelFormat::Bgr24 => &[BGR3],
        PixelFormat::Mjpeg => &[MJPG, JPEG],
    }
}

/// How far ahead of the dequeue time a driver's timestamp may be: drivers that stamp the end of the frame's
/// exposure from their own schedule (vivid) can be up to a frame period ahead.
pub const TIMESTAMP_MAX_AHEAD: Duration = Duration::from_secs(1);

/// The capture time of a dequeued buffer on CLOCK_MONOTONIC: the driver's timestamp when its flags say it is
/// on that clock (`monotonic`) and the value is plausible (set, not more than [`TIMESTAMP_MAX_AHEAD`] after
/// `now_ns`); otherwise why not, for the one log line.
pub fn driver_timestamp(
    monotonic: bool,
    (sec, usec): (i64, i64),
    now_ns: u64,
) -> Result<u64, &'static str> {
    if !monotonic {
        return Err("the driver's buffer timestamps are not on CLOCK_MONOTONIC");
    }
    match timeval_ns(sec, usec) {
        None | Some(0) => Err("the driver leaves buffer timestamps unset"),
        Some(t) if t > now_ns.saturating_add(TIMESTAMP_MAX_AHEAD.as_nanos() as u64) => {
            Err("the driver's buffer timestamps are ahead of CLOCK_MONOTONIC")
        }
        Some(t) => Ok(t),
    }
}

/// Frames per second of a frame interval `numerator / denominator` seconds, if it is one.
pub fn interval_fps((num, den): (u32, u32)) -> Option<f64> {
    (num > 0 && den > 0).then(|| den as f64 / num as f64)
}

/// Counts the frames missing between delivered sequence numbers (a driver's sequence skips the frames it
/// dropped). Works for any source; the capture loop resets it when a source restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SequenceGaps {
    last: Option<u64>,
    /// Frames missing so far.
    pub missing: u64,
}

impl SequenceGaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next delivered sequence number; returns how many frames are missing before it. A number
    /// that does not increase (a source that restarted its count) re-synchronises without counting.
    pub fn observe(&mut self, sequence: u64) -> u64 {
        let gap = match self.last {
            Some(last) if sequence > last => sequence - last - 1,
            _ => 0,
        };
        self.last = Some(sequence);
        self.missing += gap;
        gap
    }

    /// Forgets the last sequence number (after a restart the count starts over).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Extends the driver's 32-bit sequence to 64 bits within one stream.
#[derive(Debug, Clone, Copy, Default)]
struct SequenceExtender {
    last: Option<u32>,
    extended: u64,
}

impl SequenceExtender {
    /// The offset of `raw` from the first sequence number of the stream (wrapping at 2^32 handled; a number
    /// that jumps back, a driver restarting its count, continues by one).
    fn next(&mut self, raw: u32) -> u64 {
        if let Some(last) = self.last {
            let step = raw.wrapping_sub(last);
            self.extended += if step == 0 || step > u32::MAX / 2 {
                1
            } else {
                step as u64
            };
        }
        self.last = Some(raw);
        self.extended
    }
}

/// The open device: what `start` set up and `stop` tears down.
struct Stream {
    dev: sys::Device,
    ring: sys::MmapRing,
    /// Bytes per row the driver uses (>= the packed row for raw formats).
    stride: usize,
    timeout: Duration,
    /// No frame delivered since the stream started (the first gets [`FIRST_FRAME_TIMEOUT`]).
    first: bool,
    /// Sequence number of this stream's first frame.
    base: u64,
    extender: SequenceExtender,
}

/// A V4L2 camera. See the module documentation.
pub struct V4l2Source {
    camera: usize,
    name: String,
    path: PathBuf,
    format: PixelFormat,
    width: u32,
    height: u32,
    fps: u32,
    buffers: u32,
    stall: StallTimeout,
    stream: Option<Stream>,
    /// Sequence number the next stream starts at (continues across reopens).
    next_sequence: u64,
    /// What `start` negotiated, for `describe`.
    negotiated: Option<String>,
    clock_warned: bool,
}

impl V4l2Source {
    /// A V4L2 source for camera number `index` (the device is opened by `start`); fails if the config is not a
    /// V4L2 camera.
    pub fn new(index: usize, camera: &CameraSettings) -> Result<V4l2Source, SourceError> {
        let SourceSettings::V4l2 {
            device,
            buffers,
            stall,
        } = &camera.source
        else {
            return Err(SourceError::Unsupported {
                camera: camera.name.clone(),
                format: camera.format,
                width: camera.width,
                height: camera.height,
                reason: format!("camera source is {}, not v4l2", camera.kind()),
            });
        };
        Ok(V4l2Source {
            camera: index,
            name: camera.name.clone(),
            path: device.clone(),
            format: camera.format,
            width: camera.width,
            height: camera.height,
            fps: camera.fps,
            buffers: *buffers,
            stall: *stall,
            stream: None,
            next_sequence: 0,
            negotiated: None,
            clock_warned: false,
        })
    }

    /// The device path from the config.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stall timeout of the open stream, if started.
    pub fn timeout(&self) -> Option<Duration> {
        self.stream.as_ref().map(|s| s.timeout)
    }

    fn unsupported(&self, reason: impl Into<String>) -> SourceError {
        SourceError::Unsupported {
            camera: self.name.clone(),
            format: self.format,
            width: self.width,
            height: self.height,
            reason: reason.into(),
        }
    }

    fn device_error(&self, what: &'static str, source: std::io::Error) -> SourceError {
        if is_gone(&source) {
            return SourceError::Disconnected {
                camera: self.name.clone(),
                path: self.path.clone(),
                reason: format!("{what}: {source}"),
            };
        }
        let hint = match source.raw_os_error() {
            Some(libc::EBUSY) => {
                " (another program is using the camera: `fuser -v` on the device shows which)"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => {
                " (add the user to the video group, or check the udev rules)"
            }
            _ => "",
        };
        SourceError::Device {
            camera: self.name.clone(),
            path: self.path.clone(),
            what,
            source,
            hint,
        }
    }

    /// Opens and configures the device; returns the stream, not yet streaming.
    fn open(&mut self) -> Result<Stream, SourceError> {
        let dev = sys::Device::open(&self.path).map_err(|source| {
            if is_gone(&source) {
                SourceError::Disconnected {
                    camera: self.name.clone(),
                    path: self.path.clone(),
                    reason: format!("cannot open it: {source}"),
                }
            } else {
                self.device_error("cannot open", source)
            }
        })?;
        let caps = dev.capabilities().map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOTTY) {
                self.unsupported(format!(
                    "{} is not a V4L2 device (`ocellus cameras` lists the capture devices)",
                    self.path.display()
                ))
            } else {
                self.device_error("VIDIOC_QUERYCAP on", e)
            }
        })?;
        if !caps.can_capture() {
            let why = if caps.can_capture_mplane() {
                "it captures only through the multi-planar API, which ocellus does not read"
            } else {
                "it is not a video capture node (cameras often have a second, metadata node)"
            };
            return Err(self.unsupported(format!(
                "{} ({}, driver {}): {why}; `ocellus cameras` lists the capture devices",
                self.path.display(),
                caps.card,
                caps.driver
            )));
        }
        if !caps.can_stream() {
            return Err(self.unsupported(format!(
                "{} ({}) does not support streaming I/O (mmap buffers), which ocellus needs",
                self.path.display(),
                caps.card
            )));
        }
        let formats = dev
            .formats()
            .map_err(|e| self.device_error("VIDIOC_ENUM_FMT on", e))?;
        let wanted: Vec<u32> = fourccs_of(self.format)
            .iter()
            .map(|c| u32::from_le_bytes(*c))
            .collect();
        let Some(fourcc) = formats
            .iter()
            .map(|f| f.fourcc)
            .find(|c| wanted.contains(c))
        else {
            return Err(self.unsupported(format!(
                "{} ({}) offers {}; set pixel-format to one ocellus reads{}",
                self.path.display(),
                caps.card,
                list_formats(&formats),
                readable_hint(&formats)
            )));
        };
        let got = dev
            .set_format(self.width, self.height, fourcc)
            .map_err(|e| self.device_error("VIDIOC_S_FMT on", e))?;
        if got.fourcc != fourcc || got.width != self.width || got.height != self.height {
            let sizes = dev.frame_sizes(fourcc).unwrap_or_default();
            return Err(self.unsupported(format!(
                "{} ({}) chose {} {}x{} instead; its {} sizes: {} (set width and height to one of them)",
                self.path.display(),
                caps.card,
                fourcc_name(got.fourcc),
                got.width,
                got.height,
                fourcc_name(fourcc),
                list_sizes(&sizes)
            )));
        }
        let row = packed_row_bytes(self.format, self.width);
        let stride = if self.format.is_compressed() {
            0
        } else {
            (got.bytes_per_line as usize).max(row)
        };
        let period = self.negotiate_rate(&dev, fourcc)?;
        let ring = sys::MmapRing::new(&dev, self.buffers)
            .map_err(|e| self.device_error("requesting mmap buffers from", e))?;
        if ring.count() < 2 {
            tracing::warn!(camera = self.camera, name = %self.name, granted = ring.count(),
                "the driver granted a single capture buffer: expect dropped frames");
        }
        let timeout = stall_timeout(self.stall, period);
        self.negotiated = Some(format!(
            "{} {}x{} @{} ({} buffers, stall after {} ms)",
            fourcc_name(fourcc),
            got.width,
            got.height,
            period
                .map(|p| format!("{:.2} fps", 1.0 / p.as_secs_f64()))
                .unwrap_or_else(|| "driver rate".into()),
            ring.count(),
            timeout.as_millis()
        ));
        Ok(Stream {
            dev,
            ring,
            stride,
            timeout,
            first: true,
            base: self.next_sequence,
            extender: SequenceExtender::default(),
        })
    }

    /// Sets the configured frame rate (`fps > 0`) or reads the driver's; returns the frame period if known.
    fn negotiate_rate(
        &self,
        dev: &sys::Device,
        fourcc: u32,
    ) -> Result<Option<Duration>, SourceError> {
        let current = dev.params().ok();
        if self.fps == 0 {
            return Ok(current
                .and_then(|p| interval_fps(p.time_per_frame))
                .map(|fps| Duration::from_secs_f64(1.0 / fps)));
        }
        let params = match current {
            Some(p) if p.can_set_rate => dev
                .set_frame_interval(1, self.fps)
                .map_err(|e| self.device_error("VIDIOC_S_PARM on", e))?,
            Some(p) => p,
            None => {
                tracing::warn!(camera = self.camera, name = %self.name, fps = self.fps,
                    "the driver does not report its frame rate (VIDIOC_G_PARM); assuming the configured one");
                return Ok(Some(Duration::from_secs_f64(1.0 / self.fps as f64)));
            }
        };
        match interval_fps(params.time_per_frame) {
            Some(got) if (got - self.fps as f64).abs() <= self.fps as f64 * FPS_TOLERANCE => {
                Ok(Some(Duration::from_secs_f64(1.0 / got)))
            }
            Some(got) => {
                let rates = dev
                    .frame_intervals(fourcc, self.width, self.height)
                    .unwrap_or_default();
                Err(self.unsupported(format!(
                    "{} delivers {:.2} fps, not {}, at this format and size{}; its rates here: {} \
                     (set fps to one of them, or 0 for the driver's default)",
                    self.path.display(),
                    got,
                    self.fps,
                    if params.can_set_rate {
                        ""
                    } else {
                        " and does not let the rate be set"
                    },
                    list_rates(&rates)
                )))
            }
            None => {
                tracing::warn!(camera = self.camera, name = %self.name, fps = self.fps,
                    "the driver does not report its frame rate; assuming the configured one");
                Ok(Some(Duration::from_secs_f64(1.0 / self.fps as f64)))
            }
        }
    }

    /// Copies a dequeued buffer into `buf` and fills its metadata.
    fn deliver(
        &mut self,
        d: &sys::Dequeued,
        buf: &mut FrameBuf,
        now_ns: u64,
    ) -> Result<(), SourceError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(SourceError::NotStarted {
                camera: self.name.clone(),
            });
        };
        let data = &stream.ring.data(d.index)[..d.bytes_used];
        let capacity = buf.data.len();
        let bytes = if self.format.is_compressed() {
            let n = data.len().min(capacity);
            buf.data[..n].copy_from_slice(&data[..n]);
            n
        } else {
            let row = packed_row_bytes(self.format, self.width);
            let rows = packed_rows(self.format, self.height);
            let needed = row * rows;
            if capacity < needed {
                return Err(SourceError::BufferTooSmall { needed, capacity });
            }
            copy_rows(data, stream.stride, &mut buf.data[..needed], row, rows)
        };
        let seq = stream.base + stream.extender.next(d.sequence);
        stream.first = false;
        let capture_ns = match driver_timestamp(d.is_monotonic(), d.timestamp, now_ns) {
            Ok(t) => t,
            Err(why) => {
                if !self.clock_warned {
                    self.clock_warned = true;
                    tracing::warn!(camera = self.camera, name = %self.name, flags = d.flags,
                        timestamp_s = d.timestamp.0, timestamp_us = d.timestamp.1, now_ns,
                        "{why}; stamping frames at dequeue instead (said once)");
                }
                now_ns
            }
        };
        buf.meta = FrameMeta {
            camera: self.camera,
            sequence: seq,
            capture_ns,
            width: self.width,
            height: self.height,
            format: self.format,
            bytes,
            label: None,
        };
        self.next_sequence = seq + 1;
        Ok(())
    }
}

impl FrameSource for V4l2Source {
    fn describe(&self) -> String {
        format!(
            "v4l2 {} {}: {} {}x{} @{} fps{}",
            self.name,
            self.path.display(),
            self.format,
            self.width,
            self.height,
            if self.fps == 0 {
                "driver".to_owned()
            } else {
                self.fps.to_string()
            },
            self.negotiated
                .as_deref()
                .map(|n| format!(", negotiated {n}"))
                .unwrap_or_default()
        )
    }

    fn start(&mut self) -> Result<(), SourceError> {
        self.stop();
        let mut stream = self.open()?;
        if let Err(e) = stream.ring.start(&stream.dev) {
            stream.ring.release(&stream.dev);
            return Err(self.device_error("VIDIOC_STREAMON on", e));
        }
        self.stream = Some(stream);
        Ok(())
    }

    fn next_frame(&mut self, buf: &mut FrameBuf) -> Result<(), SourceError> {
        let Some(stream) = self.stream.as_ref() else {
            return Err(SourceError::NotStarted {
                camera: self.name.clone(),
            });
        };
        let timeout = if stream.first {
            stream.timeout.max(FIRST_FRAME_TIMEOUT)
        } else {
            stream.timeout
        };
        let begin = monotonic_ns();
        let deadline = begin.saturating_add(timeout.as_nanos() as u64);
        loop {
            let Some(stream) = self.stream.as_ref() else {
                return Err(SourceError::NotStarted {
                    camera: self.name.clone(),
                });
            };
            let now = monotonic_ns();
            if now >= deadline {
                return Err(SourceError::Stalled {
                    camera: self.name.clone(),
                    waited_ms: (now - begin) / 1_000_000,
                });
            }
            let wait_ms = ((deadline - now).div_ceil(1_000_000)).min(i32::MAX as u64) as i32;
            let readiness = stream
                .dev
                .poll(wait_ms)
                .map_err(|e| self.device_error("poll on", e))?;
            if readiness == sys::Readiness::TimedOut {
                continue;
            }
            let d = match stream.ring.dequeue(&stream.dev) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if readiness == sys::Readiness::Error {
                        // The driver says error but has nothing to hand back: the device is gone or the
                        // stream broke. Either way only a reopen helps.
                        return Err(if self.path.exists() {
                            self.device_error(
                                "poll reported an error on",
                                std::io::Error::other("POLLERR without a buffer"),
                            )
                        } else {
                            SourceError::Disconnected {
                                camera: self.name.clone(),
                                path: self.path.clone(),
                                reason: "the device node disappeared".into(),
                            }
                        });
                    }
                    continue;
                }
                Err(e) => return Err(self.device_error("VIDIOC_DQBUF on", e)),
            };
            let result = if d.is_error() {
                None
            } else {
                Some(self.deliver(&d, buf, monotonic_ns()))
            };
            let Some(stream) = self.stream.as_ref() else {
                return Err(SourceError::NotStarted {
                    camera: self.name.clone(),
                });
            };
            stream
                .ring
                .queue(&stream.dev, d.index)
                .map_err(|e| self.device_error("VIDIOC_QBUF on", e))?;
            match result {
                Some(r) => return r,
                None => continue,
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            stream.ring.release(&stream.dev);
        }
    }

    fn max_frame_bytes(&self) -> usize {
        self.format.max_frame_bytes(self.width, self.height)
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an error means the device went away (unplugged, driver unbound, node removed).
fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ENXIO)
    )
}

/// Bytes of one packed row of the first plane.
fn packed_row_bytes(format: PixelFormat, width: u32) -> usize {
    let w = width as usize;
    match format {
        PixelFormat::Yuyv => w * 2,
        PixelFormat::Nv12 | PixelFormat::Grey => w,
        PixelFormat::Rgb24 | PixelFormat::Bgr24 => w * 3,
        PixelFormat::Mjpeg => 0,
    }
}

/// Rows of all planes together (NV12: the luma rows, then half as many chroma rows of the same width).
fn packed_rows(format: PixelFormat, height: u32) -> usize {
    let h = height as usize;
    match format {
        PixelFormat::Nv12 => h + h / 2,
        _ => h,
    }
}

/// Copies `rows` rows of `row` bytes from `src` (rows `stride` apart) into `dst` packed; a short `src` (a
/// truncated frame) copies what is there. Returns the bytes written.
fn copy_rows(src: &[u8], stride: usize, dst: &mut [u8], row: usize, rows: usize) -> usize {
    if stride == row {
        let n = src.len().min(row * rows).min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
        return n;
    }
    let mut written = 0;
    for r in 0..rows {
        let start = r * stride;
        if start >= src.len() {
            break;
        }
        let n = row.min(src.len() - start);
        dst[written..written + n].copy_from_slice(&src[start..start + n]);
        written += n;
        if n < row {
            break;
        }
    }
    written
}

fn list_formats(formats: &[FormatDesc]) -> String {
    if formats.is_empty() {
        return "no capture formats".into();
    }
    formats
        .iter()
        .map(|f| {
            let ours = PixelFormat::from_fourcc_u32(f.fourcc)
                .map(|p| format!(" = {p}"))
                .unwrap_or_default();
            format!("{} ({}{ours})", fourcc_name(f.fourcc), f.description)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn readable_hint(formats: &[FormatDesc]) -> String {
    let ours: Vec<&str> = formats
        .iter()
        .filter_map(|f| PixelFormat::from_fourcc_u32(f.fourcc))
        .map(|p| p.name())
        .collect();
    if ours.is_empty() {
        format!(
            " ({}): this device offers none of them",
            PixelFormat::names()
        )
    } else {
        format!(": {}", ours.join(", "))
    }
}

/// One frame size for messages: `640x480` or `16x16 to 1920x1080 in steps of 2x2`.
pub fn size_text(size: &FrameSizes) -> String {
    match *size {
        FrameSizes::Discrete { width, height } => format!("{width}x{height}"),
        FrameSizes::Stepwise {
            min_width,
            max_width,
            step_width,
            min_height,
            max_height,
            step_height,
        } => format!(
            "{min_width}x{min_height} to {max_width}x{max_height} in steps of {step_width}x{step_height}"
        ),
    }
}

/// Frame sizes for messages: `640x480, 1280x720` or `16x16 to 1920x1080 in steps of 2x2`.
pub fn list_sizes(sizes: &[FrameSizes]) -> String {
    if sizes.is_empty() {
        return "(the driver does not list them)".into();
    }
    sizes.iter().map(size_text).collect::<Vec<_>>().join(", ")
}

/// Frame rates for messages: `30, 25, 15 fps` or `1.00 to 60.00 fps`.
pub fn list_rates(rates: &[FrameIntervals]) -> String {
    if rates.is_empty() {
        return "(the driver does not list them)".into();
    }
    let fmt = |f: Option<f64>| match f {
        Some(f) if (f - f.round()).abs() < 0.005 => format!("{}", f.round() as u64),
        Some(f) => format!("{f:.2}"),
        None => "?".into(),
    };
    let discrete: Vec<String> = rates
        .iter()
        .filter_map(|r| match *r {
            FrameIntervals::Discrete(i) => Some(fmt(interval_fps(i))),
            FrameIntervals::Stepwise { .. } => None,
        })
        .collect();
    let mut parts = Vec::new();
    if !discrete.is_empty() {
        parts.push(format!("{} fps", discrete.join(", ")));
    }
    for r in rates {
        if let FrameIntervals::Stepwise { min, max, .. } = *r {
            // The longest interval is the lowest rate.
            parts.push(format!(
                "{} to {} fps",
                fmt(interval_fps(max)),
                fmt(interval_fps(min))
            ));
        }
    }
    parts.join(", ")
}

/// One format of a device as `ocellus cameras` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatInfo {
    pub desc: FormatDesc,
    /// The config's `pixel-format` for it, if ocellus reads it.
    pub pixel_format: Option<PixelFormat>,
    /// Each size with its frame rates.
    pub sizes: Vec<(FrameSizes, Vec<FrameIntervals>)>,
}

/// A V4L2 device node as `ocellus cameras` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub path: PathBuf,
    /// `/dev/v4l/by-id/...` and `/dev/v4l/by-path/...` names that point at it.
    pub by_id: Vec<PathBuf>,
    pub by_path: Vec<PathBuf>,
    /// What the device said, or why it could not be asked.
    pub caps: Result<Capabilities, String>,
    /// Capture formats (empty for nodes that are not capture nodes).
    pub formats: Vec<FormatInfo>,
    /// The format the device is set to now (capture nodes).
    pub current: Option<PixFormat>,
}

impl DeviceInfo {
    /// A node ocellus can capture from (single-planar capture with streaming).
    pub fn is_capture(&self) -> bool {
        self.caps
            .as_ref()
            .is_ok_and(|c| c.can_capture() && c.can_stream())
    }
}

/// Lists the V4L2 nodes under `dev` (normally `/dev`): every `video<N>`, sorted by N, with the
/// `v4l/by-id` and `v4l/by-path` names pointing at each, its capabilities and (capture nodes) its formats,
/// sizes and rates. Nodes that cannot be opened are listed with the reason.
pub fn list_devices(dev: &Path) -> Vec<DeviceInfo> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("video")?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    let links = |sub: &str| -> Vec<(PathBuf, PathBuf)> {
        std::fs::read_dir(dev.join("v4l").join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((std::fs::canonicalize(e.path()).ok()?, e.path())))
            .collect()
    };
    let (by_id, by_path) = (links("by-id"), links("by-path"));
    nodes
        .into_iter()
        .map(|(_, path)| {
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let named = |links: &[(PathBuf, PathBuf)]| {
                let mut v: Vec<PathBuf> = links
                    .iter()
                    .filter(|(target, _)| *target == real)
                    .map(|(_, link)| link.clone())
                    .collect();
                v.sort();
                v
            };
            let mut info = DeviceInfo {
                by_id: named(&by_id),
                by_path: named(&by_path),
                caps: Err(String::new()),
                formats: Vec::new(),
                current: None,
                path,
            };
            match sys::Device::open(&info.path) {
                Err(e) => {
                    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        " (add the user to the video group)"
                    } else {
                        ""
                    };
                    info.caps = Err(format!("cannot open: {e}{hint}"));
                }
                Ok(d) => match d.capabilities() {
                    Err(e) => info.caps = Err(format!("not a V4L2 device: {e}")),
                    Ok(caps) => {
                        if caps.can_capture() {
                            info.formats = describe_formats(&d);
                            info.current = d.format().ok();
                        }
                        info.caps = Ok(caps);
                    }
                },
            }
            info
        })
        .collect()
}

fn describe_formats(d: &sys::Device) -> Vec<FormatInfo> {
    d.formats()
        .unwrap_or_default()
        .into_iter()
        .map(|desc| {
            let sizes = d
                .frame_sizes(desc.fourcc)
                .unwrap_or_default()
                .into_iter()
                .map(|s| {
                    let rates = match s {
                        FrameSizes::Discrete { width, height } => d
                            .frame_intervals(desc.fourcc, width, height)
                            .unwrap_or_default(),
                        FrameSizes::Stepwise {
                            max_width,
                            max_height,
                            ..
                        } => d
                            .frame_intervals(desc.fourcc, max_width, max_height)
                            .unwrap_or_default(),
                    };
                    (s, rates)
                })
                .collect();
            FormatInfo {
                pixel_format: PixelFormat::from_fourcc_u32(desc.fourcc),
                desc,
                sizes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_extender_handles_wrap_and_reset() {
        let mut e = SequenceExtender::default();
        assert_eq!(e.next(u32::MAX - 1), 0);
        assert_eq!(e.next(u32::MAX), 1);
        assert_eq!(e.next(0), 2);
        assert_eq!(e.next(3), 5);
        // A driver that restarts its count continues by one.
        assert_eq!(e.next(0), 6);
        assert_eq!(e.next(0), 7);
    }

    #[test]
    fn rows_are_unpadded() {
        // 2 rows of 3 bytes, stride 4.
        let src = [1, 2, 3, 0, 4, 5, 6, 0];
        let mut dst = [9u8; 6];
        assert_eq!(copy_rows(&src, 4, &mut dst, 3, 2), 6);
        assert_eq!(dst, [1, 2, 3, 4, 5, 6]);
        // Truncated: only the first row and a half.
        let mut dst = [9u8; 6];
        assert_eq!(copy_rows(&src[..6], 4, &mut dst, 3, 2), 5);
        assert_eq!(&dst[..5], &[1, 2, 3, 4, 5]);
        // Packed.
        let mut dst = [0u8; 6];
        assert_eq!(copy_rows(&[1, 2, 3, 4, 5, 6], 3, &mut dst, 3, 2), 6);
        assert_eq!(dst, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn nv12_rows_include_the_chroma_plane() {
        assert_eq!(packed_rows(PixelFormat::Nv12, 480), 720);
        assert_eq!(
            packed_row_bytes(PixelFormat::Nv12, 640) * packed_rows(PixelFormat::Nv12, 480),
            PixelFormat::Nv12.frame_bytes(640, 480).unwrap()
        );
        for f in [
            PixelFormat::Yuyv,
            PixelFormat::Grey,
            PixelFormat::Rgb24,
            PixelFormat::Bgr24,
        ] {
            assert_eq!(
                packed_row_bytes(f, 64) * packed_rows(f, 48),
                f.frame_bytes(64, 48).unwrap(),
                "{f}"
            );
        }
    }
}
