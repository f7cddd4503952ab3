//! Preparation: a camera frame in any supported pixel format -> the model's input tensor.
//!
//! What it computes (the tools' `prepare_image`, tools/ocellus_tools/prepare.py): the frame as RGB8 (YUYV and
//! NV12 as BT.601 limited range with yuvutils-rs, MJPEG with zune-jpeg, GREY replicated, BGR24 swapped), crop
//! and resize to the model's W x H, then `(u8 * rescale - mean[c]) / std[c]` per RGB channel c in f32, into NCHW
//! planes in the manifest's channel order.
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
//! fast_image_resize is no substitute: its SIMD and scalar paths alike use 16-bit coefficients of at most 15
//! bits where Pillow uses 22, and 16-18% of the bytes of a 640x480 -> 224x224 resize come out one level off.
//!
//! # How it is fast
//!
//! A frame is walked in strips of 16 rows, and only the region the resize reads (the crop and the filter's
//! support around it; every row and column with letterbox and squash):
//!
//! 1. **The strip's pixels**: read in place (RGB24, BGR24 with its planes swapped, GREY, the decoded JPEG), or
//!    converted by yuvutils-rs into a 16-row buffer (YUYV, NV12), whole rows: yuvutils-rs's SIMD and scalar
//!    code round some values differently and a row's width decides which a pixel gets, so converting only the
//!    region's columns would change results; whole rows keep every pixel what converting the frame gives.
//! 2. **Horizontal pass**: the strip's region is transposed (16x16 byte blocks), so an output column of the
//!    16 rows is 16 independent i32 sums over the same taps, one vector multiply-add per tap; the 16 results
//!    of 16 columns are transposed back into planar rows.
//! 3. **Vertical pass** on those planes, 32 columns per vector block, then **normalisation** of each resized
//!    plane straight into its output plane (`(v * rescale - mean) / std` in f32 vectors: the same IEEE
//!    operations as the tools', so the same bits), the letterbox pad around it.
//!
//! The inner loops exist in two builds of the same arithmetic ([`simd`]): portable (LLVM's vectors for the
//! target's baseline, SSE2 on x86_64 and NEON on aarch64) and, on x86_64 CPUs with AVX2 (detected at run time),
//! intrinsics. Unit tests run every build the CPU has against a plain port of Pillow's loops.
//!
//! Measured on the 2-core AMD EPYC build VM (AVX2 build; the CPU also has AVX-512, unused: the MSRV predates
//! its target features), criterion medians under the shared machine's load (benches/prepare.rs,
//! docs/bench.md has the table), 640x480 -> 224x224 bicubic centre crop: YUYV 1.00 ms (was 2.04 ms), RGB24 0.51 ms
//! (was 1.91 ms). Of YUYV's time about a third is yuvutils-rs's conversion.
//!
//! # Real-time contract
//!
//! Every buffer (the strip, its transpose, both passes' planes, the resize coefficients, MJPEG's decoded frame)
//! is allocated in [`Preparer::new`], sized by [`Preparer::scratch_bytes`]; [`Preparer::prepare`] never
//! allocates for the raw formats (a test counts). MJPEG decoding allocates inside zune-jpeg (its per-image
//! component buffers), bounded and the same every frame.

use yuvutils_rs::{
    YuvBiPlanarImage, YuvConversionMode, YuvPackedImage, YuvRange, YuvStandardMatrix,
};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use crate::frame::PixelFormat;
use crate::manifest::{ChannelOrder, Crop, Interpolation, Preprocess, ResizeMode};

mod resample;
#[allow(unsafe_code)]
mod simd;

use resample::{Axis, Filter, Lanes, LANES};

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
    crop: [f64; 4],
    /// Where the resized image sits in the W x H input (all of it, except with letterbox).
    placement: Placement,
    /// Bytes per pixel of the source the resize reads: 3 (RGB, or BGR read in place), 1 for GREY.
    channels: usize,
    /// For each output plane: the resized plane it reads (RGB channel order; BGR24 frames are read in place,
    /// so their plane 0 is blue; GREY has one).
    source_plane: [usize; 3],
    /// For each output plane: `rescale`, `mean` and `std` of its RGB channel.
    norm: [(f32, f32, f32); 3],
    /// For each output plane: the normalised pad value (letterbox only).
    pad: [f32; 3],
    plan: Plan,
    isa: simd::Isa,
    /// MJPEG only: the decoded frame, RGB8.
    rgb: Vec<u8>,
    /// YUYV and NV12: one strip of whole rows converted to RGB8.
    strip: Vec<u8>,
    /// One strip transposed: byte `b` of the region's rows (`b = column * channels + channel`) for 16 rows.
    t: Vec<Lanes>,
    /// The horizontal pass's output: `channels` planes of `rows_pad` rows of `stride` bytes.
    tmp: Vec<u8>,
    /// The vertical pass's output: `channels` planes of `placement.height` rows of `stride` bytes.
    resized: Vec<u8>,
}

/// What the resize reads and writes, fixed in [`Preparer::new`].
#[derive(Debug, Clone)]
struct Plan {
    /// The source region the passes read (filter support included): columns `x0 .. x0 + region_w`, rows
    /// `y0 .. y1` (even for NV12, whose rows convert in pairs).
    x0: usize,
    region_w: usize,
    y0: usize,
    y1: usize,
    /// Output columns per source column range, starts relative to `x0` (identity when Pillow skips the pass).
    horiz: Axis,
    /// Output rows per source row range, starts relative to `y0`.
    vert: Axis,
    /// Bytes per row of `tmp` and `resized`: the resized width rounded up to 16.
    stride: usize,
    /// Rows of each `tmp` plane: `y1 - y0` rounded up to 16.
    rows_pad: usize,
}

impl Plan {
    fn new(
        pre: &Preprocess,
        format: PixelFormat,
        width: u32,
        height: u32,
        crop: [f64; 4],
        placement: Placement,
    ) -> Plan {
        let (in_w, in_h) = (width as usize, height as usize);
        let (out_w, out_h) = (placement.width, placement.height);
        let filter = match pre.interpolation {
            Interpolation::Bilinear => Filter::Bilinear,
            Interpolation::Bicubic => Filter::Bicubic,
        };
        let (horiz, vert) = resample::passes(in_w, in_h, crop, out_w, out_h, filter);
        let mut horiz = horiz.unwrap_or_else(|| Axis::identity(out_w));
        let mut vert = vert.unwrap_or_else(|| Axis::identity(out_h));
        let (x0, mut x1) = horiz.span();
        let (mut y0, mut y1) = vert.span();
        x1 = x1.clamp(x0 + 1, in_w);
        y1 = y1.clamp(y0 + 1, in_h);
        if format == PixelFormat::Nv12 {
            (y0, y1) = (y0 & !1, (y1 + 1).min(in_h) & !1);
        }
        horiz.rebase(x0);
        vert.rebase(y0);
        Plan {
            x0,
            region_w: x1 - x0,
            y0,
            y1,
            horiz,
            vert,
            stride: out_w.next_multiple_of(LANES),
            rows_pad: (y1 - y0).next_multiple_of(LANES),
        }
    }
}

/// The frame being prepared, as the strips read it.
struct Source<'a> {
    format: PixelFormat,
    width: usize,
    height: usize,
    channels: usize,
    frame: &'a [u8],
    /// MJPEG: the decoded frame.
    rgb: &'a [u8],
}

impl<'a> Source<'a> {
    /// Rows `row0 .. row0 + rows` of the plan's region as RGB8 (or luma), one slice per lane: read in place
    /// from the frame (RGB24, BGR24, GREY) or the decoded JPEG, or converted into `strip` (YUYV, NV12); lanes
    /// past `rows` repeat the last row.
    ///
    /// YUYV and NV12 rows are converted whole: yuvutils-rs converts each row (NV12: each pair) by itself, but
    /// its SIMD and scalar code round some values differently, so a pixel's RGB depends on where the row's
    /// width puts it; whole rows keep every pixel exactly what converting the whole frame gives.
    fn strip(
        &self,
        plan: &Plan,
        row0: usize,
        rows: usize,
        strip: &'a mut [u8],
    ) -> Result<[&'a [u8]; LANES], PrepareError> {
        let (w, c, region_w) = (self.width, self.channels, plan.region_w);
        let lanes = |src: &'a [u8], stride: usize, x0: usize| -> [&'a [u8]; LANES] {
            std::array::from_fn(|r| &src[r.min(rows - 1) * stride + x0..][..region_w * c])
        };
        let convert = |e: yuvutils_rs::YuvError| PrepareError::Convert {
            format: self.format,
            reason: e.to_string(),
        };
        match self.format {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 | PixelFormat::Grey => {
                Ok(lanes(&self.frame[row0 * w * c..], w * c, plan.x0 * c))
            }
            PixelFormat::Mjpeg => Ok(lanes(&self.rgb[row0 * w * 3..], w * 3, plan.x0 * 3)),
            PixelFormat::Yuyv => {
                let image = YuvPackedImage {
                    yuy: &self.frame[row0 * w * 2..][..rows * w * 2],
                    yuy_stride: w as u32 * 2,
                    width: w as u32,
                    height: rows as u32,
                };
                yuvutils_rs::yuyv422_to_rgb(
                    &image,
                    &mut strip[..rows * w * 3],
                    w as u32 * 3,
                    YuvRange::Limited,
                    YuvStandardMatrix::Bt601,
                )
                .map_err(convert)?;
                Ok(lanes(strip, w * 3, plan.x0 * 3))
            }
            PixelFormat::Nv12 => {
                let (luma, chroma) = self.frame.split_at(w * self.height);
                let image = YuvBiPlanarImage {
                    y_plane: &luma[row0 * w..][..rows * w],
                    y_stride: w as u32,
                    uv_plane: &chroma[row0 / 2 * w..][..rows / 2 * w],
                    uv_stride: w as u32,
                    width: w as u32,
                    height: rows as u32,
                };
                yuvutils_rs::yuv_nv12_to_rgb(
                    &image,
                    &mut strip[..rows * w * 3],
                    w as u32 * 3,
                    YuvRange::Limited,
                    YuvStandardMatrix::Bt601,
                    YuvConversionMode::Balanced,
                )
                .map_err(convert)?;
                Ok(lanes(strip, w * 3, plan.x0 * 3))
            }
        }
    }
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
        let (channels, source_plane) = match format {
            PixelFormat::Grey => (1, [0; 3]),
            PixelFormat::Bgr24 => (3, plane_channel.map(|c| 2 - c)),
            _ => (3, plane_channel),
        };
        let norm = plane_channel.map(|c| (pre.rescale, pre.mean[c], pre.std[c]));
        let pad =
            plane_channel.map(|c| (f32::from(pre.pad[c]) * pre.rescale - pre.mean[c]) / pre.std[c]);
        let crop = crop_box(pre, width, height);
        let placement = placement(pre, width, height);
        let plan = Plan::new(pre, format, width, height, crop, placement);
        let converted = matches!(format, PixelFormat::Yuyv | PixelFormat::Nv12);
        let rgb = match format {
            PixelFormat::Mjpeg => vec![0; width as usize * height as usize * 3],
            _ => Vec::new(),
        };
        Ok(Preparer {
            format,
            width,
            height,
            out_w: pre.width,
            out_h: pre.height,
            crop,
            placement,
            channels,
            source_plane,
            norm,
            pad,
            isa: simd::Isa::detect(),
            rgb,
            strip: if converted {
                vec![0; LANES * width as usize * 3]
            } else {
                Vec::new()
            },
            t: vec![[0; LANES]; plan.region_w * channels],
            tmp: vec![0; channels * plan.rows_pad * plan.stride],
            resized: vec![0; channels * placement.height * plan.stride],
            plan,
        })
    }

    /// Scratch a preparer for `format` frames of `width` x `height` into `pre` holds, for the memory budget
    /// (an upper bound, known before one is made; [`Preparer::held_bytes`] is the exact figure): the MJPEG
    /// decode, a strip of 16 whole rows converted, the region transposed, the two passes' planes and the resize
    /// coefficients.
    pub fn scratch_bytes(pre: &Preprocess, format: PixelFormat, width: u32, height: u32) -> u64 {
        let (w, h) = (width as u64, height as u64);
        let (ow, oh) = (pre.width as u64, pre.height as u64);
        let lanes = LANES as u64;
        let c = if format == PixelFormat::Grey { 1 } else { 3 };
        let stride = ow.next_multiple_of(lanes);
        let source = match format {
            PixelFormat::Mjpeg => w * h * 3,
            PixelFormat::Yuyv | PixelFormat::Nv12 => lanes * w * 3,
            _ => 0,
        };
        let transposed = lanes * w * c;
        let tmp = c * h.next_multiple_of(lanes) * stride;
        let resized = c * oh * stride;
        // Pillow's kernels: 2 * ceil(support * max(in / out, 1)) + 1 taps per output, support at most 2, so an
        // axis of `out` outputs (at most the model's side, fewer with letterbox) holds at most
        // out * (2 * (2 * in / out + 2) + 1) = 4 * in + 5 * out coefficients of 4 bytes, and a start and a
        // length of 4 bytes per output.
        let axis = |input: u64, output: u64| (4 * input + 5 * output) * 4 + output * 8;
        let coefficients = axis(w, ow) + axis(h, oh);
        source + transposed + tmp + resized + coefficients
    }

    /// Bytes of scratch this preparer holds (the capacity of every buffer it allocated in `new`); never more
    /// than [`Preparer::scratch_bytes`] for the same arguments.
    pub fn held_bytes(&self) -> u64 {
        let buffers = self.rgb.capacity()
            + self.strip.capacity()
            + self.t.capacity() * LANES
            + self.tmp.capacity()
            + self.resized.capacity();
        (buffers + self.plan.horiz.held_bytes() + self.plan.vert.held_bytes()) as u64
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
        if self.format == PixelFormat::Mjpeg {
            self.decode_jpeg(frame)?;
        }
        let Preparer {
            format,
            width,
            height,
            channels,
            plan,
            isa,
            rgb,
            strip,
            t,
            tmp,
            ..
        } = self;
        let source = Source {
            format: *format,
            width: *width as usize,
            height: *height as usize,
            channels: *channels,
            frame,
            rgb,
        };
        for row0 in (plan.y0..plan.y1).step_by(LANES) {
            let rows = LANES.min(plan.y1 - row0);
            let lanes = source.strip(plan, row0, rows, strip)?;
            isa.horizontal_strip(
                *channels,
                &lanes,
                t,
                &plan.horiz,
                tmp,
                plan.rows_pad * plan.stride,
                plan.stride,
                row0 - plan.y0,
            );
        }
        self.resample_vertical();
        self.normalise(out);
        Ok(())
    }

    fn resample_vertical(&mut self) {
        let plan = &self.plan;
        let tmp_len = plan.rows_pad * plan.stride;
        let out_len = self.placement.height * plan.stride;
        for (tmp, out) in self
            .tmp
            .chunks_exact(tmp_len)
            .zip(self.resized.chunks_exact_mut(out_len))
        {
            self.isa.vertical_plane(tmp, &plan.vert, out, plan.stride);
        }
    }

    /// The resized planes normalised into `out` at the placement, the pad value around them.
    fn normalise(&self, out: &mut [f32]) {
        let Placement {
            left,
            top,
            width: sw,
            height: sh,
        } = self.placement;
        let stride = self.plan.stride;
        for (p, plane) in out.chunks_exact_mut(self.out_h * self.out_w).enumerate() {
            let resized = &self.resized[self.source_plane[p] * sh * stride..][..sh * stride];
            let (rescale, mean, std) = self.norm[p];
            for (y, row) in plane.chunks_exact_mut(self.out_w).enumerate() {
                if y < top || y >= top + sh {
                    row.fill(self.pad[p]);
                    continue;
                }
                row[..left].fill(self.pad[p]);
                row[left + sw..].fill(self.pad[p]);
                let src = &resized[(y - top) * stride..][..sw];
                self.isa
                    .normalise(src, &mut row[left..left + sw], rescale, mean, std);
            }
        }
    }

    /// Decodes an MJPEG frame into `self.rgb`. zune-jpeg panics on some malformed streams (an `unwrap` on a
    /// missing Huffman table, an `assert_eq!` on a component's buffer sizes; found by the `mjpeg` and `replay`
    /// fuzzers, docs/fuzzing.md): a panic inside the decoder is a corrupt frame, never a dead inference thread.
    fn decode_jpeg(&mut self, frame: &[u8]) -> Result<(), PrepareError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.decode_jpeg_unguarded(frame)
        }))
        .unwrap_or_else(|_| {
            Err(PrepareError::CorruptJpeg {
                reason: "the JPEG decoder (zune-jpeg) failed on it (a panic, caught)".into(),
            })
        })
    }

    fn decode_jpeg_unguarded(&mut self, frame: &[u8]) -> Result<(), PrepareError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    use resample::{reference, transpose16, PRECISION_BITS};

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    fn preprocess(
        height: usize,
        width: usize,
        resize: ResizeMode,
        interpolation: Interpolation,
    ) -> Preprocess {
        Preprocess {
            height,
            width,
            resize,
            interpolation,
            crop: if resize == ResizeMode::ShortestEdge {
                Crop::Center
            } else {
                Crop::None
            },
            channel_order: ChannelOrder::Rgb,
            rescale: 1.0 / 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            pad: [114, 30, 250],
        }
    }

    #[test]
    fn transpose16_swaps_rows_and_columns() {
        let bytes = noise(256, 7);
        let mut m = [[0u8; 16]; 16];
        for (r, row) in m.iter_mut().enumerate() {
            row.copy_from_slice(&bytes[r * 16..][..16]);
        }
        let t = transpose16(&m);
        for r in 0..16 {
            for c in 0..16 {
                assert_eq!(t[c][r], m[r][c], "({r}, {c})");
            }
        }
        assert_eq!(transpose16(&t), m);
    }

    /// The tensor the tools would make from an RGB24 or GREY frame, by the plain port of Pillow's loops on the
    /// whole frame (passes skipped as Pillow skips them), then placement, pad and normalisation.
    fn reference_prepare(
        pre: &Preprocess,
        format: PixelFormat,
        w: u32,
        h: u32,
        frame: &[u8],
    ) -> Vec<f32> {
        let c = if format == PixelFormat::Grey { 1 } else { 3 };
        let place = placement(pre, w, h);
        let filter = match pre.interpolation {
            Interpolation::Bilinear => Filter::Bilinear,
            Interpolation::Bicubic => Filter::Bicubic,
        };
        let crop = crop_box(pre, w, h);
        let (horiz, vert) = resample::passes(
            w as usize,
            h as usize,
            crop,
            place.width,
            place.height,
            filter,
        );
        let (rw, rh, resized) = reference::resample(
            frame,
            w as usize,
            h as usize,
            c,
            horiz.as_ref(),
            vert.as_ref(),
        );
        assert_eq!((rw, rh), (place.width, place.height));
        let order = match pre.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let norm = |v: u8, ch: usize| (v as f32 * pre.rescale - pre.mean[ch]) / pre.std[ch];
        let mut out = vec![0f32; 3 * pre.width * pre.height];
        for (p, &ch) in order.iter().enumerate() {
            for y in 0..pre.height {
                for x in 0..pre.width {
                    let inside = (place.left..place.left + rw).contains(&x)
                        && (place.top..place.top + rh).contains(&y);
                    out[(p * pre.height + y) * pre.width + x] = if inside {
                        let i = (y - place.top) * rw + x - place.left;
                        norm(resized[i * c + if c == 1 { 0 } else { ch }], ch)
                    } else {
                        norm(pre.pad[ch], ch)
                    };
                }
            }
        }
        out
    }

    /// Every build of the kernels (portable, and AVX2 where the CPU has it) against the plain port of Pillow,
    /// on noise frames whose sizes, crops and supports fall on every residue of the 16-lane strips and blocks:
    /// down- and upscaling, centre crop, squash, letterbox, identity, one and three channels, BGR planes.
    #[test]
    fn every_build_equals_the_plain_pillow_port() {
        let mut cases = 0;
        let sizes = [
            (640, 480),
            (97, 61),
            (61, 97),
            (33, 17),
            (16, 16),
            (17, 1),
            (1, 40),
            (5, 3),
        ];
        let models = [(224, 224), (64, 64), (17, 31), (40, 9), (1, 1), (100, 150)];
        for (i, &(w, h)) in sizes.iter().enumerate() {
            for &(mh, mw) in &models {
                for resize in [
                    ResizeMode::ShortestEdge,
                    ResizeMode::Squash,
                    ResizeMode::Letterbox,
                ] {
                    for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
                        for format in [PixelFormat::Rgb24, PixelFormat::Grey] {
                            let mut pre = preprocess(mh, mw, resize, interpolation);
                            if cases % 3 == 1 {
                                pre.channel_order = ChannelOrder::Bgr;
                            }
                            let frame = noise(format.frame_bytes(w, h).unwrap(), i as u64);
                            let expected = reference_prepare(&pre, format, w, h, &frame);
                            for isa in simd::Isa::available() {
                                let mut p = Preparer::new(&pre, format, w, h).unwrap();
                                p.isa = isa;
                                let mut out = vec![0f32; p.output_len()];
                                p.prepare(&frame, &mut out).unwrap();
                                let differ = out
                                    .iter()
                                    .zip(&expected)
                                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                                    .count();
                                assert_eq!(
                                    differ, 0,
                                    "{isa:?} {format} {w}x{h} -> {mw}x{mh} {resize:?} {interpolation:?}"
                                );
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 8 * 6 * 3 * 2 * 2);
    }

    /// The identity trick: a one-tap kernel of weight 1 << 22 returns every byte unchanged, which is what
    /// Pillow does when it skips a pass.
    #[test]
    fn identity_axis_returns_its_input() {
        let rows: Vec<u8> = (0..=255).collect();
        let axis = Axis::identity(16);
        let mut out = vec![0u8; 16 * 16];
        resample::vertical_plane(resample::Portable, &rows, &axis, &mut out, 16);
        assert_eq!(out, rows);
    }

    #[test]
    fn pillow_coefficients_sum_to_one() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            let a = Axis::pillow(640, 80.0, 560.0, 64, filter);
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
