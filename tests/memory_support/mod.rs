//! What tests/alloc_zero.rs and tests/budget.rs share: the demo pipeline as `ocellus run` builds it
//! (synthetic camera, demo model, shared-memory sink), from a TOML configuration, with its memory plan.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ocellus::budget::MemoryPlan;
use ocellus::config::{Config, Origin};
use ocellus::infer::Engine;
use ocellus::manifest::Manifest;
use ocellus::pipeline::{CameraSpec, Pipeline, PipelineSettings};
use ocellus::prompts::TextEncoder;
use ocellus::shm::{Dims, ShmSink, ShmSinkConfig, WriterConfig};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A configuration: `cameras` synthetic cameras of `format` at `width` x `height`, unpaced (fps = 0), the
/// demo model (fp32, one thread), and `extra` TOML appended (e.g. a `[budgets]` table).
pub fn config(cameras: usize, format: &str, width: u32, height: u32, extra: &str) -> Config {
    config_with_threads(cameras, format, width, height, 1, extra)
}

/// [`config`] with `model.threads = threads`.
pub fn config_with_threads(
    cameras: usize,
    format: &str,
    width: u32,
    height: u32,
    threads: usize,
    extra: &str,
) -> Config {
    let mut text = String::new();
    for i in 0..cameras {
        text += &format!(
            "[[camera]]\nname = \"cam{i}\"\nsource = \"synthetic\"\npixel-format = \"{format}\"\nwidth = {width}\nheight = {height}\nfps = 0\nseed = {}\n\n",
            i + 1
        );
    }
    text += &format!(
        "[model]\nmanifest = \"{}\"\nvariant = \"fp32\"\nthreads = {threads}\n\n{extra}\n",
        root().join("models/demo/manifest.toml").display()
    );
    Config::parse(&text, Origin::File(root().join("test.toml")))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The pipeline of `config` with the shared-memory sink publishing into `/<shm>`, and its planned memory
/// (checked against the budget). Nothing runs yet.
pub fn build(config: &Config, shm: &str) -> (Pipeline, MemoryPlan) {
    let manifest = Manifest::load(&config.model.manifest).unwrap_or_else(|e| panic!("{e}"));
    let engine = Engine::load(&manifest, config.model.variant, config.model.threads)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut text =
        TextEncoder::load(&manifest, config.model.variant).unwrap_or_else(|e| panic!("{e}"));
    let plan = MemoryPlan::with_engine(
        config,
        &manifest,
        true,
        engine.memory(),
        Some((text.files(), text.memory())),
    );
    plan.check().unwrap_or_else(|e| panic!("{e}"));
    let labels = config
        .prompts
        .load(&config.origin)
        .unwrap_or_else(|e| panic!("{e}"));
    let prompts = Arc::new(ArcSwap::from_pointee(
        text.embed(&labels).unwrap_or_else(|e| panic!("{e}")),
    ));
    drop(text);
    let cameras = config
        .cameras
        .iter()
        .enumerate()
        .map(|(i, cam)| CameraSpec {
            name: cam.name.clone(),
            source: ocellus::source::open(i, cam).unwrap_or_else(|e| panic!("{e}")),
            format: cam.format,
            width: cam.width,
            height: cam.height,
            pool_size: cam.pool_size,
        })
        .collect();
    let dims = Dims {
        cameras: config.cameras.len(),
        embed_dim: engine.embed_dim(),
        num_latents: manifest.resampler.num_latents,
        latent_dim: manifest.resampler.latent_dim,
        max_prompts: config.prompts.max,
        latents_dtype: config.shm.latents,
    };
    let mut pipeline = Pipeline::new(
        PipelineSettings {
            max_prompts: config.prompts.max,
            ..PipelineSettings::default()
        },
        cameras,
        engine,
        &manifest.preprocess,
        prompts,
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sink = ShmSink::create(
        &ShmSinkConfig::new(WriterConfig::new(format!("/{shm}"), dims)),
        Some(Arc::clone(pipeline.stats())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    pipeline
        .add_sink(Box::new(sink))
        .unwrap_or_else(|e| panic!("{e}"));
    (pipeline, plan)
}

/// Frames published so far, all cameras.
pub fn processed(pipeline: &Pipeline) -> u64 {
    let stats = pipeline.stats();
    (0..stats.cameras())
        .map(|c| stats.camera(c).counters.processed.load(Relaxed))
        .sum()
}

/// Waits until `frames` frames were published, calling `tick` every ~`every`; fails the test after
/// `watchdog` (a stuck pipeline) or if the pipeline stopped.
pub fn run_until(
    pipeline: &Pipeline,
    frames: u64,
    watchdog: Duration,
    every: Duration,
    mut tick: impl FnMut(u64),
) {
    let until = Instant::now() + watchdog;
    loop {
        let n = processed(pipeline);
        tick(n);
        if n >= frames {
            return;
        }
        assert!(
            pipeline.is_running(),
            "the pipeline stopped after {n} of {frames} frames"
        );
        assert!(
            Instant::now() < until,
            "watchdog: only {n} of {frames} frames after {watchdog:?}"
        );
        std::thread::sleep(every);
    }
}

/// A shared-memory name for this process and `what`.
pub fn shm_name(what: &str) -> String {
    format!("ocellus-test-{what}-{}", std::process::id())
}
