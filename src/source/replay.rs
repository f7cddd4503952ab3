//! Replay: frames from files, at a set rate, looping.
//!
//! Two kinds of path:
//! * **a directory of images** (`*.png`, `*.jpg`, `*.jpeg`, sorted by file name), all of the configured size.
//!   Delivered as `rgb24` (decoded), or as `mjpeg` when every image is a JPEG (the files' own bytes).
//! * **a recorded raw frame file** (written by [`RawFrameWriter`], e.g. by recording a camera), delivered in
//!   the format it was recorded in, with the recorded ground-truth labels.
//!
//! Everything is read and decoded in `start`; `next_frame` copies a frame into the caller's buffer.
//!
//! ## Raw frame file format (version 1, little-endian)
//!
//! ```text
//! header, 32 bytes:
//!   0  magic      8 bytes   "OCFRAMES"
//!   8  version    u32       1
//!  12  fourcc     4 bytes   V4L2 FourCC: YUYV, NV12, GREY, RGB3, BGR3 or MJPG
//!  16  width      u32
//!  20  height     u32
//!  24  max-bytes  u32       bytes of the largest frame (raw formats: exactly the frame size)
//!  28  reserved   u32       0
//! then frames to the end of the file, each:
//!   bytes     u32           length of the data (raw formats: exactly the frame size)
//!   label     u16           ground-truth class index, 0xFFFF when there is none
//!   reserved  u16           0
//!   data      `bytes` bytes
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{CameraSettings, SourceSettings};
use super::{FrameSource, Pacer, SourceError};
use crate::frame::{FrameBuf, FrameMeta, PixelFormat};

/// Magic bytes opening a raw frame file.
pub const RAW_MAGIC: [u8; 8] = *b"OCFRAMES";
/// The raw frame file version this module reads and writes.
pub const RAW_VERSION: u32 = 1;
/// Size of the raw frame file header.
pub const RAW_HEADER_BYTES: usize = 32;
/// The label value of a frame without ground truth.
pub const NO_LABEL: u16 = 0xFFFF;

/// What a replay path holds, read without decoding every frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayProbe {
    /// Formats the replay can deliver.
    pub formats: Vec<PixelFormat>,
    /// Frame size, when known from the first file or the header.
    pub size: Option<(u32, u32)>,
    /// A description for messages ("12 PNG images", "nv12 frames").
    pub what: String,
    /// Image files (a directory) or 0 (a raw file).
    pub images: usize,
    /// Bytes of every image file (a directory) or of the raw file.
    pub file_bytes: u64,
}

impl ReplayProbe {
    /// Memory the replay source holds once started (it reads every frame at start): the files' own bytes for
    /// MJPEG and raw files, decoded RGB frames otherwise.
    pub fn resident_bytes(&self, format: PixelFormat) -> u64 {
        match (self.images, format, self.size) {
            (0, _, _) | (_, PixelFormat::Mjpeg, _) => self.file_bytes,
            (n, _, Some((w, h))) => n as u64 * w as u64 * h as u64 * 3,
            (_, _, None) => self.file_bytes,
        }
    }
}

fn bad(path: &Path, message: impl Into<String>) -> SourceError {
    SourceError::BadFile {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn open(path: &Path) -> Result<File, SourceError> {
    File::open(path).map_err(|source| SourceError::Open {
        path: path.to_owned(),
        source,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageKind {
    Png,
    Jpeg,
}

fn image_kind(path: &Path) -> Option<ImageKind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "png" => Some(ImageKind::Png),
        "jpg" | "jpeg" => Some(ImageKind::Jpeg),
        _ => None,
    }
}

fn list_images(dir: &Path) -> Result<Vec<(PathBuf, ImageKind)>, SourceError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SourceError::Open {
        path: dir.to_owned(),
        source,
    })?;
    let mut images = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SourceError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if let Some(kind) = image_kind(&path) {
            if path.is_file() {
                images.push((path, kind));
            }
        }
    }
    images.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    if images.is_empty() {
        return Err(bad(
            dir,
            "holds no .png, .jpg or .jpeg images: add some or point path at a recorded .raw file",
        ));
    }
    Ok(images)
}

struct RawHeader {
    format: PixelFormat,
    width: u32,
    height: u32,
    max_bytes: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_raw_header(path: &Path, r: &mut impl Read) -> Result<RawHeader, SourceError> {
    let mut h = [0u8; RAW_HEADER_BYTES];
    r.read_exact(&mut h).map_err(|e| {
        bad(
            path,
            format!("not a raw frame file: header unreadable ({e}); expected a directory of images or a .raw recording"),
        )
    })?;
    if h[..8] != RAW_MAGIC {
        return Err(bad(
            path,
            "not a raw frame file (no OCFRAMES magic); expected a directory of images or a .raw recording",
        ));
    }
    let version = u32_at(&h, 8);
    if version != RAW_VERSION {
        return Err(bad(
            path,
            format!("raw frame file version {version}; this ocellus reads version {RAW_VERSION}"),
        ));
    }
    let code = [h[12], h[13], h[14], h[15]];
    let format = PixelFormat::from_fourcc(code).ok_or_else(|| {
        bad(
            path,
            format!(
                "raw frame file holds FourCC '{}', which ocellus does not read",
                String::from_utf8_lossy(&code)
            ),
        )
    })?;
    let (width, height, max_bytes) = (u32_at(&h, 16), u32_at(&h, 20), u32_at(&h, 24));
    format
        .check_size(width, height)
        .map_err(|why| bad(path, format!("raw frame file size {width}x{height}: {why}")))?;
    if let Some(exact) = format.frame_bytes(width, height) {
        if max_bytes as usize != exact {
            return Err(bad(path, format!("header says {max_bytes} bytes per frame, {format} {width}x{height} has {exact}")));
        }
    } else if max_bytes as usize > format.max_frame_bytes(width, height) {
        return Err(bad(
            path,
            format!("header says frames of up to {max_bytes} bytes, more than a {width}x{height} {format} frame may hold"),
        ));
    }
    Ok(RawHeader {
        format,
        width,
        height,
        max_bytes,
    })
}

fn png_size(path: &Path) -> Result<(u32, u32), SourceError> {
    let decoder = png::Decoder::new(BufReader::new(open(path)?));
    let reader = decoder
        .read_info()
        .map_err(|e| bad(path, format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    Ok((info.width, info.height))
}

fn jpeg_size(path: &Path, bytes: &[u8]) -> Result<(u32, u32), SourceError> {
    let mut decoder = zune_jpeg::JpegDecoder::new(bytes);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode_headers()))
        .map_err(|_| {
            bad(
                path,
                "not a readable JPEG: the decoder (zune-jpeg) failed on it (a panic, caught)",
            )
        })?
        .map_err(|e| bad(path, format!("not a readable JPEG: {e:?}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| bad(path, "JPEG without a frame header"))?;
    Ok((info.width as u32, info.height as u32))
}

/// What `path` holds and can deliver: checked at start-up, before anything is loaded (file metadata and the
/// first image's header only).
pub fn probe(path: &Path) -> Result<ReplayProbe, SourceError> {
    let meta = std::fs::metadata(path).map_err(|source| SourceError::Open {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        let images = list_images(path)?;
        let all_jpeg = images.iter().all(|(_, k)| *k == ImageKind::Jpeg);
        let (first, kind) = &images[0];
        let size = match kind {
            ImageKind::Png => png_size(first)?,
            ImageKind::Jpeg => {
                let bytes = std::fs::read(first).map_err(|source| SourceError::Open {
                    path: first.clone(),
                    source,
                })?;
                jpeg_size(first, &bytes)?
            }
        };
        let mut formats = vec![PixelFormat::Rgb24];
        if all_jpeg {
            formats.push(PixelFormat::Mjpeg);
        }
        let file_bytes = images
            .iter()
            .filter_map(|(p, _)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(ReplayProbe {
            formats,
            size: Some(size),
            images: images.len(),
            file_bytes,
            what: format!(
                "{} {} images",
                images.len(),
                if all_jpeg { "JPEG" } else { "PNG/JPEG" }
            ),
        })
    } else {
        let header = read_raw_header(path, &mut BufReader::new(open(path)?))?;
        Ok(ReplayProbe {
            formats: vec![header.format],
            size: Some((header.width, header.height)),
            images: 0,
            file_bytes: meta.len(),
            what: format!("{} frames", header.format),
        })
    }
}

/// Decodes a PNG into RGB8 (grey, alpha, palette and 16-bit images are converted).
pub fn decode_png_rgb(path: &Path) -> Result<(u32, u32, Vec<u8>), SourceError> {
    let mut decoder = png::Decoder::new(BufReader::new(open(path)?));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(path, format!("not a readable PNG: {e}")))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad(path, "PNG too large to decode"))?;
    let mut raw = vec![0; size];
    let info = reader
        .next_frame(&mut raw)
        .map_err(|e| bad(path, format!("PNG data is corrupt: {e}")))?;
    let (w, h) = (info.width, info.height);
    let pixels = w as usize * h as usize;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(bad(path, "PNG palette was not expanded"));
        }
    };
    if info.bit_depth != png::BitDepth::Eight {
        return Err(bad(
            path,
            format!(
                "PNG of bit depth {:?} not converted to 8 bits",
                info.bit_depth
            ),
        ));
    }
    let stride = info.line_size;
    let mut rgb = Vec::with_capacity(pixels * 3);
    for row in raw.chunks(stride).take(h as usize) {
        for px in row[..w as usize * channels].chunks_exact(channels) {
            match channels {
                1 | 2 => rgb.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok((w, h, rgb))
}

/// Decodes a JPEG into RGB8. zune-jpeg panics on some malformed streams (docs/fuzzing.md): a panic inside
/// the decoder is a corrupt file.
pub fn decode_jpeg_rgb(path: &Path, bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), SourceError> {
    let options = zune_jpeg::zune_core::options::DecoderOptions::default()
        .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(bytes, options);
    let rgb = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decoder.decode()))
        .map_err(|_| {
            bad(
                path,
                "JPEG data is corrupt: the decoder (zune-jpeg) failed on it (a panic, caught)",
            )
        })?
        .map_err(|e| bad(path, format!("JPEG data is corrupt: {e:?}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| bad(path, "JPEG without a frame header"))?;
    Ok((info.width as u32, info.height as u32, rgb))
}

/// Writes a raw frame file (see the module documentation) frame by frame.
pub struct RawFrameWriter<W: Write> {
    out: W,
    format: PixelFormat,
    width: u32,
    height: u32,
    max_bytes: usize,
}

impl<W: Write> RawFrameWriter<W> {
    /// Writes the header. MJPEG frames may be up to `format.max_frame_bytes(width, height)` bytes each.
    pub fn new(mut out: W, format: PixelFormat, width: u32, height: u32) -> std::io::Result<Self> {
        format
            .check_size(width, height)
            .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
        let max_bytes = format.max_frame_bytes(width, height);
        let max_u32 = u32::try_from(max_bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "frames too large for the raw format",
            )
        })?;
        let mut h = [0u8; RAW_HEADER_BYTES];
        h[..8].copy_from_slice(&RAW_MAGIC);
        h[8..12].copy_from_slice(&RAW_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&format.fourcc());
        h[16..20].copy_from_slice(&width.to_le_bytes());
        h[20..24].copy_from_slice(&height.to_le_bytes());
        h[24..28].copy_from_slice(&max_u32.to_le_bytes());
        out.write_all(&h)?;
        Ok(RawFrameWriter {
            out,
            format,
            width,
            height,
            max_bytes,
        })
    }

    /// Appends one frame; raw formats must have exactly the frame size.
    pub fn write_frame(&mut self, data: &[u8], label: Option<u16>) -> std::io::Result<()> {
        let ok = match self.format.frame_bytes(self.width, self.height) {
            Some(exact) => data.len() == exact,
            None => !data.is_empty() && data.len() <= self.max_bytes,
        };
        if !ok {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a {} {}x{} frame cannot have {} bytes",
                    self.format,
                    self.width,
                    self.height,
                    data.len()
                ),
            ));
        }
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&(data.len() as u32).to_le_bytes());
        rec[4..6].copy_from_slice(&label.unwrap_or(NO_LABEL).to_le_bytes());
        self.out.write_all(&rec)?;
        self.out.write_all(data)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes `frames` (data and label) to a new raw frame file at `path`.
pub fn write_raw_file<'a>(
    path: &Path,
    format: PixelFormat,
    width: u32,
    height: u32,
    frames: impl IntoIterator<Item = (&'a [u8], Option<u16>)>,
) -> std::io::Result<()> {
    let mut w = RawFrameWriter::new(BufWriter::new(File::create(path)?), format, width, height)?;
    for (data, label) in frames {
        w.write_frame(data, label)?;
    }
    w.finish()?.flush()
}

#[derive(Debug, Clone, Copy)]
struct Span {
    offset: usize,
    len: usize,
    label: Option<u16>,
}

/// The replay source.
pub struct ReplaySource {
    camera: usize,
    name: String,
    path: PathBuf,
    looping: bool,
    format: PixelFormat,
    width: u32,
    height: u32,
    fps: u32,
    pacer: Pacer,
    data: Vec<u8>,
    frames: Vec<Span>,
    next: usize,
    sequence: u64,
    started: bool,
}

impl ReplaySource {
    /// A replay source for camera number `index` (files are read in `start`).
    pub fn new(index: usize, camera: &CameraSettings) -> Result<ReplaySource, SourceError> {
        let SourceSettings::Replay { path, looping } = &camera.source else {
            return Err(SourceError::Unsupported {
                camera: camera.name.clone(),
                format: camera.format,
                width: camera.width,
                height: camera.height,
                reason: format!("camera source is {}, not replay", camera.kind()),
            });
        };
        Ok(ReplaySource {
            camera: index,
            name: camera.name.clone(),
            path: path.clone(),
            looping: *looping,
            format: camera.format,
            width: camera.width,
            height: camera.height,
            fps: camera.fps,
            pacer: Pacer::new(camera.fps),
            data: Vec::new(),
            frames: Vec::new(),
            next: 0,
            sequence: 0,
            started: false,
        })
    }

    /// Number of frames loaded (0 before `start`).
    pub fn frame_count(&self) -> usize {
        self.frames.len()
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

    fn push(&mut self, bytes: &[u8], label: Option<u16>) {
        self.frames.push(Span {
            offset: self.data.len(),
            len: bytes.len(),
            label,
        });
        self.data.extend_from_slice(bytes);
    }

    fn load_images(&mut self) -> Result<(), SourceError> {
        let images = list_images(&self.path)?;
        let want = (self.width, self.height);
        for (path, kind) in images {
            let bytes = std::fs::read(&path).map_err(|source| SourceError::Open {
                path: path.clone(),
                source,
            })?;
            let (w, h, frame) = match (self.format, kind) {
                (PixelFormat::Mjpeg, ImageKind::Jpeg) => {
                    // Decoded once here so a corrupt file fails at start, not on the frame path.
                    let (w, h, _) = decode_jpeg_rgb(&path, &bytes)?;
                    (w, h, bytes)
                }
                (PixelFormat::Mjpeg, ImageKind::Png) => {
                    return Err(self.unsupported(format!(
                        "{} is a PNG; mjpeg replay needs every image to be a JPEG (or set pixel-format = \"rgb24\")",
                        path.display()
                    )))
                }
                (PixelFormat::Rgb24, ImageKind::Jpeg) => decode_jpeg_rgb(&path, &bytes)?,
                (PixelFormat::Rgb24, ImageKind::Png) => decode_png_rgb(&path)?,
                (other, _) => {
                    return Err(self.unsupported(format!(
                        "an image directory delivers rgb24 (or mjpeg when all images are JPEG), not {other}"
                    )))
                }
            };
            if (w, h) != want {
                return Err(self.unsupported(format!(
                    "{} is {w}x{h}; every image must be {}x{}",
                    path.display(),
                    want.0,
                    want.1
                )));
            }
            self.push(&frame, None);
        }
        Ok(())
    }

    fn load_raw(&mut self) -> Result<(), SourceError> {
        let path = self.path.clone();
        let mut reader = RawFrameReader::open(&path)?;
        if reader.format() != self.format || reader.size() != (self.width, self.height) {
            let (w, h) = reader.size();
            let f = reader.format();
            return Err(self.unsupported(format!(
                "{} holds {f} {w}x{h} frames: set pixel-format = \"{f}\", width = {w}, height = {h}",
                path.display(),
            )));
        }
        let mut frame = vec![0u8; reader.max_bytes()];
        while let Some((len, label)) = reader.next_frame(&mut frame)? {
            self.push(&frame[..len], label);
        }
        if self.frames.is_empty() {
            return Err(bad(&path, "raw frame file holds no frames"));
        }
        Ok(())
    }
}

/// Reads a raw frame file (see the module documentation) frame by frame, checking every record: what the
/// replay source loads, and what a recording's reader (`recorder::format`) counts.
pub struct RawFrameReader<R: Read> {
    r: R,
    path: PathBuf,
    header: RawHeader,
    index: usize,
}

impl RawFrameReader<BufReader<File>> {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        RawFrameReader::new(path, BufReader::new(open(path)?))
    }
}

impl<R: Read> RawFrameReader<R> {
    /// Reads the header from `r`; `path` names the file in errors.
    pub fn new(path: &Path, mut r: R) -> Result<Self, SourceError> {
        let header = read_raw_header(path, &mut r)?;
        Ok(RawFrameReader {
            r,
            path: path.to_owned(),
            header,
            index: 0,
        })
    }

    pub fn format(&self) -> PixelFormat {
        self.header.format
    }

    /// (width, height) of the frames.
    pub fn size(&self) -> (u32, u32) {
        (self.header.width, self.header.height)
    }

    /// Bytes of the largest frame the file may hold: a buffer of this size takes any of its frames.
    pub fn max_bytes(&self) -> usize {
        self.header.max_bytes as usize
    }

    /// Frames read so far.
    pub fn frames_read(&self) -> usize {
        self.index
    }

    /// Reads the next frame into the start of `buf` (at least [`RawFrameReader::max_bytes`] long) and returns
    /// its length and label; `None` at the end of the file. A record cut short is an error naming the frame.
    pub fn next_frame(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<(usize, Option<u16>)>, SourceError> {
        let (path, index, h) = (&self.path, self.index, &self.header);
        let mut rec = [0u8; 8];
        match read_full(&mut self.r, &mut rec) {
            Ok(0) => return Ok(None),
            Ok(8) => {}
            Ok(_) => {
                return Err(bad(
                    path,
                    format!("frame {index}: record header cut short (truncated file?)"),
                ))
            }
            Err(e) => return Err(bad(path, format!("frame {index}: read failed: {e}"))),
        }
        let len = u32_at(&rec, 0) as usize;
        let label = u16::from_le_bytes([rec[4], rec[5]]);
        let ok = match h.format.frame_bytes(h.width, h.height) {
            Some(n) => len == n,
            None => len > 0 && len <= h.max_bytes as usize,
        };
        if !ok || len > buf.len() {
            return Err(bad(
                path,
                format!(
                    "frame {index}: {len} bytes does not fit a {} {}x{} frame",
                    h.format, h.width, h.height
                ),
            ));
        }
        self.r.read_exact(&mut buf[..len]).map_err(|e| {
            bad(
                path,
                format!("frame {index}: data cut short ({e}); the file is truncated"),
            )
        })?;
        self.index += 1;
        Ok(Some((len, (label != NO_LABEL).then_some(label))))
    }
}

/// Reads until `buf` is full or the end of the input; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl FrameSource for ReplaySource {
    fn describe(&self) -> String {
        format!(
            "replay camera '{}': {} ({} frames), {} {}x{} at {} fps{}",
            self.name,
            self.path.display(),
            self.frames.len(),
            self.format,
            self.width,
            self.height,
            self.fps,
            if self.looping { ", looping" } else { "" }
        )
    }

    fn start(&mut self) -> Result<(), SourceError> {
        self.data = Vec::new();
        self.frames = Vec::new();
        let meta = std::fs::metadata(&self.path).map_err(|source| SourceError::Open {
            path: self.path.clone(),
            source,
        })?;
        if meta.is_dir() {
            self.load_images()?;
        } else {
            self.load_raw()?;
        }
        self.data.shrink_to_fit();
        self.next = 0;
        self.pacer.reset();
        self.started = true;
        Ok(())
    }

    fn next_frame(&mut self, buf: &mut FrameBuf) -> Result<(), SourceError> {
        if !self.started {
            return Err(SourceError::NotStarted {
                camera: self.name.clone(),
            });
        }
        if self.next >= self.frames.len() {
            if !self.looping {
                return Err(SourceError::EndOfStream {
                    camera: self.name.clone(),
                });
            }
            self.next = 0;
        }
        let span = self.frames[self.next];
        if buf.data.len() < span.len {
            return Err(SourceError::BufferTooSmall {
                needed: span.len,
                capacity: buf.data.len(),
            });
        }
        let capture_ns = self.pacer.wait();
        buf.data[..span.len].copy_from_slice(&self.data[span.offset..span.offset + span.len]);
        buf.meta = FrameMeta {
            camera: self.camera,
            sequence: self.sequence,
            capture_ns,
            width: self.width,
            height: self.height,
            format: self.format,
            bytes: span.len,
            label: span.label,
        };
        self.next += 1;
        self.sequence += 1;
        Ok(())
    }

    fn stop(&mut self) {
        self.started = false;
    }

    fn max_frame_bytes(&self) -> usize {
        self.format.max_frame_bytes(self.width, self.height)
    }
}
