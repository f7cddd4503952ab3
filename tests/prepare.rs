//! Preparation: Pillow parity (fixtures made by tests/fixtures/prepare/make.py), every pixel format round trip
//! from a known RGB frame, corrupt and wrong-sized frames rejected, and zero allocations per frame.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayD};
use ndarray_npy::ReadNpyExt;
use ocellus::frame::{FrameBuf, PixelFormat};
use ocellus::manifest::{ChannelOrder, Crop, Interpolation, Preprocess, ResizeMode};
use ocellus::prepare::{PrepareError, Preparer};
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
        // One u8 level is 1/255/std ~ 0.015; anything above float rounding means a different resize.
        assert!(diff <= 1e-5, "{name}: max abs diff {diff} against Pillow");
    }
}

/// When models/demo/reference/ exists (written by `ocellus-tools validate`), our preparation of each reference
/// PNG must match its pixel_values.npy.
#[test]
fn matches_demo_reference_pixel_values() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
    let index_path = root.join("reference/index.toml");
    let Ok(index) = std::fs::read_to_string(&index_path) else {
        eprintln!(
            "skipped: {} not found (the demo bundle is not built)",
            index_path.display()
        );
        return;
    };
    let manifest =
        ocellus::manifest::Manifest::load(&root.join("manifest.toml")).expect("demo manifest");
    let index: toml::Table = toml::from_str(&index).expect("reference index");
    let images = index
        .get("images")
        .and_then(|v| v.as_array())
        .expect("reference index lists images");
    assert!(!images.is_empty());
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
        let off: Vec<usize> = (0..out.len())
            .filter(|&i| (out[i] - expected[i]).abs() > 1e-5)
            .collect();
        eprintln!(
            "{file} ({w}x{h}): max abs diff {diff:e}, {} values differ, first {:?}",
            off.len(),
            &off[..off.len().min(8)]
        );
        assert!(
            diff <= 1e-5,
            "{file} ({w}x{h}): max abs diff {diff} against the tools' pixel_values"
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
            for (side, interp) in [(64, Interpolation::Bilinear), (224, Interpolation::Bicubic)] {
                let buf = synthetic_frame(format, w, h, 9);
                let p = pre(side, side, interp, ResizeMode::ShortestEdge);
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
