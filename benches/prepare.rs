//! Preparation per pixel format: 640x480 and 1280x720 frames, shortest edge + centre crop, to the demo's 64x64
//! (bilinear), to 224x224 bilinear and to 224x224 bicubic (CLIP's preprocessing; issue 13's case is
//! `prepare/yuyv/640x480/224x224-bicubic`). Frames are the synthetic camera's (a demo scene in each format).
//!
//! `prepare_letterbox`: YUYV frames letterboxed (the whole frame resampled, pad around).
//!
//! Also `resize_only`: the Pillow-exact resize of `prepare` against fast_image_resize on the same RGB frame
//! and box, for the record (fast_image_resize recomputes its coefficients, allocating, on every call).
//!
//! `cargo bench --bench prepare` (criterion; short measurement windows to suit a 2-core machine).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fast_image_resize as fr;
use ocellus::frame::{FrameBuf, PixelFormat};
use ocellus::manifest::{ChannelOrder, Crop, Interpolation, Preprocess, ResizeMode};
use ocellus::prepare::{crop_box, Preparer};
use ocellus::source::{CameraSettings, SourceSettings};
use ocellus::source::{FrameSource, SyntheticSource};

const SIZES: [(u32, u32); 2] = [(640, 480), (1280, 720)];
const MODEL_SIDES: [usize; 2] = [64, 224];
/// The model inputs `prepare` is measured into: side and filter.
const TARGETS: [(usize, Interpolation); 3] = [
    (64, Interpolation::Bilinear),
    (224, Interpolation::Bilinear),
    (224, Interpolation::Bicubic),
];

fn preprocess(side: usize, interpolation: Interpolation) -> Preprocess {
    Preprocess {
        height: side,
        width: side,
        resize: ResizeMode::ShortestEdge,
        interpolation,
        crop: Crop::Center,
        channel_order: ChannelOrder::Rgb,
        rescale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
        pad: [0; 3],
    }
}

fn frame(format: PixelFormat, width: u32, height: u32) -> FrameBuf {
    let camera = CameraSettings {
        name: "bench".into(),
        source: SourceSettings::Synthetic {
            seed: 3,
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

fn prepare(c: &mut Criterion) {
    let mut group = c.benchmark_group("prepare");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    for (w, h) in SIZES {
        for format in PixelFormat::ALL {
            let buf = frame(format, w, h);
            for (side, interpolation) in TARGETS {
                let pre = preprocess(side, interpolation);
                let mut preparer = Preparer::new(&pre, format, w, h).expect("preparer");
                let mut out = vec![0f32; preparer.output_len()];
                let filter = match interpolation {
                    Interpolation::Bilinear => "bilinear",
                    Interpolation::Bicubic => "bicubic",
                };
                group.throughput(Throughput::Elements(w as u64 * h as u64));
                group.bench_function(
                    BenchmarkId::new(
                        format!("{format}/{w}x{h}"),
                        format!("{side}x{side}-{filter}"),
                    ),
                    |b| b.iter(|| preparer.prepare(buf.bytes(), &mut out).expect("prepare")),
                );
            }
        }
    }
    group.finish();
}

/// Letterbox (models/vit-import's 64x64 bilinear, pad 114; and 224x224 bicubic) from YUYV frames: the whole
/// frame is resampled, so this is the most a frame of that size costs.
fn letterbox(c: &mut Criterion) {
    let mut group = c.benchmark_group("prepare_letterbox");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    for (w, h) in SIZES {
        let buf = frame(PixelFormat::Yuyv, w, h);
        for (side, interpolation) in [(64, Interpolation::Bilinear), (224, Interpolation::Bicubic)]
        {
            let pre = Preprocess {
                resize: ResizeMode::Letterbox,
                crop: Crop::None,
                pad: [114; 3],
                ..preprocess(side, interpolation)
            };
            let mut preparer = Preparer::new(&pre, PixelFormat::Yuyv, w, h).expect("preparer");
            let mut out = vec![0f32; preparer.output_len()];
            group.bench_function(
                BenchmarkId::new(format!("yuyv/{w}x{h}"), format!("{side}x{side}")),
                |b| b.iter(|| preparer.prepare(buf.bytes(), &mut out).expect("prepare")),
            );
        }
    }
    group.finish();
}

fn resize_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("resize_only");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    for (w, h) in SIZES {
        let buf = frame(PixelFormat::Rgb24, w, h);
        for side in MODEL_SIDES {
            let pre = preprocess(side, Interpolation::Bilinear);
            let mut preparer = Preparer::new(&pre, PixelFormat::Rgb24, w, h).expect("preparer");
            let mut out = vec![0f32; preparer.output_len()];
            group.bench_function(
                BenchmarkId::new(format!("ocellus/{w}x{h}"), format!("{side}x{side}")),
                |b| b.iter(|| preparer.prepare(buf.bytes(), &mut out).expect("prepare")),
            );
            let src = fr::images::ImageRef::new(w, h, buf.bytes(), fr::PixelType::U8x3)
                .expect("source image");
            let mut dst = fr::images::Image::new(side as u32, side as u32, fr::PixelType::U8x3);
            let [x0, y0, x1, y1] = crop_box(&pre, w, h);
            let options = fr::ResizeOptions::new()
                .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
                .crop(x0, y0, x1 - x0, y1 - y0);
            let mut resizer = fr::Resizer::new();
            group.bench_function(
                BenchmarkId::new(
                    format!("fast_image_resize/{w}x{h}"),
                    format!("{side}x{side}"),
                ),
                |b| b.iter(|| resizer.resize(&src, &mut dst, &options).expect("resize")),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, prepare, letterbox, resize_only);
criterion_main!(benches);
