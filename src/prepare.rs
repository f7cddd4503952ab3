//! Preparation: a camera frame in any supported pixel format -> the model's input tensor.
//!
//! Steps: convert to RGB8 (YUYV and NV12 as BT.601 limited range with yuvutils-rs, MJPEG with zune-jpeg, GREY
//! replicated, BGR24 swapped), crop and resize to the model's W x H, then `(u8 * rescale - mean[c]) / std[c]`
//! per RGB channel c in f32 (as tools/ocellus_tools/prepare.py), into NCHW planes in the manifest's channel
//! order.
//!
//! **Crop box.** In source pixel coordinates `(x0, y0, x1, y1)`, as floats (see [`crop_box`]):
//! `resize = "shortest_edge"` (with `crop = "center"`) takes the largest centred box with the model's aspect
//! ratio; `resize = "squash"` takes the whole frame. The box is resized straight to W x H.
//!
//! **Letterbox** (`resize = "letterbox"`, docs/manifest.md): the whole frame is resized to
//! [`letterbox_size`] (its aspect kept, sides rounded half up), placed centred in the W x H input
//! ([`placement`]), and every other pixel is the manifest's `pad` colour, normalised like the rest.
//!
//! **Resize.** The separable convolution of Pillow's `Image.resize((W, H), BILINEAR | BICUBIC, box=box)`,
//! reproduced bit for bit (same support, coefficients, 22-bit fixed point, rounding and pass order, and the box
//! rounded to f32 as Pillow's C code receives it), so a prepared tensor equals the tools' reference
//! preprocessing of the same RGB image (docs/manifest.md, `reference/`) exactly (max abs diff 0), resized or not.
//! fast_image_resize was measured too (see benches/prepare.rs) but computes its coefficients on every call,
//! allocating each frame, and differs from Pillow by a level here and there.
//!
//! Real-time contract: every buffer (RGB frame, resize coefficients and intermediate rows) is allocated in
//! [`Preparer::new`]; [`Preparer::prepare`] never allocates for the raw formats (a test counts). MJPEG
//! decoding allocates inside zune-jpeg (its per-image component buffers), bounded and the same every frame.

use yuvutils_rs::{
    YuvBiPlanarImage, YuvConversionMode, YuvPackedImage, YuvRange, YuvStandardMatrix,
};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use crate::frame::PixelFormat;
use crate::manifest::{ChannelOrder, Crop, Interpolation, Preprocess, ResizeMode};

/// Why a frame could not be prepared (or a preparer not made).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot prepare {format} {width}x{height} frames: {reason}")]
    Setup {
        format: PixelFormat,
        width: u32,
        height: u32,
        reason: String,
    },
    #[error("{format} {width}x{height} frame has {got} bytes, expected {expected}: the source delivered a short or padded frame")]
    FrameSize {
        format: PixelFormat,
        width: u32,
        height: u32,
        expected: usize,
        got: usize,
    },
    #[error("output tensor has {got} floats, the model input needs {expected} (3 x H x W)")]
    OutputSize { expected: usize, got: usize },
    #[error("corrupt MJPEG frame: {reason}")]
    CorruptJpeg { reason: String },
    #[error(
        "MJPEG frame is {got_width}x{got_height}, the camera is configured for {width}x{height}"
    )]
    JpegSize {
        width: u32,
        height: u32,
        got_width: u32,
        got_height: u32,
    },
    #[error("converting the {format} frame to RGB failed: {reason}")]
    Convert { format: PixelFormat, reason: String },
}

/// The crop box `(x0, y0, x1, y1)` in source pixel coordinates for a `src_w` x `src_h` frame, the box the tools
/// pass to Pillow's `resize(..., box=...)`:
///
/// * `shortest_edge`: if `src_w * H > src_h * W` (the frame is wider than the model input),
///   `cw = src_h * W / H`, box `((src_w - cw) / 2, 0, (src_w - cw) / 2 + cw, src_h)`; otherwise
///   `ch = src_w * H / W`, box `(0, (src_h - ch) / 2, src_w, (src_h - ch) / 2 + ch)` (f64 arithmetic).
/// * `squash` and `letterbox` (the whole frame is scaled): `(0, 0, src_w, src_h)`.
pub fn crop_box(pre: &Preprocess, src_w: u32, src_h: u32) -> [f64; 4] {
    let (w, h) = (src_w as f64, src_h as f64);
    let (mw, mh) = (pre.width as f64, pre.height as f64);
    match pre.resize {
        ResizeMode::Squash | ResizeMode::Letterbox => [0.0, 0.0, w, h],
        ResizeMode::ShortestEdge => {
            if w * mh > h * mw {
                let cw = h * mw / mh;
                let left = (w - cw) / 2.0;
                [left, 0.0, left + cw, h]
            } else {
                let ch = w * mh / mw;
                let top = (h - ch) / 2.0;
                [0.0, top, w, top + ch]
            }
        }
    }
}

/// The size `(sw, sh)` a `src_w` x `src_h` frame is scaled to inside the model's W x H with
/// `resize = "letterbox"` (docs/manifest.md, "Letterbox"; the tools' `letterbox_size`): s = min(W / w, H / h)
/// in f64, each side `round(side * s)` rounded half up (`f64::round`, for these non-negative values), clamped
/// to [1, W] and [1, H].
pub fn letterbox_size(pre: &Preprocess, src_w: u32, src_h: u32) -> (usize, usize) {
    let s = (pre.width as f64 / src_w as f64).min(pre.height as f64 / src_h as f64);
    let sw = ((src_w as f64 * s).round() as usize).clamp(1, pre.width);
    let sh = ((src_h as f64 * s).round() as usize).clamp(1, pre.height);
    (sw, sh)
}

/// Where the resized frame lands in the model input: `width` x `height` pixels at (`left`, `top`); the rest
/// of the input (letterbox only) is `pad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

/// The [`Placement`] of a `src_w` x `src_h` frame: the whole W x H input, or with letterbox
/// [`letterbox_size`] centred at ((W - sw) / 2, (H - sh) / 2) in integers (the odd pixel right and bottom).
pub fn placement(pre: &Preprocess, src_w: u32, src_h: u32) -> Placement {
    match pre.resize {
        ResizeMode::Letterbox => {
            let (width, height) = letterbox_size(pre, src_w, src_h);
            Placement {
                left: (pre.width - width) / 2,
                top: (pre.height - height) / 2,
                width,
                height,
            }
        }
        ResizeMode::ShortestEdge | ResizeMode::Squash => Placement {
            left: 0,
            top: 0,
            width: pre.width,
            height: pre.height,
        },
    }
}

/// Turns frames of one format and size into model input tensors.
pub struct Preparer {
    format: PixelFormat,
    width: u32,
    height: u32,
    out_w: usize,
    out_h: usize,
    /// Source channel of each output plane (RGB order: 0, 1, 2; BGR: 2, 1, 0).
    plane_channel: [usize; 3],
    /// `(v * rescale - mean[c]) / std[c]` for RGB channel c and byte value v (mean and std are per RGB
    /// channel, as in the tools; `channel_order` only orders the planes).
    lut: Box<[[f32; 256]; 3]>,
    /// The frame converted to RGB8 (or luma only for GREY); empty for RGB24, which is read in place.
    rgb: Vec<u8>,
    resample: Resample,
    /// The resized image, interleaved (3 channels, or 1 for GREY).
    resized: Vec<u8>,
    crop: [f64; 4],
    /// Where the resized image sits in the W x H input (all of it, except with letterbox).
    placement: Placement,
    /// Each output plane's normalised pad value (letterbox only).
    pad: [f32; 3],
}

impl Preparer {
    /// A preparer for `width` x `height` frames of `format` into the input described by `pre`; allocates every
    /// buffer `prepare` uses.
    pub fn new(
        pre: &Preprocess,
        format: PixelFormat,
        width: u32,
        height: u32,
    ) -> Result<Self, PrepareError> {
        let setup = |reason: String| PrepareError::Setup {
            format,
            width,
            height,
            reason,
        };
        format
            .check_size(width, height)
            .map_err(|r| setup(r.into()))?;
        if pre.width == 0 || pre.height == 0 || pre.width > 16_384 || pre.height > 16_384 {
            return Err(setup(format!(
                "model input {}x{} must be 1..=16384 per side",
                pre.width, pre.height
            )));
        }
        if pre.resize == ResizeMode::Letterbox && pre.crop != Crop::None {
            return Err(setup(
                "manifest preprocess has resize = \"letterbox\" with crop = \"center\"; letterbox needs crop = \"none\"".into(),
            ));
        }
        if pre.resize == ResizeMode::ShortestEdge && pre.crop == Crop::None {
            return Err(setup(
                "manifest preprocess has resize = \"shortest_edge\" with crop = \"none\"; the format allows crop = \"none\" only with resize = \"squash\"".into(),
            ));
        }
        if !pre.rescale.is_finite()
            || pre.mean.iter().any(|m| !m.is_finite())
            || pre.std.iter().any(|s| !s.is_finite() || *s == 0.0)
        {
            return Err(setup(
                "manifest preprocess rescale, mean and std must be finite and std non-zero".into(),
            ));
        }
        if format == PixelFormat::Mjpeg && (width > 65_535 || height > 65_535) {
            return Err(setup(
                "JPEG frames are at most 65535 pixels per side".into(),
            ));
        }
        let plane_channel = match pre.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        // f32 operations in the tools' order (numpy float32), so values agree bit for bit.
        let mut lut = Box::new([[0f32; 256]; 3]);
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 * pre.rescale - pre.mean[c]) / pre.std[c];
            }
        }
        let channels = if format == PixelFormat::Grey { 1 } else { 3 };
        let pixels = width as usize * height as usize;
        let rgb = match format {
            PixelFormat::Rgb24 => Vec::new(),
            _ => vec![0; pixels * channels],
        };
        let crop = crop_box(pre, width, height);
        let filter = match pre.interpolation {
            Interpolation::Bilinear => Filter::Bilinear,
            Interpolation::Bicubic => Filter::Bicubic,
        };
        let placement = placement(pre, width, height);
        let resample = Resample::new(
            width as usize,
            height as usize,
            placement.width,
            placement.height,
            crop,
            filter,
            channels,
        );
        let pad = plane_channel.map(|c| lut[c][pre.pad[c] as usize]);
        Ok(Preparer {
            format,
            width,
            height,
            out_w: pre.width,
            out_h: pre.height,
            plane_channel,
            lut,
            rgb,
            resample,
            resized: vec![0; placement.width * placement.height * channels],
            crop,
            placement,
            pad,
        })
    }

    /// Scratch a preparer for `format` frames of `width` x `height` into `pre` holds, for the memory budget
    /// (an upper bound, known before one is made): the RGB conversion, the horizontal pass's rows, the resized
    /// image, the resize coefficients and the normalisation table.
    pub fn scratch_bytes(pre: &Preprocess, format: PixelFormat, width: u32, height: u32) -> u64 {
        let (w, h) = (width as u64, height as u64);
        let (ow, oh) = (pre.width as u64, pre.height as u64);
        let c = if format == PixelFormat::Grey { 1 } else { 3 };
        let rgb = if format == PixelFormat::Rgb24 {
            0
        } else {
            w * h * c
        };
        let tmp = ow * h * c;
        let resized = ow * oh * c;
        // Pillow's kernels: 2 * ceil(support * max(in / out, 1)) + 1 taps per output, support at most 2, so an
        // axis of `out` outputs (at most the model's side, fewer with letterbox) holds at most
        // out * (2 * (2 * in / out + 2) + 1) = 4 * in + 5 * out coefficients of 4 bytes, and a start and a
        // length per output.
        let axis = |input: u64, output: u64| (4 * input + 5 * output) * 4 + output * 16;
        let coefficients = axis(w, ow) + axis(h, oh);
        let lut = 3 * 256 * 4;
        rgb + tmp + resized + coefficients + lut
    }

    /// Bytes of scratch this preparer holds (the capacity of every buffer it allocated in `new`); never more
    /// than [`Preparer::scratch_bytes`] for the same arguments.
    pub fn held_bytes(&self) -> u64 {
        let axis = |a: &Option<Axis>| {
            a.as_ref().map_or(0, |a| {
                (a.start.capacity() + a.len.capacity()) * std::mem::size_of::<usize>()
                    + a.k.capacity() * 4
            })
        };
        (self.rgb.capacity()
            + self.resized.capacity()
            + self.resample.tmp.capacity()
            + std::mem::size_of_val(&*self.lut)) as u64
            + axis(&self.resample.horiz) as u64
            + axis(&self.resample.vert) as u64
    }

    /// Floats `prepare` writes: 3 x H x W.
    pub fn output_len(&self) -> usize {
        3 * self.out_h * self.out_w
    }

    /// The crop box in source pixels (see [`crop_box`]).
    pub fn crop(&self) -> [f64; 4] {
        self.crop
    }

    /// The frame format and size this preparer takes.
    pub fn input(&self) -> (PixelFormat, u32, u32) {
        (self.format, self.width, self.height)
    }

    /// Prepares one frame (`frame` holds exactly the frame's bytes) into `out` (3 x H x W f32, NCHW).
    /// Never allocates, except inside zune-jpeg for MJPEG.
    pub fn prepare(&mut self, frame: &[u8], out: &mut [f32]) -> Result<(), PrepareError> {
        let expected_out = self.output_len();
        if out.len() != expected_out {
            return Err(PrepareError::OutputSize {
                expected: expected_out,
                got: out.len(),
            });
        }
        if let Some(expected) = self.format.frame_bytes(self.width, self.height) {
            if frame.len() != expected {
                return Err(PrepareError::FrameSize {
                    format: self.format,
                    width: self.width,
                    height: self.height,
                    expected,
                    got: frame.len(),
                });
            }
        }
        self.convert_to_rgb(frame)?;
        let src: &[u8] = if self.format == PixelFormat::Rgb24 {
            frame
        } else {
            &self.rgb
        };
        self.resample.run(src, &mut self.resized);
        let hw = self.out_h * self.out_w;
        let Placement {
            left,
            top,
            width: sw,
            height: sh,
        } = self.placement;
        let c = if self.format == PixelFormat::Grey {
            1
        } else {
            3
        };
        for (p, plane) in out.chunks_exact_mut(hw).enumerate() {
            let channel = self.plane_channel[p];
            let lut = &self.lut[channel];
            let offset = if c == 1 { 0 } else { channel };
            for (y, row) in plane.chunks_exact_mut(self.out_w).enumerate() {
                if y < top || y >= top + sh {
                    row.fill(self.pad[p]);
                    continue;
                }
                row[..left].fill(self.pad[p]);
                row[left + sw..].fill(self.pad[p]);
                let src = &self.resized[(y - top) * sw * c..][..sw * c];
                for (o, px) in row[left..left + sw].iter_mut().zip(src.chunks_exact(c)) {
                    *o = lut[px[offset] as usize];
                }
            }
        }
        Ok(())
    }

    fn convert_to_rgb(&mut self, frame: &[u8]) -> Result<(), PrepareError> {
        let (w, h) = (self.width, self.height);
        let convert = |e: yuvutils_rs::YuvError| PrepareError::Convert {
            format: self.format,
            reason: e.to_string(),
        };
        match self.format {
            PixelFormat::Rgb24 => Ok(()),
            PixelFormat::Grey => {
                self.rgb.copy_from_slice(frame);
                Ok(())
            }
            PixelFormat::Bgr24 => {
                for (o, i) in self.rgb.chunks_exact_mut(3).zip(frame.chunks_exact(3)) {
                    o[0] = i[2];
                    o[1] = i[1];
                    o[2] = i[0];
                }
                Ok(())
            }
            PixelFormat::Yuyv => {
                let packed = YuvPackedImage {
                    yuy: frame,
                    yuy_stride: w * 2,
                    width: w,
                    height: h,
                };
                yuvutils_rs::yuyv422_to_rgb(
                    &packed,
                    &mut self.rgb,
                    w * 3,
                    YuvRange::Limited,
                    YuvStandardMatrix::Bt601,
                )
                .map_err(convert)
            }
            PixelFormat::Nv12 => {
                let pixels = w as usize * h as usize;
                let (y, uv) = frame.split_at(pixels);
                let bi = YuvBiPlanarImage {
                    y_plane: y,
                    y_stride: w,
                    uv_plane: uv,
                    uv_stride: w,
                    width: w,
                    height: h,
                };
                yuvutils_rs::yuv_nv12_to_rgb(
                    &bi,
                    &mut self.rgb,
                    w * 3,
                    YuvRange::Limited,
                    YuvStandardMatrix::Bt601,
                    YuvConversionMode::Balanced,
                )
                .map_err(convert)
            }
            PixelFormat::Mjpeg => self.decode_jpeg(frame),
        }
    }

    fn decode_jpeg(&mut self, frame: &[u8]) -> Result<(), PrepareError> {
        check_jpeg_framing(frame)?;
        let options = DecoderOptions::default()
            .set_strict_mode(true)
            .set_max_width(self.width as usize)
            .set_max_height(self.height as usize)
            .jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut decoder = zune_jpeg::JpegDecoder::new_with_options(frame, options);
        let corrupt = |e: zune_jpeg::errors::DecodeErrors| PrepareError::CorruptJpeg {
            reason: format!("{e:?}"),
        };
        decoder.decode_headers().map_err(corrupt)?;
        let info = decoder.info().ok_or_else(|| PrepareError::CorruptJpeg {
            reason: "no frame header".into(),
        })?;
        let (gw, gh) = (info.width as u32, info.height as u32);
        if (gw, gh) != (self.width, self.height) {
            return Err(PrepareError::JpegSize {
                width: self.width,
                height: self.height,
                got_width: gw,
                got_height: gh,
            });
        }
        if decoder.get_output_colorspace() != Some(ColorSpace::RGB) {
            return Err(PrepareError::CorruptJpeg {
                reason: "cannot be decoded to RGB (unsupported colour space)".into(),
            });
        }
        decoder.decode_into(&mut self.rgb).map_err(corrupt)
    }
}

/// A JPEG must start with SOI (FF D8) and end with EOI (FF D9), allowing the zero padding some UVC cameras
/// append; anything else is a truncated or foreign frame.
fn check_jpeg_framing(frame: &[u8]) -> Result<(), PrepareError> {
    if frame.len() < 4 || frame[0] != 0xFF || frame[1] != 0xD8 {
        return Err(PrepareError::CorruptJpeg {
            reason: format!(
                "{} bytes without the JPEG start marker (FF D8)",
                frame.len()
            ),
        });
    }
    let end = frame.len()
        - frame
            .iter()
            .rev()
            .take(4096)
            .take_while(|&&b| b == 0)
            .count();
    if end < 4 || frame[end - 2] != 0xFF || frame[end - 1] != 0xD9 {
        return Err(PrepareError::CorruptJpeg {
            reason: format!(
                "{} bytes without the end marker (FF D9): the frame is truncated",
                frame.len()
            ),
        });
    }
    Ok(())
}

// ---- Pillow's resampling (libImaging/Resample.c), 8 bits per channel ----

const PRECISION_BITS: u32 = 32 - 8 - 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Coefficients of one axis: for output index i, inputs `start[i] .. start[i] + len[i]` with weights
/// `k[i * ksize ..]` in 22-bit fixed point.
#[derive(Debug, Clone)]
struct Axis {
    start: Vec<usize>,
    len: Vec<usize>,
    k: Vec<i32>,
    ksize: usize,
}

impl Axis {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`; `in0`, `in1` are the box edges as C floats.
    fn new(in_size: usize, in0: f32, in1: f32, out_size: usize, filter: Filter) -> Axis {
        let scale = (in1 - in0) as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut k = vec![0i32; out_size * ksize];
        let mut w = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = in0 as f64 + (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let n = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let mut ww = 0.0;
            for (x, slot) in w.iter_mut().enumerate().take(n) {
                let v = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
                *slot = v;
                ww += v;
            }
            let row = &mut k[xx * ksize..(xx + 1) * ksize];
            for (dst, &v) in row.iter_mut().zip(&w[..n]) {
                let v = if ww != 0.0 { v / ww } else { v };
                let scaled = v * (1u32 << PRECISION_BITS) as f64;
                *dst = if v < 0.0 {
                    (-0.5 + scaled) as i32
                } else {
                    (0.5 + scaled) as i32
                };
            }
            start.push(xmin as usize);
            len.push(n);
        }
        Axis {
            start,
            len,
            k,
            ksize,
        }
    }

    fn weights(&self, i: usize) -> (usize, &[i32]) {
        let k = &self.k[i * self.ksize..i * self.ksize + self.len[i]];
        (self.start[i], k)
    }
}

#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A planned resize of one source size and box to one output size.
#[derive(Debug, Clone)]
struct Resample {
    in_w: usize,
    out_w: usize,
    out_h: usize,
    channels: usize,
    /// Source and destination have the same size and the box is the whole frame: copy.
    copy: bool,
    horiz: Option<Axis>,
    vert: Option<Axis>,
    /// Source rows the vertical pass reads (all rows the horizontal pass must produce).
    ybox_first: usize,
    ybox_last: usize,
    /// Horizontal pass output: `out_w` x `(ybox_last - ybox_first)`.
    tmp: Vec<u8>,
}

impl Resample {
    fn new(
        in_w: usize,
        in_h: usize,
        out_w: usize,
        out_h: usize,
        crop: [f64; 4],
        filter: Filter,
        channels: usize,
    ) -> Resample {
        let b = crop.map(|v| v as f32);
        let full = b == [0.0, 0.0, in_w as f32, in_h as f32];
        let copy = in_w == out_w && in_h == out_h && full;
        let need_h = out_w != in_w || b[0] != 0.0 || b[2] != out_w as f32;
        let need_v = out_h != in_h || b[1] != 0.0 || b[3] != out_h as f32;
        let horiz = Axis::new(in_w, b[0], b[2], out_w, filter);
        let mut vert = Axis::new(in_h, b[1], b[3], out_h, filter);
        let ybox_first = vert.start[0];
        let ybox_last = vert.start[out_h - 1] + vert.len[out_h - 1];
        let mut tmp = Vec::new();
        if need_h && !copy {
            for s in &mut vert.start {
                *s -= ybox_first;
            }
            tmp = vec![0; out_w * (ybox_last - ybox_first) * channels];
        }
        Resample {
            in_w,
            out_w,
            out_h,
            channels,
            copy,
            horiz: (need_h && !copy).then_some(horiz),
            vert: (need_v && !copy).then_some(vert),
            ybox_first,
            ybox_last,
            tmp,
        }
    }

    fn run(&mut self, src: &[u8], dst: &mut [u8]) {
        if self.copy {
            dst.copy_from_slice(&src[..dst.len()]);
            return;
        }
        match self.channels {
            1 => self.run_c::<1>(src, dst),
            _ => self.run_c::<3>(src, dst),
        }
    }

    fn run_c<const C: usize>(&mut self, src: &[u8], dst: &mut [u8]) {
        let (vsrc, vsrc_w): (&[u8], usize) = match &self.horiz {
            Some(h) => {
                let rows = self.ybox_last - self.ybox_first;
                let in_stride = self.in_w * C;
                for r in 0..rows {
                    let line = &src[(r + self.ybox_first) * in_stride..][..in_stride];
                    let out = &mut self.tmp[r * self.out_w * C..][..self.out_w * C];
                    for (xx, px) in out.chunks_exact_mut(C).enumerate() {
                        let (x0, k) = h.weights(xx);
                        let mut ss = [1i32 << (PRECISION_BITS - 1); C];
                        for (j, &kv) in k.iter().enumerate() {
                            let p = &line[(x0 + j) * C..(x0 + j) * C + C];
                            for c in 0..C {
                                ss[c] += p[c] as i32 * kv;
                            }
                        }
                        for c in 0..C {
                            px[c] = clip8(ss[c]);
                        }
                    }
                }
                (&self.tmp, self.out_w)
            }
            None => (src, self.in_w),
        };
        match &self.vert {
            Some(v) => {
                let stride = vsrc_w * C;
                for yy in 0..self.out_h {
                    let (y0, k) = v.weights(yy);
                    let out = &mut dst[yy * self.out_w * C..][..self.out_w * C];
                    for (i, px) in out.chunks_exact_mut(C).enumerate() {
                        let mut ss = [1i32 << (PRECISION_BITS - 1); C];
                        for (j, &kv) in k.iter().enumerate() {
                            let p = &vsrc[(y0 + j) * stride + i * C..][..C];
                            for c in 0..C {
                                ss[c] += p[c] as i32 * kv;
                            }
                        }
                        for c in 0..C {
                            px[c] = clip8(ss[c]);
                        }
                    }
                }
            }
            None => {
                let n = self.out_w * self.out_h * C;
                dst[..n].copy_from_slice(&vsrc[..n]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillow_coefficients_sum_to_one() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            let a = Axis::new(640, 80.0, 560.0, 64, filter);
            for i in 0..64 {
                let (_, k) = a.weights(i);
                let sum: i64 = k.iter().map(|&v| v as i64).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{sum}"
                );
            }
        }
    }

    #[test]
    fn letterbox_size_rounds_half_up_and_clamps() {
        let pre = |height, width| Preprocess {
            height,
            width,
            resize: ResizeMode::Letterbox,
            interpolation: Interpolation::Bilinear,
            crop: Crop::None,
            channel_order: ChannelOrder::Rgb,
            rescale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
            pad: [114; 3],
        };
        // Ties: 97 * 0.5 = 48.5 -> 49 (Python's round would give 48).
        assert_eq!(letterbox_size(&pre(64, 64), 128, 97), (64, 49));
        assert_eq!(letterbox_size(&pre(30, 50), 97, 60), (49, 30));
        assert_eq!(letterbox_size(&pre(64, 64), 640, 480), (64, 48));
        assert_eq!(letterbox_size(&pre(64, 64), 480, 640), (48, 64));
        assert_eq!(letterbox_size(&pre(64, 64), 64, 64), (64, 64));
        // Upscaled: 49 x 33 into 64 x 64, s = 64 / 49.
        assert_eq!(letterbox_size(&pre(64, 64), 49, 33), (64, 43));
        // A sliver keeps one row.
        assert_eq!(letterbox_size(&pre(64, 64), 1000, 1), (64, 1));
        assert_eq!(letterbox_size(&pre(64, 64), 1, 16_384), (1, 64));
        let p = placement(&pre(64, 64), 128, 97);
        assert_eq!(
            p,
            Placement {
                left: 0,
                top: 7,
                width: 64,
                height: 49
            }
        );
        let p = placement(&pre(30, 50), 97, 60);
        assert_eq!((p.left, p.top), (0, 0));
        let p = placement(&pre(64, 64), 48, 64);
        assert_eq!((p.left, p.top, p.width, p.height), (8, 0, 48, 64));
    }

    #[test]
    fn crop_box_is_centred_with_model_aspect() {
        let pre = Preprocess {
            height: 64,
            width: 64,
            resize: ResizeMode::ShortestEdge,
            interpolation: Interpolation::Bilinear,
            crop: Crop::Center,
            channel_order: ChannelOrder::Rgb,
            rescale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
            pad: [0; 3],
        };
        assert_eq!(crop_box(&pre, 640, 480), [80.0, 0.0, 560.0, 480.0]);
        assert_eq!(crop_box(&pre, 480, 640), [0.0, 80.0, 480.0, 560.0]);
        assert_eq!(crop_box(&pre, 64, 64), [0.0, 0.0, 64.0, 64.0]);
        let squash = Preprocess {
            resize: ResizeMode::Squash,
            ..pre
        };
        assert_eq!(crop_box(&squash, 640, 480), [0.0, 0.0, 640.0, 480.0]);
    }
}
