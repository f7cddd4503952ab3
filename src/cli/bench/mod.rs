//! `ocellus bench`: the real pipeline measured, and the same model files run in onnxruntime for the ratio.
//!
//! Four measurements, in this order (docs/bench.md describes every field of the JSON report):
//!
//! 1. **capture alone**: each camera's source delivering frames with nothing else running, to know what the
//!    capture stage costs (the pipeline measures capture only as part of `dequeue`);
//! 2. **the pipeline**: built by the runtime exactly as `ocellus run` builds it (`ocellus::runtime::Runtime::build`), synthetic and replay
//!    cameras unpaced unless `--paced`; `--warmup` frames first, then `--frames` frames measured. The window
//!    is cut by a sink that snapshots the statistics when it publishes frame `warmup + 1` (the statistics then
//!    hold exactly the warm-up frames) and frame `warmup + frames + 1`, so the window holds exactly `frames`
//!    frames and the time and allocations between the two snapshots are exactly `frames` frame cycles;
//! 3. **the engine alone**: the vision encoder and resampler of each variant in the bundle, run on one input
//!    `--infer-runs` times (median per model), the same protocol as the onnxruntime side;
//! 4. **onnxruntime**: `ocellus-tools ort-bench` in the tools' Python (`--python`), which times the bundle's
//!    fp32 and int8 files and int8 files onnxruntime's own quantizers make on the fly; a missing Python or
//!    onnxruntime leaves `ort_infer_ms` null with the reason in `ort_error`, never a guess.

mod capture;
mod engines;
mod report;
pub(crate) mod svg;
mod window;

use capture::measure_capture;
use engines::{run_ort, time_engine, EngineTimes};
use report::Report;
use window::{load_average, peak_rss_bytes, run_pipeline, Ran, Window};

use std::path::{Path, PathBuf};
use std::time::Duration;

use ocellus::manifest::{EngineKind, Manifest};
use ocellus::source::SourceKind;

use super::{init_logging, load_config, Failure, Verbosity};

/// The goals the report is held against (a benchmark reports them; it does not fail on them).
pub(super) const GOAL_E2E_OVER_STAGE_SUM: f64 = 1.05;
pub(super) const GOAL_P99_OVER_P50: f64 = 1.25;
pub(super) const GOAL_INFER_OVER_ORT: f64 = 1.0;
/// Frames of capture alone per camera (at most `--frames`).
pub(super) const CAPTURE_SAMPLES: u64 = 60;
/// Untimed engine runs before the timed ones.
pub(super) const ENGINE_WARMUP: usize = 5;
/// The pipeline is given up on when no frame is published for this long.
pub(super) const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Configuration file (TOML); without it, the built-in default (synthetic camera, demo model).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Frames to measure (all cameras together), after the warm-up.
    #[arg(long, default_value_t = 300)]
    pub frames: u64,
    /// Frames run first and left out of the figures (first model runs are slower).
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Keep the config's frame rates for synthetic and replay cameras (default: as fast as they go).
    #[arg(long)]
    pub paced: bool,
    /// Write the report here as JSON (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub json: PathBuf,
    /// Also draw the end-to-end latency histogram and the per-stage latencies as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Timed runs of each model file by itself, in tract and in onnxruntime.
    #[arg(long, default_value_t = 50)]
    pub infer_runs: usize,
    /// Python with onnxruntime and the tools (default: ~/.cache/ocellus/venv/bin/python, the venv `make
    /// setup` makes, else python3).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Directory holding the tools' package ocellus_tools (default: ./tools, else the source tree's).
    #[arg(long, value_name = "DIR")]
    pub tools: Option<PathBuf>,
    /// Do not run onnxruntime (the report says so: ort_infer_ms null).
    #[arg(long)]
    pub no_ort: bool,
    /// Publish into this shared-memory segment (default: ocellus-bench-<pid>, so a running service is left
    /// alone).
    #[arg(long, value_name = "NAME", conflicts_with = "no_shm")]
    pub shm: Option<String>,
    /// Do not publish into shared memory.
    #[arg(long)]
    pub no_shm: bool,
    /// Which engine runs the pipeline: `tract`, `onnxruntime` (a build with the `onnxruntime` feature), or
    /// `all` (the pipeline once per engine this build has, on the same bundle; the config's engine first).
    /// Default: the config's `model.engine`.
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<EngineArg>,
}

/// `--engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Tract,
    Onnxruntime,
    All,
}

/// One pipeline run of the benchmark and the same engine's variants alone.
struct EngineRun {
    ran: Ran,
    window: Window,
    /// `VmHWM` after this run: the process's peak so far (earlier runs included).
    peak_rss: Option<u64>,
    times: Vec<EngineTimes>,
}

/// The engines `--engine` names, in the order they run.
fn engines(arg: Option<EngineArg>, configured: EngineKind) -> Vec<EngineKind> {
    let other = match configured {
        EngineKind::Tract => EngineKind::Onnxruntime,
        EngineKind::Onnxruntime => EngineKind::Tract,
    };
    match arg {
        None => vec![configured],
        Some(EngineArg::Tract) => vec![EngineKind::Tract],
        Some(EngineArg::Onnxruntime) => vec![EngineKind::Onnxruntime],
        Some(EngineArg::All) if cfg!(feature = "onnxruntime") => vec![configured, other],
        Some(EngineArg::All) => vec![EngineKind::Tract],
    }
}

pub fn bench(args: BenchArgs, v: Verbosity) -> Result<(), Failure> {
    if args.frames == 0 {
        return Err(Failure::config(
            "--frames 0: give at least 1 frame to measure",
        ));
    }
    if args.infer_runs == 0 {
        return Err(Failure::config("--infer-runs 0: give at least 1 run"));
    }
    let mut config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    let load_before = load_average();
    let fps_configured: Vec<u32> = config.cameras.iter().map(|c| c.fps).collect();
    if !args.paced {
        for cam in config.cameras.iter_mut() {
            if matches!(cam.kind(), SourceKind::Synthetic | SourceKind::Replay) {
                cam.fps = 0;
            }
        }
    }

    tracing::info!("capture alone ...");
    let capture = measure_capture(&config, args.frames.min(CAPTURE_SAMPLES))?;

    let manifest = Manifest::load(&config.model.manifest).map_err(Failure::config)?;
    let mut runs = Vec::new();
    for engine in engines(args.engine, config.model.engine) {
        config.model.engine = engine;
        tracing::info!(
            %engine,
            warmup = args.warmup,
            frames = args.frames,
            "pipeline: warm-up, then the measured frames ..."
        );
        let (window, ran) = run_pipeline(&config, &args)?;
        let peak_rss = peak_rss_bytes();
        tracing::info!(%engine, runs = args.infer_runs, "each model variant alone ...");
        let times = time_engine(&manifest, &config, engine, args.infer_runs)?;
        runs.push(EngineRun {
            ran,
            window,
            peak_rss,
            times,
        });
    }
    let ort = if args.no_ort {
        Err("skipped: --no-ort".to_owned())
    } else {
        tracing::info!("onnxruntime (ocellus-tools ort-bench) ...");
        run_ort(&args, &config, args.infer_runs)
    };

    let report = Report {
        config: &config,
        manifest: &manifest,
        args: &args,
        fps_configured: &fps_configured,
        capture: &capture,
        runs: &runs,
        malloc_counted: crate::malloc_count::active(),
        ort: &ort,
        load: [load_before, load_average()],
    };
    let json = report.json();
    let text = serde_json::to_string_pretty(&json)
        .map_err(|e| Failure::runtime(format!("cannot encode the report: {e}")))?;
    if args.json.as_os_str() == "-" {
        println!("{text}");
    } else {
        write_file(&args.json, &(text + "\n"))?;
        print!("{}", report.text(&json));
    }
    if let Some(path) = &args.plot {
        write_file(path, &report.svg())?;
    }
    if runs.iter().any(|r| r.window.frames() == 0) {
        return Err(Failure::runtime(
            "no frame was measured: see the log above for camera and model errors",
        ));
    }
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text)
        .map_err(|e| Failure::runtime(format!("cannot write {}: {e}", path.display())))
}
