//! First-run calibration: the model's stage times measured on this machine, so that `model.variant = auto`
//! never keeps a variant slower than another the bundle has, and the deadlines a configuration leaves out fit
//! the model instead of the demo.
//!
//! * **Variant.** When [`crate::infer::select::choose`] cannot tell from the CPU alone (int8 dot products are
//!   there, but a small model can still run slower in int8), each candidate variant is loaded and run on a
//!   fixed input ([`ENGINE_WARMUP`] untimed runs, then [`ENGINE_RUNS`] timed ones), the fastest (median of
//!   encoder + resampler) is kept and the others dropped. The answer is remembered in the measurements file
//!   (`model.measurements`; default `$STATE_DIRECTORY/measurements.toml` under systemd, else
//!   `$XDG_CACHE_HOME/ocellus/`, `~/.cache/ocellus/`), keyed by the engine, threads, the CPU features and the
//!   sha256 of every candidate's files, so the next start of the same model on the same machine measures
//!   nothing. A file that cannot be written is logged, not fatal.
//! * **Deadlines** ([`deadlines`]): prepare, encoder and resampler = 1.5 x their slowest measured run + 1 ms;
//!   publish = 2 ms; dequeue = the slowest camera's frame period + cameras x (prepare + encoder + resampler
//!   deadlines), because a frame may wait for every other camera's inference; end-to-end = the sum of dequeue,
//!   prepare, encoder, resampler and publish. The preparer is timed on each camera's own frame format and
//!   size at every start (it costs milliseconds); the engine's times come from the calibration runs or the
//!   measurements file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::frame::FrameBuf;
use crate::infer::{InferenceEngine, RunVariant};
use crate::manifest::{EngineKind, Manifest, ModelRole};
use crate::pipeline::Deadlines;
use crate::prepare::Preparer;
use crate::source::{CameraSettings, FrameSource, SourceSettings};
use crate::stats::Stage;

/// Untimed engine runs before the timed ones (first runs pay for page faults and lazy packing).
pub const ENGINE_WARMUP: usize = 3;
/// Timed engine runs per variant.
pub const ENGINE_RUNS: usize = 10;
/// Timed preparer runs per camera.
pub const PREPARE_RUNS: usize = 20;

/// One stage's measured times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub p50_ms: f64,
    pub max_ms: f64,
}

impl Timing {
    fn of(mut ns: Vec<u64>) -> Timing {
        ns.sort_unstable();
        let ms = |v: u64| v as f64 / 1e6;
        Timing {
            p50_ms: ns.get(ns.len() / 2).copied().map_or(0.0, ms),
            max_ms: ns.last().copied().map_or(0.0, ms),
        }
    }

    /// The deadline this timing suggests: 1.5 x the slowest run + 1 ms.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs_f64((1.5 * self.max_ms + 1.0) / 1e3)
    }
}

/// The engine's measured times for one variant, and the frame-path memory its runs need.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EngineTiming {
    pub encoder: Timing,
    pub resampler: Timing,
    /// What the frame-path region carves to serve the engine's runs (`alloc::trace`): 0 if not measured.
    #[serde(default)]
    pub region_bytes: u64,
}

impl EngineTiming {
    /// Median encoder + resampler time, what variants are compared by.
    pub fn p50_ms(&self) -> f64 {
        self.encoder.p50_ms + self.resampler.p50_ms
    }
}

/// Runs `engine` on a fixed input: [`ENGINE_WARMUP`] untimed runs, then `runs` timed ones, as the frame path
/// runs it (on a thread registered as the inference thread, so the frame-path region it will need is traced).
pub fn time_engine(
    engine: &mut dyn InferenceEngine,
    runs: usize,
) -> Result<EngineTiming, crate::infer::InferError> {
    // On a fresh thread, as the inference thread will be: thread-local scratch (tract's matrix-product
    // packing buffers) is made during the trace and counted, not inherited from earlier work on this thread.
    let (timing, region_bytes) = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("ocellus-calibrate".into())
            .spawn_scoped(scope, || {
                crate::alloc::trace(|| time_engine_untraced(engine, runs))
            })
            .map(|h| h.join())
    })
    .map_err(|e| crate::infer::InferError::Tract {
        role: crate::manifest::ModelRole::Vision,
        message: format!("cannot start the calibration thread: {e}"),
    })?
    .map_err(|_| crate::infer::InferError::Tract {
        role: crate::manifest::ModelRole::Vision,
        message: "the calibration thread panicked".into(),
    })?;
    timing.map(|t| EngineTiming { region_bytes, ..t })
}

fn time_engine_untraced(
    engine: &mut dyn InferenceEngine,
    runs: usize,
) -> Result<EngineTiming, crate::infer::InferError> {
    let pixels: Vec<f32> = (0..engine.input_len())
        .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
        .collect();
    let mut out = engine.new_output();
    let (mut enc, mut res) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..ENGINE_WARMUP + runs {
        let t = engine.run(&pixels, &mut out)?;
        if i >= ENGINE_WARMUP {
            enc.push(u64::try_from(t.encoder.as_nanos()).unwrap_or(u64::MAX));
            res.push(u64::try_from(t.resampler.as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Ok(EngineTiming {
        encoder: Timing::of(enc),
        resampler: Timing::of(res),
        region_bytes: 0,
    })
}

/// Prepares a frame of `cam`'s format and size (a demo scene, rendered as the synthetic camera delivers it)
/// `runs` times into `manifest`'s input.
pub fn time_preparer(
    manifest: &Manifest,
    cam: &CameraSettings,
    runs: usize,
) -> Result<Timing, String> {
    let mut synthetic = cam.clone();
    synthetic.source = SourceSettings::Synthetic {
        seed: 1,
        hold_frames: 1,
    };
    synthetic.fps = 0;
    let mut source =
        crate::source::SyntheticSource::new(0, &synthetic).map_err(|e| e.to_string())?;
    source.start().map_err(|e| e.to_string())?;
    let mut buf = FrameBuf::new(source.max_frame_bytes());
    source.next_frame(&mut buf).map_err(|e| e.to_string())?;
    source.stop();
    let pre = &manifest.preprocess;
    let mut preparer =
        Preparer::new(pre, cam.format, cam.width, cam.height).map_err(|e| e.to_string())?;
    let mut input = vec![0.0f32; 3 * pre.width * pre.height];
    let mut ns = Vec::with_capacity(runs);
    for _ in 0..runs + 2 {
        let t = Instant::now();
        preparer
            .prepare(buf.bytes(), &mut input)
            .map_err(|e| e.to_string())?;
        ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    Ok(Timing::of(ns.split_off(2)))
}

/// The deadlines of `config`: each one its `[budgets]` gives, else derived from the measured times (see the
/// module documentation). Also returns, per stage, whether it was derived.
pub fn deadlines(
    config: &Config,
    prepare: &[Timing],
    engine: &EngineTiming,
) -> (Deadlines, [bool; crate::stats::STAGE_COUNT]) {
    let b = &config.budgets;
    let worst_prepare = prepare
        .iter()
        .copied()
        .fold(Timing::default(), |a, t| Timing {
            p50_ms: a.p50_ms.max(t.p50_ms),
            max_ms: a.max_ms.max(t.max_ms),
        });
    let prep = b.prepare.unwrap_or_else(|| worst_prepare.deadline());
    let enc = b.encoder.unwrap_or_else(|| engine.encoder.deadline());
    let res = b.resampler.unwrap_or_else(|| engine.resampler.deadline());
    let publish = b.publish.unwrap_or(Duration::from_millis(2));
    let period = config
        .cameras
        .iter()
        .filter_map(|c| c.frame_period())
        .max()
        .unwrap_or(Duration::ZERO);
    let cameras = config.cameras.len().max(1) as u32;
    let dequeue = b.dequeue.unwrap_or(period + (prep + enc + res) * cameras);
    let e2e = b.end_to_end.unwrap_or(dequeue + prep + enc + res + publish);
    let mut derived = [false; crate::stats::STAGE_COUNT];
    for (stage, given) in [
        (Stage::Dequeue, b.dequeue),
        (Stage::Prepare, b.prepare),
        (Stage::Encoder, b.encoder),
        (Stage::Resampler, b.resampler),
        (Stage::Publish, b.publish),
        (Stage::EndToEnd, b.end_to_end),
    ] {
        derived[stage.index()] = given.is_none();
    }
    let d = Deadlines::default()
        .with(Stage::Dequeue, Some(dequeue))
        .with(Stage::Prepare, Some(prep))
        .with(Stage::Encoder, Some(enc))
        .with(Stage::Resampler, Some(res))
        .with(Stage::Publish, Some(publish))
        .with(Stage::EndToEnd, Some(e2e));
    (d, derived)
}

// ---- the measurements file ----

/// One remembered measurement: which variant won for a model on a machine, and the times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// Engine, threads, CPU features and the candidates' file hashes.
    pub key: String,
    /// The model's name, for people reading the file.
    pub model: String,
    /// The fastest variant.
    pub variant: String,
    /// Every candidate's median encoder + resampler ms.
    pub p50_ms: BTreeMap<String, f64>,
    /// The fastest variant's times.
    pub timing: EngineTiming,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasurementsFile {
    #[serde(default)]
    measured: Vec<Measured>,
}

/// Where the measurements are remembered: `model.measurements`, else `$STATE_DIRECTORY/measurements.toml`
/// (systemd's StateDirectory), else `$XDG_CACHE_HOME/ocellus/measurements.toml` or
/// `~/.cache/ocellus/measurements.toml`; `None` if none of these can be named.
pub fn measurements_path(config: &Config) -> Option<PathBuf> {
    if let Some(p) = &config.model.measurements {
        return Some(p.clone());
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(state) = env("STATE_DIRECTORY") {
        // systemd may list several directories separated by ':'; the first is ours.
        let first = state
            .to_string_lossy()
            .split(':')
            .next()
            .map(PathBuf::from)?;
        return Some(first.join("measurements.toml"));
    }
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .map(|c| c.join("ocellus/measurements.toml"))
}

/// The key of a measurement: what must be equal for it to hold.
pub fn key(
    manifest: &Manifest,
    engine: EngineKind,
    threads: usize,
    cpu: &str,
    candidates: &[RunVariant],
) -> String {
    let mut key = format!("v2|{engine}|threads={threads}|{cpu}");
    for &v in candidates {
        for role in [ModelRole::Vision, ModelRole::Resampler] {
            let sha = manifest
                .file_for(role, v.file_variant(), engine)
                .map_or("-", |f| f.sha256.as_str());
            key.push_str(&format!("|{v}:{role}:{sha}"));
        }
    }
    key
}

/// The remembered measurement under `key`, if the file has one.
pub fn recall(path: &Path, key: &str) -> Option<Measured> {
    let text = std::fs::read_to_string(path).ok()?;
    let file: MeasurementsFile = toml::from_str(&text).ok()?;
    file.measured.into_iter().find(|m| m.key == key)
}

/// Remembers `m` (replacing an entry with the same key); writes a temporary file and renames it into place.
pub fn remember(path: &Path, m: Measured) -> std::io::Result<()> {
    let mut file: MeasurementsFile = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default();
    file.measured.retain(|e| e.key != m.key);
    file.measured.push(m);
    let text = toml::to_string_pretty(&file).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("toml.tmp{}", std::process::id()));
    std::fs::write(
        &tmp,
        format!("# Measured by ocellus (model.variant = auto, deadlines); delete to measure again.\n{text}"),
    )?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Origin};

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!("[[camera]]\nfps = 25\n[[camera]]\nfps = 0\n{extra}"),
            Origin::Embedded,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn t(p50_ms: f64, max_ms: f64) -> Timing {
        Timing { p50_ms, max_ms }
    }

    #[test]
    fn deadlines_left_out_come_from_the_measured_times() {
        let engine = EngineTiming {
            encoder: t(8.0, 10.0),
            resampler: t(1.0, 2.0),
            region_bytes: 0,
        };
        let (d, derived) = deadlines(&config(""), &[t(0.5, 1.0), t(0.7, 2.0)], &engine);
        let ms = |s: Stage| d.stage_ns[s.index()] as f64 / 1e6;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(
            close(ms(Stage::Prepare), 1.5 * 2.0 + 1.0),
            "the slowest camera's"
        );
        assert!(close(ms(Stage::Encoder), 1.5 * 10.0 + 1.0));
        assert!(close(ms(Stage::Resampler), 1.5 * 2.0 + 1.0));
        assert!(close(ms(Stage::Publish), 2.0));
        // One frame period (25 fps) plus both cameras' inference.
        assert!(close(ms(Stage::Dequeue), 40.0 + 2.0 * (4.0 + 16.0 + 4.0)));
        assert!(close(ms(Stage::EndToEnd), 88.0 + 4.0 + 16.0 + 4.0 + 2.0));
        assert!(derived.iter().filter(|&&x| x).count() == 6);

        let (d, derived) = deadlines(
            &config("[budgets]\nencoder-ms = 30\n"),
            &[t(0.5, 1.0)],
            &engine,
        );
        assert_eq!(d.stage_ns[Stage::Encoder.index()], 30_000_000);
        assert!(!derived[Stage::Encoder.index()] && derived[Stage::Prepare.index()]);
    }

    #[test]
    fn measurements_are_remembered_by_key() {
        let dir = tempfile_dir();
        let path = dir.join("m/measurements.toml");
        assert!(recall(&path, "k1").is_none());
        let m = |key: &str, variant: &str| Measured {
            key: key.into(),
            model: "demo".into(),
            variant: variant.into(),
            p50_ms: [("fp32".to_owned(), 2.5), ("int8".to_owned(), 3.5)].into(),
            timing: EngineTiming {
                encoder: t(2.0, 2.2),
                resampler: t(0.5, 0.6),
                region_bytes: 1 << 20,
            },
        };
        remember(&path, m("k1", "fp32")).expect("write");
        remember(&path, m("k2", "int8")).expect("write");
        remember(&path, m("k1", "int8")).expect("replace");
        assert_eq!(recall(&path, "k1").map(|m| m.variant), Some("int8".into()));
        assert_eq!(
            recall(&path, "k2").map(|m| m.timing.encoder.max_ms),
            Some(2.2)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ocellus-calibrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}
