//! Preparation: Pillow parity (fixtures made by tests/fixtures/prepare/make.py), every pixel format round trip
//! from a known RGB frame, corrupt and wrong-sized frames rejected, and zero allocations per frame.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayD};
use ndarray_npy::ReadNpyExt;
use ocellus::frame::{FrameBuf, PixelFormat};
use ocellus::manifest::{ChannelOrder, Crop, Interpolation, Preprocess, ResizeMode};
use ocellus::prepare::{letterbox_size, placement, PrepareError, Preparer};
use ocellus::source::replay::decode_png_rgb;
use ocellus::source::{CameraSettings, SourceSettings};
use ocellus::source::{FrameSource, SyntheticSource};

// ---- a global allocator that counts allocations made by the current thread ----

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call forwards to the system allocator with the caller's arguments unchanged; the counter is a
// const-initialised thread-local Cell that itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded from our caller, who upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: `ptr` and `layout` come from this allocator (which is System underneath).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by System with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

// ---- helpers ----

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prepare")
}

fn pre(
    side_h: usize,
    side_w: usize,
    interpolation: Interpolation,
    resize: ResizeMode,
) -> Preprocess {
    Preprocess {
        height: side_h,
        width: side_w,
        resize,
        interpolation,
        crop: Crop::Center,
        channel_order: ChannelOrder::Rgb,
        rescale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
        pad: [0; 3],
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn synthetic_frame(format: PixelFormat, width: u32, height: u32, seed: u64) -> FrameBuf {
    let camera = CameraSettings {
        name: "test".into(),
        source: SourceSettings::Synthetic {
            seed,
            hold_frames: 30,
        },
        format,
        width,
        height,
        fps: 0,
        pool_size: 3,
    };
    let mut source = SyntheticSource::new(0, &camera).expect("synthetic source");
    source.start().expect("start");
    let mut buf = FrameBuf::new(source.max_frame_bytes());
    source.next_frame(&mut buf).expect("frame");
    buf
}

// ---- Pillow parity ----

#[test]
fn matches_pillow_resize_bit_for_bit() {
    let (w, h, rgb) = decode_png_rgb(&fixtures().join("src.png")).expect("fixture png");
    assert_eq!((w, h), (97, 61));
    let cases = [
        (
            "bilinear_se_16x16",
            Interpolation::Bilinear,
            ResizeMode::ShortestEdge,
            16,
            16,
        ),
        (
            "bicubic_se_12x24",
            Interpolation::Bicubic,
            ResizeMode::ShortestEdge,
            12,
            24,
        ),
        (
            "bilinear_squash_30x20",
            Interpolation::Bilinear,
            ResizeMode::Squash,
            30,
            20,
        ),
        (
            "bicubic_squash_up_64x104",
            Interpolation::Bicubic,
            ResizeMode::Squash,
            64,
            104,
        ),
        (
            "bilinear_identity_61x97",
            Interpolation::Bilinear,
            ResizeMode::ShortestEdge,
            61,
            97,
        ),
    ];
    for (name, interpolation, resize, mh, mw) in cases {
        let mut p = pre(mh, mw, interpolation, resize);
        p.mean = [0.48, 0.46, 0.41];
        p.std = [0.27, 0.26, 0.28];
        let expected = Array4::<f32>::read_npy(
            std::fs::File::open(fixtures().join(format!("{name}.npy"))).expect("npy"),
        )
        .expect("read npy");
        assert_eq!(expected.shape(), &[1, 3, mh, mw], "{name}");
        let mut preparer = Preparer::new(&p, PixelFormat::Rgb24, w, h).expect("preparer");
        let mut out = vec![0f32; preparer.output_len()];
        preparer.prepare(&rgb, &mut out).expect("prepare");
        let expected = expected.as_slice().expect("contiguous");
        let diff = max_abs_diff(&out, expected);
        // The same integer resize and the same f32 operations as numpy: equal, not merely close (one u8
        // level is 1/255/std ~ 0.015).
        assert_eq!(diff, 0.0, "{name}: max abs diff {diff} against Pillow");
    }
}

/// src.png's pixels as the letterbox fixtures' sources name them (make.py's `LETTERBOX`): "src" (97 x 61),
/// "rows60" (its first 60 rows) and "portrait" (its transpose, 61 x 97).
fn letterbox_source(name: &str) -> (u32, u32, Vec<u8>) {
    let (w, h, rgb) = decode_png_rgb(&fixtures().join("src.png")).expect("fixture png");
    match name {
        "src" => (w, h, rgb),
        "rows60" => (w, 60, rgb[..w as usize * 60 * 3].to_vec()),
        "portrait" => {
            let (w, h) = (w as usize, h as usize);
            let mut t = vec![0u8; w * h * 3];
            for y in 0..h {
                for x in 0..w {
                    t[(x * h + y) * 3..][..3].copy_from_slice(&rgb[(y * w + x) * 3..][..3]);
                }
            }
            (h as u32, w as u32, t)
        }
        _ => panic!("no source {name}"),
    }
}

/// Letterbox against the tools' `prepare_image` (fixtures from make.py): pads on the left and right, on the
/// top and bottom (BGR planes), upscaling with an odd remainder, a rounding tie (97 * 0.5 = 48.5 -> 49, where
/// Python's `round` would give 48) and a portrait source; bilinear and bicubic; coloured pads.
#[test]
fn letterbox_matches_the_tools_bit_for_bit() {
    let cases = [
        (
            "letterbox_bicubic_wide_30x100",
            Interpolation::Bicubic,
            30,
            100,
            ChannelOrder::Rgb,
            [200, 30, 90],
            "src",
            (48, 30),
        ),
        (
            "letterbox_bilinear_tall_50x24_bgr",
            Interpolation::Bilinear,
            50,
            24,
            ChannelOrder::Bgr,
            [10, 250, 128],
            "src",
            (24, 15),
        ),
        (
            "letterbox_bicubic_up_128x200",
            Interpolation::Bicubic,
            128,
            200,
            ChannelOrder::Rgb,
            [114, 114, 114],
            "src",
            (200, 126),
        ),
        (
            "letterbox_bilinear_tie_30x50",
            Interpolation::Bilinear,
            30,
            50,
            ChannelOrder::Rgb,
            [0, 0, 0],
            "rows60",
            (49, 30),
        ),
        (
            "letterbox_bicubic_portrait_40x40",
            Interpolation::Bicubic,
            40,
            40,
            ChannelOrder::Rgb,
            [255, 128, 1],
            "portrait",
            (25, 40),
        ),
    ];
    for (name, interpolation, mh, mw, channel_order, pad, source, scaled) in cases {
        let (w, h, rgb) = letterbox_source(source);
        let p = Preprocess {
            crop: Crop::None,
            channel_order,
            mean: [0.48, 0.46, 0.41],
            std: [0.27, 0.26, 0.28],
            pad,
            ..pre(mh, mw, interpolation, ResizeMode::Letterbox)
        };
        assert_eq!(letterbox_size(&p, w, h), scaled, "{name}");
        let expected = Array4::<f32>::read_npy(
            std::fs::File::open(fixtures().join(format!("{name}.npy"))).expect("npy"),
        )
        .expect("read npy");
        assert_eq!(expected.shape(), &[1, 3, mh, mw], "{name}");
        let mut preparer = Preparer::new(&p, PixelFormat::Rgb24, w, h).expect("preparer");
        let mut out = vec![0f32; preparer.output_len()];
        preparer.prepare(&rgb, &mut out).expect("prepare");
        let diff = max_abs_diff(&out, expected.as_slice().expect("contiguous"));
        assert_eq!(diff, 0.0, "{name}: max abs diff {diff} against the tools");
    }
}

/// A uniform frame letterboxed: every pixel of the placement is the frame's colour and every other pixel the
/// pad colour (each normalised with its own channel's mean and std), in every orientation, for RGB and for
/// GREY (whose pad stays the RGB pad colour, as the tools convert grey images to RGB first).
#[test]
fn letterbox_pads_exactly_outside_the_placement() {
    let norm = |v: u8, c: usize, p: &Preprocess| (v as f32 * p.rescale - p.mean[c]) / p.std[c];
    for (w, h, mh, mw) in [
        (64, 48, 32, 32),
        (48, 64, 32, 32),
        (30, 31, 16, 40),
        (200, 20, 7, 9),
        (6, 4, 25, 11),
    ] {
        for format in [PixelFormat::Rgb24, PixelFormat::Grey] {
            for order in [ChannelOrder::Rgb, ChannelOrder::Bgr] {
                let p = Preprocess {
                    crop: Crop::None,
                    channel_order: order,
                    mean: [0.1, 0.5, 0.9],
                    std: [0.2, 0.3, 0.4],
                    pad: [7, 130, 251],
                    ..pre(mh, mw, Interpolation::Bicubic, ResizeMode::Letterbox)
                };
                let colour = [90u8, 160, 33];
                let frame: Vec<u8> = match format {
                    PixelFormat::Grey => vec![colour[0]; (w * h) as usize],
                    _ => (0..w * h).flat_map(|_| colour).collect(),
                };
                let mut preparer = Preparer::new(&p, format, w, h).expect("preparer");
                let mut out = vec![0f32; preparer.output_len()];
                preparer.prepare(&frame, &mut out).expect("prepare");
                let place = placement(&p, w, h);
                assert_eq!((place.width, place.height), letterbox_size(&p, w, h));
                assert_eq!(place.left, (mw - place.width) / 2);
                assert_eq!(place.top, (mh - place.height) / 2);
                let what = format!("{format} {w}x{h} -> {mw}x{mh} {order:?}");
                for plane in 0..3 {
                    let c = match order {
                        ChannelOrder::Rgb => plane,
                        ChannelOrder::Bgr => 2 - plane,
                    };
                    let inside = match format {
                        PixelFormat::Grey => norm(colour[0], c, &p),
                        _ => norm(colour[c], c, &p),
                    };
                    let padded = norm(p.pad[c], c, &p);
                    assert_ne!(inside, padded);
                    let mut pads = 0;
                    for y in 0..mh {
                        for x in 0..mw {
                            let v = out[(plane * mh + y) * mw + x];
                            let within = (place.left..place.left + place.width).contains(&x)
                                && (place.top..place.top + place.height).contains(&y);
                            if within {
                                assert_eq!(v, inside, "{what}: plane {plane} ({x}, {y})");
                            } else {
                                assert_eq!(v, padded, "{what}: plane {plane} ({x}, {y})");
                                pads += 1;
                            }
                        }
                    }
                    assert_eq!(pads, mw * mh - place.width * place.height, "{what}");
                }
            }
        }
    }
}

/// Prepares each reference PNG of a bundle's `reference/` (written by `ocellus-tools validate`) with the
/// bundle's preprocessing, as RGB24, and returns (file, max abs diff against its pixel_values.npy, values that
/// differ); None when the bundle is not there.
fn reference_diffs(bundle: &str) -> Option<Vec<(String, f32, usize)>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(bundle);
    let index_path = root.join("reference/index.toml");
    let Ok(index) = std::fs::read_to_string(&index_path) else {
        eprintln!("skipped: {} not found", index_path.display());
        return None;
    };
    let manifest =
        ocellus::manifest::Manifest::load(&root.join("manifest.toml")).expect("manifest");
    let index: toml::Table = toml::from_str(&index).expect("reference index");
    let images = index
        .get("images")
        .and_then(|v| v.as_array())
        .expect("reference index lists images");
    assert!(!images.is_empty());
    let mut diffs = Vec::new();
    for image in images {
        let file = image.get("file").and_then(|v| v.as_str()).expect("file");
        let pv = image
            .get("pixel_values")
            .and_then(|v| v.as_str())
            .expect("pixel_values");
        let (w, h, rgb) =
            decode_png_rgb(&root.join("reference").join(file)).expect("reference png");
        let expected = ArrayD::<f32>::read_npy(
            std::fs::File::open(root.join("reference").join(pv)).expect("npy"),
        )
        .expect("read npy");
        let mut preparer =
            Preparer::new(&manifest.preprocess, PixelFormat::Rgb24, w, h).expect("preparer");
        let mut out = vec![0f32; preparer.output_len()];
        preparer.prepare(&rgb, &mut out).expect("prepare");
        let expected = expected.as_slice().expect("contiguous");
        let diff = max_abs_diff(&out, expected);
        let off: Vec<usize> = (0..out.len()).filter(|&i| out[i] != expected[i]).collect();
        eprintln!(
            "{bundle}/{file} ({w}x{h}): max abs diff {diff:e}, {} values differ, first {:?}",
            off.len(),
            &off[..off.len().min(8)]
        );
        diffs.push((format!("{file} ({w}x{h})"), diff, off.len()));
    }
    Some(diffs)
}

/// When models/demo/reference/ exists (written by `ocellus-tools validate`), our preparation of each reference
/// PNG must match its pixel_values.npy.
#[test]
fn matches_demo_reference_pixel_values() {
    for (file, diff, differ) in reference_diffs("demo").unwrap_or_default() {
        assert_eq!(
            (diff, differ),
            (0.0, 0),
            "{file}: max abs diff {diff} against the tools' pixel_values"
        );
    }
}

/// The committed letterbox bundle (models/vit-import: 64x64 bilinear, pad 114): its reference images are the
/// model's size (identity), landscape and portrait with odd sides, a rounding tie (128x97 -> 64 x 48.5 -> 49)
/// and one smaller than the model (scaled up); each prepared must equal the tools' pixel_values.
#[test]
fn matches_letterbox_reference_pixel_values() {
    let diffs = reference_diffs("vit-import").expect("models/vit-import is committed");
    assert_eq!(diffs.len(), 6, "{diffs:?}");
    for (file, diff, differ) in diffs {
        assert_eq!(
            (diff, differ),
            (0.0, 0),
            "{file}: max abs diff {diff} against the tools' pixel_values"
        );
    }
}

// ---- every format from a known RGB frame ----

/// Each format of the same synthetic scene, prepared, lands close to the RGB24 frame prepared: YUV formats
/// within chroma-subsampling error, MJPEG within JPEG error, GREY equal to the luma of the RGB result.
#[test]
fn every_format_round_trips_from_rgb() {
    let (w, h) = (160, 120);
    let p = pre(32, 32, Interpolation::Bilinear, ResizeMode::ShortestEdge);
    let reference = {
        let buf = synthetic_frame(PixelFormat::Rgb24, w, h, 11);
        let mut preparer = Preparer::new(&p, PixelFormat::Rgb24, w, h).expect("preparer");
        let mut out = vec![0f32; preparer.output_len()];
        preparer.prepare(buf.bytes(), &mut out).expect("prepare");
        out
    };
    // Tolerances in normalised units (2/255 per u8 level with mean = std = 0.5): mean abs error and max.
    let limits = [
        (PixelFormat::Bgr24, 1e-6, 1e-6),
        (PixelFormat::Yuyv, 0.03, 0.5),
        (PixelFormat::Nv12, 0.04, 0.6),
        (PixelFormat::Mjpeg, 0.04, 0.6),
    ];
    for (format, mean_limit, max_limit) in limits {
        let buf = synthetic_frame(format, w, h, 11);
        assert_eq!(buf.meta.format, format);
        let mut preparer = Preparer::new(&p, format, w, h).expect("preparer");
        let mut out = vec![0f32; preparer.output_len()];
        preparer.prepare(buf.bytes(), &mut out).expect("prepare");
        let mean = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / out.len() as f32;
        let max = max_abs_diff(&out, &reference);
        eprintln!("{format}: mean abs diff {mean:.4}, max {max:.4}");
        assert!(
            mean <= mean_limit && max <= max_limit,
            "{format}: mean {mean}, max {max}"
        );
    }
    // GREY: three equal planes, close to the BT.601 luma of the RGB result.
    let buf = synthetic_frame(PixelFormat::Grey, w, h, 11);
    let mut preparer = Preparer::new(&p, PixelFormat::Grey, w, h).expect("preparer");
    let mut out = vec![0f32; preparer.output_len()];
    preparer.prepare(buf.bytes(), &mut out).expect("prepare");
    let n = 32 * 32;
    assert_eq!(out[..n], out[n..2 * n]);
    assert_eq!(out[..n], out[2 * n..]);
    let luma: Vec<f32> = (0..n)
        .map(|i| 0.299 * reference[i] + 0.587 * reference[n + i] + 0.114 * reference[2 * n + i])
        .collect();
    let max = max_abs_diff(&out[..n], &luma);
    assert!(max <= 0.05, "grey vs luma of rgb: max {max}");
}

/// Deterministic noise (xorshift64*): every byte value, so YUV frames reach every corner of the conversion.
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

/// A frame's RGB8 pixels as the conversion `prepare` uses defines them: yuvutils-rs for YUYV and NV12 (BT.601
/// limited range) on the whole frame, zune-jpeg for MJPEG, GREY replicated, BGR24 swapped.
fn whole_frame_rgb(format: PixelFormat, frame: &[u8], w: u32, h: u32) -> Vec<u8> {
    use yuvutils_rs::{
        YuvBiPlanarImage, YuvConversionMode, YuvPackedImage, YuvRange, YuvStandardMatrix,
    };
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    match format {
        PixelFormat::Rgb24 => rgb.copy_from_slice(frame),
        PixelFormat::Bgr24 => {
            for (o, i) in rgb.chunks_exact_mut(3).zip(frame.chunks_exact(3)) {
                o.copy_from_slice(&[i[2], i[1], i[0]]);
            }
        }
        PixelFormat::Grey => {
            for (o, &v) in rgb.chunks_exact_mut(3).zip(frame) {
                o.fill(v);
            }
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
                &mut rgb,
                w * 3,
                YuvRange::Limited,
                YuvStandardMatrix::Bt601,
            )
            .expect("yuyv");
        }
        PixelFormat::Nv12 => {
            let (y, uv) = frame.split_at((w * h) as usize);
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
                &mut rgb,
                w * 3,
                YuvRange::Limited,
                YuvStandardMatrix::Bt601,
                YuvConversionMode::Balanced,
            )
            .expect("nv12");
        }
        PixelFormat::Mjpeg => {
            let options = zune_jpeg::zune_core::options::DecoderOptions::default()
                .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::RGB);
            let mut decoder = zune_jpeg::JpegDecoder::new_with_options(frame, options);
            rgb = decoder.decode().expect("jpeg");
        }
    }
    rgb
}

/// Every pixel format, prepared, equals the RGB24 preparation of that frame's RGB conversion, exactly: in
/// every resize mode (centre crop, squash, letterbox, identity), with both filters, at sizes whose crop and
/// filter support start on odd columns and rows. Preparation converts only the part of a frame the resize
/// reads; this is the check that the part equals the whole.
#[test]
fn every_format_equals_its_rgb_conversion() {
    let models = [
        (Interpolation::Bicubic, ResizeMode::ShortestEdge, 24, 40),
        (Interpolation::Bilinear, ResizeMode::ShortestEdge, 32, 32),
        (Interpolation::Bicubic, ResizeMode::ShortestEdge, 50, 17),
        (Interpolation::Bilinear, ResizeMode::Squash, 30, 50),
        (Interpolation::Bicubic, ResizeMode::Squash, 70, 33),
        (Interpolation::Bicubic, ResizeMode::Letterbox, 40, 40),
        (Interpolation::Bilinear, ResizeMode::Letterbox, 16, 64),
    ];
    let mut compared = 0;
    for (w, h) in [(160, 120), (98, 62), (62, 98), (34, 30), (2, 2)] {
        for format in PixelFormat::ALL {
            let frame = match format {
                PixelFormat::Mjpeg => synthetic_frame(format, w, h, 4).bytes().to_vec(),
                _ => noise(
                    format.frame_bytes(w, h).expect("raw size"),
                    u64::from(w * h),
                ),
            };
            let rgb = whole_frame_rgb(format, &frame, w, h);
            let mut cases: Vec<Preprocess> = models
                .iter()
                .map(|&(i, r, mh, mw)| Preprocess {
                    crop: if r == ResizeMode::ShortestEdge {
                        Crop::Center
                    } else {
                        Crop::None
                    },
                    ..pre(mh, mw, i, r)
                })
                .collect();
            cases.push(pre(
                h as usize,
                w as usize,
                Interpolation::Bicubic,
                ResizeMode::ShortestEdge,
            ));
            for p in cases {
                let what = format!(
                    "{format} {w}x{h} -> {}x{} {:?} {:?}",
                    p.width, p.height, p.resize, p.interpolation
                );
                let mut expected = vec![0f32; 3 * p.width * p.height];
                Preparer::new(&p, PixelFormat::Rgb24, w, h)
                    .expect("rgb preparer")
                    .prepare(&rgb, &mut expected)
                    .expect("rgb prepare");
                let mut preparer = Preparer::new(&p, format, w, h).expect(&what);
                let mut out = vec![0f32; preparer.output_len()];
                preparer.prepare(&frame, &mut out).expect(&what);
                let differ = out
                    .iter()
                    .zip(&expected)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "{what}: {differ} values differ from the whole frame's RGB prepared"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 5 * 6 * 8);
}

#[test]
fn bgr_channel_order_swaps_planes() {
    let (w, h) = (64, 48);
    let buf = synthetic_frame(PixelFormat::Rgb24, w, h, 5);
    let rgb_pre = pre(16, 16, Interpolation::Bicubic, ResizeMode::ShortestEdge);
    let bgr_pre = Preprocess {
        channel_order: ChannelOrder::Bgr,
        ..rgb_pre.clone()
    };
    let mut a = vec![0f32; 3 * 256];
    let mut b = vec![0f32; 3 * 256];
    Preparer::new(&rgb_pre, PixelFormat::Rgb24, w, h)
        .unwrap()
        .prepare(buf.bytes(), &mut a)
        .unwrap();
    Preparer::new(&bgr_pre, PixelFormat::Rgb24, w, h)
        .unwrap()
        .prepare(buf.bytes(), &mut b)
        .unwrap();
    assert_eq!(a[..256], b[512..]);
    assert_eq!(a[256..512], b[256..512]);
    assert_eq!(a[512..], b[..256]);
}

// ---- errors, never panics ----

#[test]
fn wrong_sizes_are_errors() {
    let p = pre(16, 16, Interpolation::Bilinear, ResizeMode::ShortestEdge);
    for format in [
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Grey,
        PixelFormat::Rgb24,
        PixelFormat::Bgr24,
    ] {
        let mut preparer = Preparer::new(&p, format, 64, 48).expect("preparer");
        let mut out = vec![0f32; preparer.output_len()];
        let good = format.frame_bytes(64, 48).unwrap();
        for len in [0, good - 1, good + 1] {
            let frame = vec![0u8; len];
            match preparer.prepare(&frame, &mut out) {
                Err(PrepareError::FrameSize { expected, got, .. }) => {
                    assert_eq!((expected, got), (good, len));
                }
                other => panic!("{format} with {len} bytes: {other:?}"),
            }
        }
        let frame = vec![0u8; good];
        let mut short = vec![0f32; 3 * 16 * 16 - 1];
        assert!(matches!(
            preparer.prepare(&frame, &mut short),
            Err(PrepareError::OutputSize { .. })
        ));
        preparer
            .prepare(&frame, &mut out)
            .expect("right size prepares");
    }
    assert!(matches!(
        Preparer::new(&p, PixelFormat::Yuyv, 63, 48),
        Err(PrepareError::Setup { .. })
    ));
    let bad = Preprocess {
        crop: Crop::None,
        ..p.clone()
    };
    assert!(matches!(
        Preparer::new(&bad, PixelFormat::Rgb24, 64, 48),
        Err(PrepareError::Setup { .. })
    ));
    let letterbox_cropped = Preprocess {
        resize: ResizeMode::Letterbox,
        ..p.clone()
    };
    assert!(matches!(
        Preparer::new(&letterbox_cropped, PixelFormat::Rgb24, 64, 48),
        Err(PrepareError::Setup { .. })
    ));
}

/// `scratch_bytes` (what the memory plan counts before a preparer exists) bounds what one holds, for every
/// format, resize mode and filter, down- and upscaling, thin slivers included.
#[test]
fn scratch_bytes_bounds_what_a_preparer_holds() {
    let mut checked = 0;
    for (w, h) in [
        (640, 480),
        (1280, 720),
        (98, 62),
        (2000, 2),
        (2, 1000),
        (4, 4),
    ] {
        for (mh, mw) in [(224, 224), (64, 64), (7, 300), (300, 7), (1, 1)] {
            for resize in [
                ResizeMode::ShortestEdge,
                ResizeMode::Squash,
                ResizeMode::Letterbox,
            ] {
                for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
                    for format in PixelFormat::ALL {
                        let p = Preprocess {
                            crop: if resize == ResizeMode::ShortestEdge {
                                Crop::Center
                            } else {
                                Crop::None
                            },
                            ..pre(mh, mw, interpolation, resize)
                        };
                        let Ok(preparer) = Preparer::new(&p, format, w, h) else {
                            assert!(format.check_size(w, h).is_err(), "{format} {w}x{h}");
                            continue;
                        };
                        let bound = Preparer::scratch_bytes(&p, format, w, h);
                        let held = preparer.held_bytes();
                        assert!(
                            held <= bound,
                            "{format} {w}x{h} -> {mw}x{mh} {resize:?} {interpolation:?}: holds {held}, bound {bound}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 800, "{checked}");
}

#[test]
fn corrupt_and_truncated_mjpeg_are_errors() {
    let (w, h) = (96, 64);
    let buf = synthetic_frame(PixelFormat::Mjpeg, w, h, 2);
    let jpeg = buf.bytes().to_vec();
    let p = pre(16, 16, Interpolation::Bilinear, ResizeMode::ShortestEdge);
    let mut preparer = Preparer::new(&p, PixelFormat::Mjpeg, w, h).expect("preparer");
    let mut out = vec![0f32; preparer.output_len()];
    preparer
        .prepare(&jpeg, &mut out)
        .expect("the intact frame decodes");

    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("not a jpeg".into(), vec![0x42; 500]),
        ("header only".into(), jpeg[..200.min(jpeg.len())].to_vec()),
    ];
    for cut in [jpeg.len() / 4, jpeg.len() / 2, jpeg.len() - 3] {
        cases.push((format!("truncated at {cut}"), jpeg[..cut].to_vec()));
    }
    let mut zeroed_sof = jpeg.clone();
    if let Some(i) = zeroed_sof.windows(2).position(|w| w == [0xFF, 0xC0]) {
        for b in &mut zeroed_sof[i + 2..i + 12] {
            *b = 0;
        }
    }
    cases.push(("zeroed frame header".into(), zeroed_sof));
    for (what, frame) in cases {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            preparer.prepare(&frame, &mut out)
        }));
        match r {
            Ok(Err(PrepareError::CorruptJpeg { .. } | PrepareError::JpegSize { .. })) => {}
            Ok(other) => panic!("{what}: expected a corrupt-frame error, got {other:?}"),
            Err(_) => panic!("{what}: prepare panicked"),
        }
    }
    // A JPEG of another size is refused, not stretched.
    let other = synthetic_frame(PixelFormat::Mjpeg, 64, 64, 2);
    assert!(matches!(
        preparer.prepare(other.bytes(), &mut out),
        Err(PrepareError::JpegSize { .. })
    ));
    preparer
        .prepare(&jpeg, &mut out)
        .expect("still decodes after errors");
}

// ---- the real-time contract ----

#[test]
fn prepare_never_allocates_for_raw_formats() {
    for (w, h) in [(640, 480), (160, 120)] {
        for format in [
            PixelFormat::Yuyv,
            PixelFormat::Nv12,
            PixelFormat::Grey,
            PixelFormat::Rgb24,
            PixelFormat::Bgr24,
        ] {
            for (side, interp, resize) in [
                (64, Interpolation::Bilinear, ResizeMode::ShortestEdge),
                (224, Interpolation::Bicubic, ResizeMode::ShortestEdge),
                (224, Interpolation::Bicubic, ResizeMode::Letterbox),
            ] {
                let buf = synthetic_frame(format, w, h, 9);
                let p = Preprocess {
                    crop: if resize == ResizeMode::Letterbox {
                        Crop::None
                    } else {
                        Crop::Center
                    },
                    ..pre(side, side, interp, resize)
                };
                let mut preparer = Preparer::new(&p, format, w, h).expect("preparer");
                let mut out = vec![0f32; preparer.output_len()];
                preparer.prepare(buf.bytes(), &mut out).expect("warm-up");
                let before = allocations();
                for _ in 0..5 {
                    preparer.prepare(buf.bytes(), &mut out).expect("prepare");
                }
                let made = allocations() - before;
                assert_eq!(
                    made, 0,
                    "{format} {w}x{h} -> {side}: {made} allocations in 5 frames"
                );
            }
        }
    }
}

/// MJPEG decoding allocates inside zune-jpeg; the count is bounded and the same every frame (no growth).
#[test]
fn mjpeg_allocations_are_bounded() {
    let (w, h) = (320, 240);
    let buf = synthetic_frame(PixelFormat::Mjpeg, w, h, 9);
    let p = pre(64, 64, Interpolation::Bilinear, ResizeMode::ShortestEdge);
    let mut preparer = Preparer::new(&p, PixelFormat::Mjpeg, w, h).expect("preparer");
    let mut out = vec![0f32; preparer.output_len()];
    preparer.prepare(buf.bytes(), &mut out).expect("warm-up");
    let mut counts = Vec::new();
    for _ in 0..4 {
        let before = allocations();
        preparer.prepare(buf.bytes(), &mut out).expect("prepare");
        counts.push(allocations() - before);
    }
    eprintln!("mjpeg allocations per frame: {counts:?}");
    assert!(counts.windows(2).all(|c| c[0] == c[1]), "{counts:?}");
    assert!(counts[0] < 100, "{counts:?}");
}
