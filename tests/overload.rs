//! Overload and fairness: four cameras whose combined rate exceeds what the one inference thread can serve.
//! The policy (docs/service.md, Overload): the inference thread takes the newest frame of each camera in
//! turn (round robin), so every camera keeps being served, each camera's result age stays bounded by its
//! frame period plus one inference per camera, the frames it cannot take are dropped and counted per camera,
//! never queued, and memory stays flat.
//!
//! The inference is slowed on purpose (`[testing]`, 12 ms in the encoder) so the overload does not depend
//! on this machine's speed: 4 cameras x 50 fps = 200 frames a second against at most ~80.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ocellus::config::{Config, Origin};
use ocellus::runtime::{Runtime, RuntimeOptions, ShmTarget};
use ocellus::stats::{HistogramSnapshot, Stage};

const CAMERAS: usize = 4;
const FRAMES: u64 = 600;

#[test]
fn four_overloading_cameras_are_all_served_with_bounded_age_and_counted_drops() {
    let mut text = String::new();
    for i in 0..CAMERAS {
        text += &format!(
            "[[camera]]\nname = \"cam{i}\"\nsource = \"synthetic\"\nwidth = 320\nheight = 240\nfps = 50\nseed = {}\n\n",
            i + 1
        );
    }
    text += &format!(
        "[model]\nmanifest = \"{}\"\nvariant = \"fp32\"\n\n[memory]\nlock = false\n\n\
         [testing]\ndelay-stage = \"encoder\"\ndelay-ms = 12\n",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/demo/manifest.toml")
            .display()
    );
    let config = Config::parse(&text, Origin::Embedded).unwrap_or_else(|e| panic!("{e}"));
    let mut runtime = Runtime::build(
        &config,
        RuntimeOptions {
            shm: ShmTarget::Off,
            take_memory: false,
            ..RuntimeOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    runtime.start().unwrap_or_else(|e| panic!("{e}"));
    let stats = std::sync::Arc::clone(runtime.stats());
    let rss = || ocellus::alloc::process_memory().map_or(0, |m| m.rss);
    let mut early = 0u64;
    let watchdog = Instant::now() + Duration::from_secs(600);
    let late = loop {
        let n = stats.total(|c| &c.processed);
        if n >= FRAMES / 4 && early == 0 {
            early = rss();
        }
        if n >= FRAMES {
            break rss();
        }
        assert!(
            Instant::now() < watchdog,
            "watchdog: {n} of {FRAMES} frames"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    runtime.stop();

    let summary = stats.summary();
    let total = summary.frames;
    let (mut h, mut scratch) = (HistogramSnapshot::default(), HistogramSnapshot::default());
    let inference_ms = {
        // The slowest inference (prepare + encoder + resampler + score) over the run.
        let mut worst = 0.0f64;
        for stage in [
            Stage::Prepare,
            Stage::Encoder,
            Stage::Resampler,
            Stage::Score,
        ] {
            stats.stage_snapshot(stage, &mut h, &mut scratch);
            worst += h.max_ns as f64 / 1e6;
        }
        worst
    };
    let period_ms = 1000.0 / 50.0;
    let mut report = Vec::new();
    for (i, cam) in summary.cameras.iter().enumerate() {
        let c = &stats.camera(i).counters;
        stats.camera(i).stages[Stage::Dequeue.index()].snapshot_into(&mut h);
        let worst_age_ms = h.max_ns as f64 / 1e6;
        report.push(format!(
            "cam{i}: processed {} ({:.1} %), captured {}, dropped {}, worst age at dequeue {worst_age_ms:.1} ms",
            cam.processed,
            100.0 * cam.processed as f64 / total as f64,
            cam.captured,
            cam.dropped
        ));
        // Served: a fair share, within wide margins (round robin gives exactly a quarter when all cameras
        // always have a frame waiting).
        assert!(
            cam.processed * 10 >= total * 2 && cam.processed * 10 <= total * 3,
            "camera {i} got {} of {total} frames",
            cam.processed
        );
        // Dropped, never queued: most captured frames were displaced, each counted.
        assert!(cam.dropped > 0, "camera {i} dropped nothing");
        assert_eq!(
            cam.captured,
            cam.processed + cam.dropped + c.corrupt.load(Relaxed) + in_flight(c),
            "camera {i}: every captured frame is processed, dropped or in flight"
        );
        // Bounded age: a frame waits at most for the frame in flight of every camera, plus its period
        // (four cameras' inference and a frame period, with a wide margin of 2x).
        assert!(
            worst_age_ms <= 2.0 * (CAMERAS as f64 * inference_ms + period_ms),
            "camera {i}: a frame waited {worst_age_ms:.1} ms (inference {inference_ms:.1} ms)"
        );
    }
    println!(
        "{total} frames; inference up to {inference_ms:.1} ms; {}",
        report.join("; ")
    );
    assert!(
        late <= early + (2 << 20),
        "RSS grew from {early} to {late} bytes under overload"
    );
}

/// Frames a camera captured that are neither processed nor dropped yet: at most one in the handoff slot and
/// one in the inference thread's hands when the run stopped.
fn in_flight(c: &ocellus::stats::CameraCounters) -> u64 {
    let captured = c.captured.load(Relaxed);
    let accounted = c.processed.load(Relaxed) + c.dropped.load(Relaxed) + c.corrupt.load(Relaxed);
    let pending = captured.saturating_sub(accounted);
    assert!(pending <= 2, "{pending} frames unaccounted");
    pending
}
