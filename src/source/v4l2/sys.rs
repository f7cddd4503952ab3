//! The V4L2 ioctls ocellus uses, over a file descriptor it owns: the only unsafe code of V4L2 capture.
//!
//! Built on the `v4l` crate's kernel bindings (`v4l::v4l_sys`, generated from `linux/videodev2.h`) and its
//! ioctl numbers and wrapper (`v4l::v4l2`), not on its `Device` and `mmap::Stream` types: those panic where a
//! camera misbehaves (`Handle::drop` unwraps `close`, `Stream::drop` and `Arena::drop` panic on any error but
//! ENODEV, `Format::from` expects every colorspace and field value to be one it knows, `Description::from`
//! unwraps UTF-8), and a camera must never take the process down. Its dequeue path itself does not allocate;
//! neither does this one ([`MmapRing::dequeue`], [`MmapRing::queue`], [`Device::poll`] are ioctls on stack
//! structs).
//!
//! Everything here returns `io::Error`s; the source above turns them into messages a person can act on.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use v4l::v4l2::vidioc;
use v4l::v4l_sys as k;

/// `V4L2_BUF_TYPE_VIDEO_CAPTURE` (single-planar capture, the only kind ocellus reads).
const CAPTURE: u32 = k::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE;
/// `V4L2_MEMORY_MMAP`.
const MMAP: u32 = k::v4l2_memory_V4L2_MEMORY_MMAP;

/// What `VIDIOC_QUERYCAP` says about a device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// The node's own capabilities (`device_caps` where the driver reports them, else `capabilities`).
    pub caps: u32,
}

impl Capabilities {
    /// Single-planar video capture.
    pub fn can_capture(&self) -> bool {
        self.caps & k::V4L2_CAP_VIDEO_CAPTURE != 0
    }

    /// Multi-planar video capture (not read by ocellus).
    pub fn can_capture_mplane(&self) -> bool {
        self.caps & k::V4L2_CAP_VIDEO_CAPTURE_MPLANE != 0
    }

    /// Streaming I/O (mmap buffers).
    pub fn can_stream(&self) -> bool {
        self.caps & k::V4L2_CAP_STREAMING != 0
    }
}

/// One `VIDIOC_ENUM_FMT` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatDesc {
    pub fourcc: u32,
    pub description: String,
    pub compressed: bool,
    /// Converted in software by libv4l (never set for the kernel interface ocellus uses).
    pub emulated: bool,
}

/// Frame sizes of one format (`VIDIOC_ENUM_FRAMESIZES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSizes {
    Discrete {
        width: u32,
        height: u32,
    },
    /// Any size from min to max in steps (continuous: steps of 1).
    Stepwise {
        min_width: u32,
        max_width: u32,
        step_width: u32,
        min_height: u32,
        max_height: u32,
        step_height: u32,
    },
}

/// Frame intervals (seconds per frame, as `numerator / denominator`) of one format and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameIntervals {
    Discrete((u32, u32)),
    /// Any interval from min to max (continuous: any in between).
    Stepwise {
        min: (u32, u32),
        max: (u32, u32),
        step: (u32, u32),
    },
}

/// The current capture format (`VIDIOC_G_FMT` / `VIDIOC_S_FMT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixFormat {
    pub width: u32,
    pub height: u32,
    pub fourcc: u32,
    /// Bytes per row of the first plane (0 for compressed formats).
    pub bytes_per_line: u32,
    /// Bytes a buffer needs for one frame.
    pub size_image: u32,
}

/// The capture stream parameters (`VIDIOC_G_PARM` / `VIDIOC_S_PARM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamParams {
    /// Seconds per frame as `(numerator, denominator)`; `(0, 0)` when the driver does not say.
    pub time_per_frame: (u32, u32),
    /// The driver lets the frame interval be set (`V4L2_CAP_TIMEPERFRAME`).
    pub can_set_rate: bool,
}

/// An open V4L2 device node. Closing never fails loudly (the descriptor is an `OwnedFd`).
#[derive(Debug)]
pub(crate) struct Device {
    fd: OwnedFd,
}

/// What [`Device::poll`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// A buffer can be dequeued.
    Ready,
    /// Nothing within the timeout.
    TimedOut,
    /// The driver reports an error or hang-up (device gone, stream stopped, no buffer queued).
    Error,
}

impl Device {
    /// Opens `path` read-write, non-blocking (waits happen in [`Device::poll`]).
    pub(crate) fn open(path: &Path) -> io::Result<Device> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Device { fd: file.into() })
    }

    /// Runs one ioctl, retrying when a signal interrupts it.
    ///
    /// # Safety
    ///
    /// `T` must be the argument type the kernel expects for `request` (the type named in its `_IOWR`
    /// definition in `v4l::v4l2::vidioc`), so the kernel reads and writes only within `arg`.
    unsafe fn ioctl<T>(&self, request: vidioc::_IOC_TYPE, arg: &mut T) -> io::Result<()> {
        loop {
            // SAFETY: the fd is open for as long as `self` lives; `arg` is a live, exclusive `T`, the type
            // `request` takes (the caller's premise), so the kernel stays within it.
            let r = unsafe {
                v4l::v4l2::ioctl(self.fd.as_raw_fd(), request, arg as *mut T as *mut c_void)
            };
            match r {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// `VIDIOC_QUERYCAP`.
    pub(crate) fn capabilities(&self) -> io::Result<Capabilities> {
        let mut cap = zeroed::<k::v4l2_capability>();
        // SAFETY: VIDIOC_QUERYCAP takes a v4l2_capability.
        unsafe { self.ioctl(vidioc::VIDIOC_QUERYCAP, &mut cap)? };
        let caps = if cap.capabilities & k::V4L2_CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        Ok(Capabilities {
            driver: c_string(&cap.driver),
            card: c_string(&cap.card),
            bus: c_string(&cap.bus_info),
            caps,
        })
    }

    /// Every capture format (`VIDIOC_ENUM_FMT` until the driver says there are no more).
    pub(crate) fn formats(&self) -> io::Result<Vec<FormatDesc>> {
        let mut out = Vec::new();
        for index in 0..1024 {
            let mut desc = zeroed::<k::v4l2_fmtdesc>();
            desc.index = index;
            desc.type_ = CAPTURE;
            // SAFETY: VIDIOC_ENUM_FMT takes a v4l2_fmtdesc.
            match unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FMT, &mut desc) } {
                Ok(()) => out.push(FormatDesc {
                    fourcc: desc.pixelformat,
                    description: c_string(&desc.description),
                    compressed: desc.flags & k::V4L2_FMT_FLAG_COMPRESSED != 0,
                    emulated: desc.flags & k::V4L2_FMT_FLAG_EMULATED != 0,
                }),
                Err(e) if is_end_of_list(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Frame sizes of `fourcc` (empty when the driver does not enumerate them).
    pub(crate) fn frame_sizes(&self, fourcc: u32) -> io::Result<Vec<FrameSizes>> {
        let mut out = Vec::new();
        for index in 0..1024 {
            let mut e = zeroed::<k::v4l2_frmsizeenum>();
            e.index = index;
            e.pixel_format = fourcc;
            // SAFETY: VIDIOC_ENUM_FRAMESIZES takes a v4l2_frmsizeenum.
            match unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FRAMESIZES, &mut e) } {
                Ok(()) => {}
                Err(err) if is_end_of_list(&err) => break,
                Err(err) => return Err(err),
            }
            if e.type_ == k::v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_DISCRETE {
                // SAFETY: the driver filled the `discrete` member, as `type_` says.
                let d = unsafe { e.__bindgen_anon_1.discrete };
                out.push(FrameSizes::Discrete {
                    width: d.width,
                    height: d.height,
                });
            } else {
                // SAFETY: STEPWISE and CONTINUOUS fill the `stepwise` member.
                let s = unsafe { e.__bindgen_anon_1.stepwise };
                out.push(FrameSizes::Stepwise {
                    min_width: s.min_width,
                    max_width: s.max_width,
                    step_width: s.step_width.max(1),
                    min_height: s.min_height,
                    max_height: s.max_height,
                    step_height: s.step_height.max(1),
                });
                break;
            }
        }
        Ok(out)
    }

    /// Frame intervals of `fourcc` at `width` x `height` (empty when the driver does not enumerate them).
    pub(crate) fn frame_intervals(
        &self,
        fourcc: u32,
        width: u32,
        height: u32,
    ) -> io::Result<Vec<FrameIntervals>> {
        let mut out = Vec::new();
        for index in 0..1024 {
            let mut e = zeroed::<k::v4l2_frmivalenum>();
            e.index = index;
            e.pixel_format = fourcc;
            e.width = width;
            e.height = height;
            // SAFETY: VIDIOC_ENUM_FRAMEINTERVALS takes a v4l2_frmivalenum.
            match unsafe { self.ioctl(vidioc::VIDIOC_ENUM_FRAMEINTERVALS, &mut e) } {
                Ok(()) => {}
                Err(err) if is_end_of_list(&err) => break,
                Err(err) => return Err(err),
            }
            if e.type_ == k::v4l2_frmivaltypes_V4L2_FRMIVAL_TYPE_DISCRETE {
                // SAFETY: the driver filled the `discrete` member, as `type_` says.
                let d = unsafe { e.__bindgen_anon_1.discrete };
                out.push(FrameIntervals::Discrete((d.numerator, d.denominator)));
            } else {
                // SAFETY: STEPWISE and CONTINUOUS fill the `stepwise` member.
                let s = unsafe { e.__bindgen_anon_1.stepwise };
                out.push(FrameIntervals::Stepwise {
                    min: (s.min.numerator, s.min.denominator),
                    max: (s.max.numerator, s.max.denominator),
                    step: (s.step.numerator, s.step.denominator),
                });
                break;
            }
        }
        Ok(out)
    }

    /// `VIDIOC_G_FMT`.
    pub(crate) fn format(&self) -> io::Result<PixFormat> {
        let mut f = zeroed::<k::v4l2_format>();
        f.type_ = CAPTURE;
        // SAFETY: VIDIOC_G_FMT takes a v4l2_format.
        unsafe { self.ioctl(vidioc::VIDIOC_G_FMT, &mut f)? };
        Ok(pix_format(&f))
    }

    /// `VIDIOC_S_FMT` for progressive frames; returns what the driver chose (it adjusts, it rarely refuses).
    pub(crate) fn set_format(&self, width: u32, height: u32, fourcc: u32) -> io::Result<PixFormat> {
        let mut f = zeroed::<k::v4l2_format>();
        f.type_ = CAPTURE;
        // The `pix` member of the union: the one single-planar capture uses.
        f.fmt.pix.width = width;
        f.fmt.pix.height = height;
        f.fmt.pix.pixelformat = fourcc;
        f.fmt.pix.field = k::v4l2_field_V4L2_FIELD_NONE;
        // SAFETY: VIDIOC_S_FMT takes a v4l2_format.
        unsafe { self.ioctl(vidioc::VIDIOC_S_FMT, &mut f)? };
        Ok(pix_format(&f))
    }

    /// `VIDIOC_G_PARM`.
    pub(crate) fn params(&self) -> io::Result<StreamParams> {
        let mut p = zeroed::<k::v4l2_streamparm>();
        p.type_ = CAPTURE;
        // SAFETY: VIDIOC_G_PARM takes a v4l2_streamparm.
        unsafe { self.ioctl(vidioc::VIDIOC_G_PARM, &mut p)? };
        Ok(stream_params(&p))
    }

    /// `VIDIOC_S_PARM` with a frame interval of `numerator / denominator` seconds; returns what the driver
    /// chose.
    pub(crate) fn set_frame_interval(
        &self,
        numerator: u32,
        denominator: u32,
    ) -> io::Result<StreamParams> {
        let mut p = zeroed::<k::v4l2_streamparm>();
        p.type_ = CAPTURE;
        // The `capture` member of the union: the one capture streams use.
        p.parm.capture.timeperframe.numerator = numerator;
        p.parm.capture.timeperframe.denominator = denominator;
        // SAFETY: VIDIOC_S_PARM takes a v4l2_streamparm.
        unsafe { self.ioctl(vidioc::VIDIOC_S_PARM, &mut p)? };
        Ok(stream_params(&p))
    }

    /// Waits up to `timeout_ms` for a filled buffer. An interrupted wait returns `TimedOut` early; the caller
    /// keeps its own deadline.
    pub(crate) fn poll(&self, timeout_ms: i32) -> io::Result<Readiness> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, count 1.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Readiness::TimedOut)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(Readiness::TimedOut);
        }
        if pfd.revents & libc::POLLIN != 0 {
            Ok(Readiness::Ready)
        } else {
            Ok(Readiness::Error)
        }
    }
}

/// One dequeued buffer's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dequeued {
    pub index: usize,
    pub bytes_used: usize,
    /// `V4L2_BUF_FLAG_*`.
    pub flags: u32,
    pub sequence: u32,
    /// The driver's timestamp, `(seconds, microseconds)`.
    pub timestamp: (i64, i64),
}

impl Dequeued {
    /// The driver marked the data as corrupt (`V4L2_BUF_FLAG_ERROR`).
    pub(crate) fn is_error(&self) -> bool {
        self.flags & k::V4L2_BUF_FLAG_ERROR != 0
    }

    /// The timestamp is on CLOCK_MONOTONIC (`V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC`).
    pub(crate) fn is_monotonic(&self) -> bool {
        self.flags & k::V4L2_BUF_FLAG_TIMESTAMP_MASK == k::V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC
    }
}

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

/// The driver's capture buffers, mapped into this process (`VIDIOC_REQBUFS` + `mmap`), and the stream.
///
/// Made in `start`, dropped in `stop`: requesting, mapping and unmapping are the only allocations of V4L2
/// capture, and they happen at (re)open only.
pub(crate) struct MmapRing {
    maps: Vec<Mapping>,
    streaming: bool,
}

// SAFETY: the ring exclusively owns its mappings (nothing else holds their addresses), and a mapping has no
// thread affinity; moving the ring to the capture thread moves that ownership with it.
unsafe impl Send for MmapRing {}

impl MmapRing {
    /// Requests `count` buffers (the driver may grant another number, at least 1) and maps them.
    pub(crate) fn new(dev: &Device, count: u32) -> io::Result<MmapRing> {
        let mut req = zeroed::<k::v4l2_requestbuffers>();
        req.count = count;
        req.type_ = CAPTURE;
        req.memory = MMAP;
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers.
        unsafe { dev.ioctl(vidioc::VIDIOC_REQBUFS, &mut req)? };
        if req.count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the driver granted no capture buffers",
            ));
        }
        let mut ring = MmapRing {
            maps: Vec::with_capacity(req.count as usize),
            streaming: false,
        };
        for index in 0..req.count {
            let mut buf = zeroed::<k::v4l2_buffer>();
            buf.index = index;
            buf.type_ = CAPTURE;
            buf.memory = MMAP;
            // SAFETY: VIDIOC_QUERYBUF takes a v4l2_buffer.
            if let Err(e) = unsafe { dev.ioctl(vidioc::VIDIOC_QUERYBUF, &mut buf) } {
                ring.release(dev);
                return Err(e);
            }
            let len = buf.length as usize;
            // SAFETY: for MMAP buffers the driver filled the `offset` member of `m`.
            let offset = unsafe { buf.m.offset };
            // SAFETY: a fresh shared mapping of the driver's buffer at the offset it gave; no Rust object
            // aliases the returned range.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    dev.fd.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED || len == 0 {
                let e = io::Error::last_os_error();
                ring.release(dev);
                return Err(e);
            }
            ring.maps.push(Mapping {
                ptr: ptr as *mut u8,
                len,
            });
        }
        Ok(ring)
    }

    /// Number of buffers the driver granted.
    pub(crate) fn count(&self) -> usize {
        self.maps.len()
    }

    /// Hands buffer `index` to the driver to fill (`VIDIOC_QBUF`).
    pub(crate) fn queue(&self, dev: &Device, index: usize) -> io::Result<()> {
        let mut buf = zeroed::<k::v4l2_buffer>();
        buf.index = index as u32;
        buf.type_ = CAPTURE;
        buf.memory = MMAP;
        // SAFETY: VIDIOC_QBUF takes a v4l2_buffer.
        unsafe { dev.ioctl(vidioc::VIDIOC_QBUF, &mut buf) }
    }

    /// Queues every buffer and starts streaming (`VIDIOC_STREAMON`).
    pub(crate) fn start(&mut self, dev: &Device) -> io::Result<()> {
        for index in 0..self.maps.len() {
            self.queue(dev, index)?;
        }
        let mut typ = CAPTURE as libc::c_int;
        // SAFETY: VIDIOC_STREAMON takes an int (the buffer type).
        unsafe { dev.ioctl(vidioc::VIDIOC_STREAMON, &mut typ)? };
        self.streaming = true;
        Ok(())
    }

    /// Takes a filled buffer from the driver (`VIDIOC_DQBUF`); `WouldBlock` when none is ready.
    pub(crate) fn dequeue(&self, dev: &Device) -> io::Result<Dequeued> {
        let mut buf = zeroed::<k::v4l2_buffer>();
        buf.type_ = CAPTURE;
        buf.memory = MMAP;
        // SAFETY: VIDIOC_DQBUF takes a v4l2_buffer.
        unsafe { dev.ioctl(vidioc::VIDIOC_DQBUF, &mut buf)? };
        let index = buf.index as usize;
        if index >= self.maps.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the driver returned a buffer index it never granted",
            ));
        }
        // time_t and suseconds_t are 32 bits on some 32-bit targets.
        #[allow(clippy::unnecessary_cast)]
        let timestamp = (buf.timestamp.tv_sec as i64, buf.timestamp.tv_usec as i64);
        Ok(Dequeued {
            index,
            bytes_used: (buf.bytesused as usize).min(self.maps[index].len),
            flags: buf.flags,
            sequence: buf.sequence,
            timestamp,
        })
    }

    /// The bytes of buffer `index` (its whole mapped length). Read it between `dequeue` and `queue`.
    pub(crate) fn data(&self, index: usize) -> &[u8] {
        let m = &self.maps[index];
        // SAFETY: the mapping is `len` bytes, readable, and lives until `release`/drop, which need `&mut self`
        // and so cannot run while this borrow lives. The driver writes only buffers that are queued; the
        // caller reads a dequeued one.
        unsafe { std::slice::from_raw_parts(m.ptr, m.len) }
    }

    /// Stops streaming, unmaps the buffers and frees them in the driver (`VIDIOC_REQBUFS` 0). Errors are
    /// ignored: the device may be gone, and the mappings are unmapped regardless.
    pub(crate) fn release(&mut self, dev: &Device) {
        if self.streaming {
            let mut typ = CAPTURE as libc::c_int;
            // SAFETY: VIDIOC_STREAMOFF takes an int (the buffer type).
            let _ = unsafe { dev.ioctl(vidioc::VIDIOC_STREAMOFF, &mut typ) };
            self.streaming = false;
        }
        self.unmap();
        let mut req = zeroed::<k::v4l2_requestbuffers>();
        req.type_ = CAPTURE;
        req.memory = MMAP;
        // SAFETY: VIDIOC_REQBUFS takes a v4l2_requestbuffers.
        let _ = unsafe { dev.ioctl(vidioc::VIDIOC_REQBUFS, &mut req) };
    }

    fn unmap(&mut self) {
        for m in self.maps.drain(..) {
            // SAFETY: `ptr`/`len` are a mapping made in `new` and not yet unmapped (drained once); no slice
            // from `data` outlives the `&mut self` borrow this runs under.
            unsafe { libc::munmap(m.ptr as *mut c_void, m.len) };
        }
    }
}

impl Drop for MmapRing {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// Whether an enumeration error means "no more entries" (EINVAL) or "not supported here" (ENOTTY).
fn is_end_of_list(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTTY))
}

/// A zeroed kernel struct (all of them are plain data for which zero is valid).
fn zeroed<T: KernelStruct>() -> T {
    // SAFETY: `T` is one of the bindgen structs of linux/videodev2.h (sealed by `KernelStruct`): integers,
    // arrays, unions and raw pointers, for all of which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// The kernel structs [`zeroed`] may make.
trait KernelStruct {}
impl KernelStruct for k::v4l2_capability {}
impl KernelStruct for k::v4l2_fmtdesc {}
impl KernelStruct for k::v4l2_frmsizeenum {}
impl KernelStruct for k::v4l2_frmivalenum {}
impl KernelStruct for k::v4l2_format {}
impl KernelStruct for k::v4l2_streamparm {}
impl KernelStruct for k::v4l2_requestbuffers {}
impl KernelStruct for k::v4l2_buffer {}

fn pix_format(f: &k::v4l2_format) -> PixFormat {
    // SAFETY: for single-planar capture the driver fills the `pix` member.
    let p = unsafe { f.fmt.pix };
    PixFormat {
        width: p.width,
        height: p.height,
        fourcc: p.pixelformat,
        bytes_per_line: p.bytesperline,
        size_image: p.sizeimage,
    }
}

fn stream_params(p: &k::v4l2_streamparm) -> StreamParams {
    // SAFETY: for capture streams the driver fills the `capture` member.
    let c = unsafe { p.parm.capture };
    StreamParams {
        time_per_frame: (c.timeperframe.numerator, c.timeperframe.denominator),
        can_set_rate: c.capability & k::V4L2_CAP_TIMEPERFRAME != 0,
    }
}

/// A NUL-terminated byte array from the kernel as text (invalid UTF-8 replaced, never a panic).
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_owned()
}
