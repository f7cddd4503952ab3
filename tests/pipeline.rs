//! The pipeline with the real demo model and scripted sources: corrupt frames, failing and blocked cameras,
//! deadlines, latest-wins drops, and what a sink receives.
//!
//! Every test that waits on threads does so under a watchdog that fails it instead of hanging.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ocellus::clock::monotonic_ns;
use ocellus::config::Config;
use ocellus::frame::{FrameBuf, PixelFormat};
use ocellus::infer::{InferenceEngine, RunVariant, TractEngine};
use ocellus::manifest::{Manifest, Variant};
use ocellus::pipeline::{CameraSpec, Deadlines, Pipeline, PipelineSettings};
use ocellus::prompts::{PromptSet, TextEncoder};
use ocellus::scene::{render_into, Rng, SceneParams, PROMPTS};
use ocellus::sink::{FrameResult, FLAG_CAMERA_RESTARTED};
use ocellus::sink::{Sink, SinkError};
use ocellus::source::{FrameSource, SourceError};
use ocellus::stats::{Stage, Stats};

const WATCHDOG: Duration = Duration::from_secs(300);
const SIZE: u32 = 64;

fn demo() -> (Manifest, Box<dyn InferenceEngine>, Arc<ArcSwap<PromptSet>>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/manifest.toml");
    let manifest = Manifest::load(&path).expect("demo manifest (build models/demo first)");
    let engine: Box<dyn InferenceEngine> =
        Box::new(TractEngine::load(&manifest, RunVariant::Fp32, 1).expect("load demo engine"));
    let labels: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let set = TextEncoder::load(&manifest, Variant::Fp32)
        .and_then(|mut t| t.embed(&labels))
        .expect("embed demo prompts");
    (manifest, engine, Arc::new(ArcSwap::from_pointee(set)))
}

/// What a sink saw of one result (copied: results borrow the pipeline's buffers).
#[derive(Debug, Clone)]
struct Seen {
    camera: usize,
    sequence: u64,
    flags: u32,
    top: Option<String>,
    truth: Option<&'static str>,
    scores_sum: f32,
    embeds: usize,
    latents: usize,
    latents_shape: (usize, usize),
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Seen>>>);

impl Collect {
    fn seen(&self) -> Vec<Seen> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Sink for Collect {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        let seen = Seen {
            camera: r.camera,
            sequence: r.sequence,
            flags: r.flags,
            top: r.top().map(|(i, _)| r.labels[i].clone()),
            truth: r.ground_truth_label,
            scores_sum: r.scores.iter().sum(),
            embeds: r.image_embeds.len(),
            latents: r.latents.len(),
            latents_shape: r.latents_shape,
        };
        self.0
            .lock()
            .map_err(|_| SinkError::Closed { sink: "collect" })?
            .push(seen);
        Ok(())
    }
}

/// A sink that takes its time.
struct Slow(Duration);

impl Sink for Slow {
    fn publish(&mut self, _: &FrameResult<'_>) -> Result<(), SinkError> {
        std::thread::sleep(self.0);
        Ok(())
    }
}

/// Lets a scripted source wait until the pipeline has dealt with its previous frame, so tests are exact.
#[derive(Clone, Default)]
struct Gate(Arc<OnceLock<Arc<Stats>>>);

impl Gate {
    /// True once every frame up to `delivered` was published, skipped or dropped (false after 100 ms).
    fn wait_consumed(&self, camera: usize, delivered: u64) -> bool {
        let until = Instant::now() + Duration::from_millis(100);
        loop {
            if let Some(stats) = self.0.get() {
                let c = &stats.camera(camera).counters;
                let done = c.processed.load(Relaxed)
                    + c.corrupt.load(Relaxed)
                    + c.dropped.load(Relaxed)
                    + c.infer_errors.load(Relaxed);
                if done >= delivered {
                    return true;
                }
            }
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// RGB24 scenes; every `corrupt_every`-th frame claims a wrong byte count; then end of stream.
struct Scripted {
    camera: usize,
    frames: u64,
    corrupt_every: u64,
    delivered: u64,
    gate: Gate,
    scenes: Vec<(Vec<u8>, u16)>,
}

impl Scripted {
    fn new(camera: usize, frames: u64, corrupt_every: u64, gate: Gate) -> Self {
        let mut rng = Rng::new(99);
        let scenes = (0..4)
            .map(|_| {
                let scene = SceneParams::sample(&mut rng);
                let mut rgb = vec![0; (SIZE * SIZE * 3) as usize];
                render_into(&scene, SIZE, SIZE, &mut rgb).expect("render");
                (rgb, scene.label())
            })
            .collect();
        Scripted {
            camera,
            frames,
            corrupt_every,
            delivered: 0,
            gate,
            scenes,
        }
    }
}

impl FrameSource for Scripted {
    fn describe(&self) -> String {
        "scripted".into()
    }
    fn start(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
    fn next_frame(&mut self, buf: &mut FrameBuf) -> Result<(), SourceError> {
        if self.delivered >= self.frames {
            if !self.gate.wait_consumed(self.camera, self.delivered) {
                return Err(SourceError::Timeout {
                    camera: "scripted".into(),
                    timeout_ms: 100,
                });
            }
            return Err(SourceError::EndOfStream {
                camera: "scripted".into(),
            });
        }
        if !self.gate.wait_consumed(self.camera, self.delivered) {
            return Err(SourceError::Timeout {
                camera: "scripted".into(),
                timeout_ms: 100,
            });
        }
        let (rgb, label) = &self.scenes[(self.delivered / 3) as usize % self.scenes.len()];
        buf.data[..rgb.len()].copy_from_slice(rgb);
        self.delivered += 1;
        let corrupt = self.corrupt_every > 0 && self.delivered % self.corrupt_every == 0;
        buf.meta.sequence = self.delivered;
        buf.meta.capture_ns = monotonic_ns();
        buf.meta.width = SIZE;
        buf.meta.height = SIZE;
        buf.meta.format = PixelFormat::Rgb24;
        buf.meta.bytes = if corrupt { rgb.len() - 7 } else { rgb.len() };
        buf.meta.label = Some(*label);
        Ok(())
    }
    fn stop(&mut self) {}
    fn max_frame_bytes(&self) -> usize {
        (SIZE * SIZE * 3) as usize
    }
}

/// Fails `start` every other time and `next_frame` after every two frames.
struct Flaky {
    inner: Scripted,
    starts: u64,
    since_start: u64,
}

impl FrameSource for Flaky {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn start(&mut self) -> Result<(), SourceError> {
        self.starts += 1;
        self.since_start = 0;
        if self.starts % 2 == 0 {
            return Err(SourceError::Open {
                path: "/dev/flaky".into(),
                source: std::io::Error::other("device went away"),
            });
        }
        Ok(())
    }
    fn next_frame(&mut self, buf: &mut FrameBuf) -> Result<(), SourceError> {
        self.since_start += 1;
        if self.since_start > 2 {
            return Err(SourceError::Open {
                path: "/dev/flaky".into(),
                source: std::io::Error::other("read failed"),
            });
        }
        self.inner.next_frame(buf)
    }
    fn stop(&mut self) {}
    fn max_frame_bytes(&self) -> usize {
        self.inner.max_frame_bytes()
    }
}

/// Never returns from `next_frame` (a driver stuck in the kernel).
struct Stuck;

impl FrameSource for Stuck {
    fn describe(&self) -> String {
        "stuck".into()
    }
    fn start(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
    fn next_frame(&mut self, _: &mut FrameBuf) -> Result<(), SourceError> {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    fn stop(&mut self) {}
    fn max_frame_bytes(&self) -> usize {
        (SIZE * SIZE * 3) as usize
    }
}

fn camera(name: &str, source: Box<dyn FrameSource>) -> CameraSpec {
    CameraSpec {
        name: name.into(),
        source,
        format: PixelFormat::Rgb24,
        width: SIZE,
        height: SIZE,
        pool_size: 4,
    }
}

fn synthetic(index: usize, fps: u32) -> CameraSpec {
    let toml = format!(
        "[[camera]]\nname = \"syn\"\nsource = \"synthetic\"\npixel-format = \"yuyv\"\nwidth = 128\nheight = 96\nfps = {fps}\nseed = 5\n"
    );
    let config = Config::parse(&toml, ocellus::config::Origin::Embedded).expect("config");
    let cam = &config.cameras[0];
    CameraSpec {
        name: cam.name.clone(),
        source: ocellus::source::open(index, cam).expect("synthetic source"),
        format: cam.format,
        width: cam.width,
        height: cam.height,
        pool_size: cam.pool_size,
    }
}

/// Polls `done` until it holds; fails the test after `WATCHDOG`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + WATCHDOG;
    while !done() {
        assert!(Instant::now() < until, "watchdog: {what} did not happen");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn corrupt_frames_are_counted_and_skipped() {
    let (manifest, engine, prompts) = demo();
    let gate = Gate::default();
    let sink = Collect::default();
    let mut p = Pipeline::new(
        PipelineSettings::default(),
        vec![camera(
            "scripted",
            Box::new(Scripted::new(0, 20, 4, gate.clone())),
        )],
        engine,
        &manifest.preprocess,
        prompts,
        vec![Box::new(sink.clone())],
    )
    .expect("pipeline");
    let _ = gate.0.set(p.stats().clone());
    p.start().expect("start");
    wait_for("end of the scripted stream", || !p.is_running());
    p.stop();
    let c = &p.stats().camera(0).counters;
    assert_eq!(c.captured.load(Relaxed), 20);
    assert_eq!(c.corrupt.load(Relaxed), 5);
    assert_eq!(c.processed.load(Relaxed), 15);
    assert_eq!(c.dropped.load(Relaxed), 0);
    let seen = sink.seen();
    assert_eq!(seen.len(), 15);
    assert!(
        seen.iter().all(|s| s.sequence % 4 != 0),
        "a corrupt frame was published"
    );
}

#[test]
fn results_carry_embeddings_scores_and_ground_truth() {
    let (manifest, engine, prompts) = demo();
    let gate = Gate::default();
    let sink = Collect::default();
    let mut p = Pipeline::new(
        PipelineSettings {
            // The demo scenes' labels, named the way the runtime names them.
            ground_truth: Some(ocellus::scene::class_prompt),
            ..PipelineSettings::default()
        },
        vec![camera(
            "scripted",
            Box::new(Scripted::new(0, 12, 0, gate.clone())),
        )],
        engine,
        &manifest.preprocess,
        prompts,
        vec![Box::new(sink.clone())],
    )
    .expect("pipeline");
    let _ = gate.0.set(p.stats().clone());
    p.start().expect("start");
    wait_for("end of the scripted stream", || !p.is_running());
    p.stop();
    let seen = sink.seen();
    assert_eq!(seen.len(), 12);
    let r = &manifest.resampler;
    for s in &seen {
        assert_eq!(s.embeds, manifest.embed_dim);
        assert_eq!(s.latents_shape, (r.num_latents, r.latent_dim));
        assert_eq!(s.latents, r.num_latents * r.latent_dim);
        assert!(
            (s.scores_sum - 1.0).abs() < 1e-3,
            "scores sum to {}",
            s.scores_sum
        );
        assert!(s.truth.is_some());
    }
    let correct = seen.iter().filter(|s| s.top.as_deref() == s.truth).count();
    let c = &p.stats().camera(0).counters;
    assert_eq!(c.labelled.load(Relaxed), 12);
    assert_eq!(c.correct.load(Relaxed), correct as u64);
    assert!(correct >= 9, "only {correct}/12 scenes recognised");
}

#[test]
fn a_failing_camera_is_restarted_while_the_other_keeps_running() {
    let (manifest, engine, prompts) = demo();
    let gate = Gate::default();
    let sink = Collect::default();
    let settings = PipelineSettings {
        restart_backoff_min: Duration::from_millis(5),
        restart_backoff_max: Duration::from_millis(20),
        ..PipelineSettings::default()
    };
    let flaky = Flaky {
        inner: Scripted::new(1, u64::MAX, 0, gate.clone()),
        starts: 0,
        since_start: 0,
    };
    let mut p = Pipeline::new(
        settings,
        vec![synthetic(0, 200), camera("flaky", Box::new(flaky))],
        engine,
        &manifest.preprocess,
        prompts,
        vec![Box::new(sink.clone())],
    )
    .expect("pipeline");
    let _ = gate.0.set(p.stats().clone());
    p.start().expect("start");
    let stats = p.stats().clone();
    wait_for("frames from both cameras and restarts", || {
        let (a, b) = (&stats.camera(0).counters, &stats.camera(1).counters);
        a.processed.load(Relaxed) >= 20
            && b.processed.load(Relaxed) >= 4
            && b.restarts.load(Relaxed) >= 3
    });
    p.stop();
    let b = &stats.camera(1).counters;
    assert!(b.source_errors.load(Relaxed) >= 3);
    assert_eq!(stats.camera(0).counters.source_errors.load(Relaxed), 0);
    let seen = sink.seen();
    assert!(
        seen.iter()
            .any(|s| s.camera == 1 && s.flags & FLAG_CAMERA_RESTARTED != 0),
        "no result flagged as after a restart"
    );
}

#[test]
fn stop_returns_although_a_source_never_does() {
    let (manifest, engine, prompts) = demo();
    let settings = PipelineSettings {
        join_timeout: Duration::from_millis(200),
        ..PipelineSettings::default()
    };
    let stuck = camera("stuck", Box::new(Stuck));
    let mut p = Pipeline::new(
        settings,
        vec![synthetic(0, 100), stuck],
        engine,
        &manifest.preprocess,
        prompts,
        vec![],
    )
    .expect("pipeline");
    p.start().expect("start");
    let stats = p.stats().clone();
    wait_for("frames from the working camera", || {
        stats.camera(0).counters.processed.load(Relaxed) >= 3
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        p.stop();
        let _ = tx.send(());
    });
    rx.recv_timeout(WATCHDOG)
        .expect("watchdog: stop() did not return with a stuck source");
}

#[test]
fn late_frames_are_flagged_and_counted() {
    let (manifest, engine, prompts) = demo();
    let gate = Gate::default();
    let sink = Collect::default();
    let settings = PipelineSettings {
        deadlines: Deadlines::default()
            .with(Stage::Encoder, Some(Duration::from_nanos(1)))
            .with(Stage::EndToEnd, Some(Duration::from_secs(3600))),
        ..PipelineSettings::default()
    };
    let mut p = Pipeline::new(
        settings,
        vec![camera(
            "scripted",
            Box::new(Scripted::new(0, 8, 0, gate.clone())),
        )],
        engine,
        &manifest.preprocess,
        prompts,
        vec![Box::new(sink.clone())],
    )
    .expect("pipeline");
    let _ = gate.0.set(p.stats().clone());
    p.start().expect("start");
    wait_for("end of the scripted stream", || !p.is_running());
    p.stop();
    let seen = sink.seen();
    assert_eq!(seen.len(), 8);
    for s in &seen {
        assert_ne!(s.flags & Stage::Encoder.late_bit(), 0);
        assert_eq!(s.flags & Stage::EndToEnd.late_bit(), 0);
    }
    let summary = p.stats().summary();
    assert_eq!(summary.late_frames, 8);
    assert_eq!(summary.stages[Stage::Encoder.index()].late, 8);
    assert_eq!(summary.stages[Stage::EndToEnd.index()].late, 0);
    assert_eq!(summary.stages[Stage::Encoder.index()].count, 8);
    assert!(p.stats().camera(0).counters.last_overrun_ns[Stage::Encoder.index()].load(Relaxed) > 0);
}

#[test]
fn a_slow_consumer_drops_frames_instead_of_queueing_them() {
    let (manifest, engine, prompts) = demo();
    let sink = Collect::default();
    let settings = PipelineSettings {
        max_frames: Some(6),
        ..PipelineSettings::default()
    };
    let mut p = Pipeline::new(
        settings,
        vec![synthetic(0, 0)],
        engine,
        &manifest.preprocess,
        prompts,
        vec![
            Box::new(Slow(Duration::from_millis(30))),
            Box::new(sink.clone()),
        ],
    )
    .expect("pipeline");
    p.start().expect("start");
    wait_for("six published frames", || !p.is_running());
    p.stop();
    let c = &p.stats().camera(0).counters;
    let (captured, processed, dropped) = (
        c.captured.load(Relaxed),
        c.processed.load(Relaxed),
        c.dropped.load(Relaxed),
    );
    assert_eq!(processed, 6);
    assert!(
        dropped > 0,
        "a 30 ms sink behind an unpaced source dropped nothing"
    );
    // Nothing queues: at most the slot and the pool hold frames that were neither published nor dropped.
    assert!(
        captured <= processed + dropped + 4,
        "{captured} {processed} {dropped}"
    );
    let seqs: Vec<u64> = sink.seen().iter().map(|s| s.sequence).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0] + 1),
        "newest frame wins: {seqs:?}"
    );
}
