//! What tests/alloc_zero.rs and tests/budget.rs share: the demo runtime as `ocellus run` builds it
//! (`Runtime::build`: synthetic camera, demo model, shared-memory sink, deadlines, real-time settings, the
//! memory taken), from a TOML configuration.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ocellus::config::{Config, Origin};
use ocellus::runtime::{Runtime, RuntimeOptions, ShmTarget};

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

/// The runtime of `config` as `ocellus run` builds it, publishing into `/<shm>`, with its memory taken (the
/// frame-path region reserved, memory locked as the config says). Nothing runs yet.
pub fn build(config: &Config, shm: &str) -> Runtime {
    build_with(config, shm, true)
}

/// [`build`], taking the memory (reserving the region, locking) only if `take`: a process reserves its
/// region once.
pub fn build_with(config: &Config, shm: &str, take: bool) -> Runtime {
    Runtime::build(
        config,
        RuntimeOptions {
            shm: ShmTarget::Named(shm.to_owned()),
            take_memory: take,
            ..RuntimeOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Frames published so far, all cameras.
pub fn processed(runtime: &Runtime) -> u64 {
    let stats = runtime.stats();
    (0..stats.cameras())
        .map(|c| stats.camera(c).counters.processed.load(Relaxed))
        .sum()
}

/// Waits until `frames` frames were published, calling `tick` every ~`every`; fails the test after
/// `watchdog` (a stuck pipeline) or if the pipeline stopped.
pub fn run_until(
    runtime: &Runtime,
    frames: u64,
    watchdog: Duration,
    every: Duration,
    mut tick: impl FnMut(u64),
) {
    let until = Instant::now() + watchdog;
    loop {
        let n = processed(runtime);
        tick(n);
        if n >= frames {
            return;
        }
        assert!(
            runtime.is_running(),
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
