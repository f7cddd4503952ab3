//! `ocellus bench`: the real pipeline measured, and the same model files run in onnxruntime for the ratio.
//!
//! Four measurements, in this order (docs/bench.md describes every field of the JSON report):
//!
//! 1. **capture alone**: each camera's source delivering frames with nothing else running, to know what the
//!    capture stage costs (the pipeline measures capture only as part of `dequeue`);
//! 2. **the pipeline**: built exactly as `ocellus run` builds it ([`super::run::build`]), synthetic and replay
//!    cameras unpaced unless `--paced`; `--warmup` frames first, then `--frames` frames measured. The window
//!    is cut by a sink that snapshots the statistics when it publishes frame `warmup + 1` (the statistics then
//!    hold exactly the warm-up frames) and frame `warmup + frames + 1`, so the window holds exactly `frames`
//!    frames and the time and allocations between the two snapshots are exactly `frames` frame cycles;
//! 3. **the engine alone**: the vision encoder and resampler of each variant in the bundle, run on one input
//!    `--infer-runs` times (median per model), the same protocol as the onnxruntime side;
//! 4. **onnxruntime**: `ocellus-tools ort-bench` in the tools' Python (`--python`), which times the bundle's
//!    fp32 and int8 files and int8 files onnxruntime's own quantizers make on the fly; a missing Python or
//!    onnxruntime leaves `ort_infer_ms` null with the reason in `ort_error`, never a guess.

mod svg;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocellus::alloc::{AllocStats, Role};
use ocellus::config::{Config, SourceKind};
use ocellus::frame::FrameBuf;
use ocellus::infer::Engine;
use ocellus::manifest::{Manifest, Variant};
use ocellus::pipeline::{monotonic_ns, FrameResult};
use ocellus::sink::{Sink, SinkError};
use ocellus::stats::{HistogramSnapshot, Stage, Stats, STAGE_COUNT};
use serde_json::{json, Map, Value};

use super::run::RunArgs;
use super::{init_logging, load_config, Failure, Verbosity};

/// The goals the report is held against (a benchmark reports them; it does not fail on them).
const GOAL_E2E_OVER_STAGE_SUM: f64 = 1.05;
const GOAL_P99_OVER_P50: f64 = 1.25;
const GOAL_INFER_OVER_ORT: f64 = 1.0;
/// Frames of capture alone per camera (at most `--frames`).
const CAPTURE_SAMPLES: u64 = 60;
/// Untimed engine runs before the timed ones.
const ENGINE_WARMUP: usize = 5;
/// The pipeline is given up on when no frame is published for this long.
const STALL: Duration = Duration::from_secs(60);

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

    tracing::info!(
        warmup = args.warmup,
        frames = args.frames,
        "pipeline: warm-up, then the measured frames ..."
    );
    let window = run_pipeline(&config, &args)?;
    let peak_rss = peak_rss_bytes();

    let manifest = Manifest::load(&config.model.manifest).map_err(Failure::config)?;
    tracing::info!(runs = args.infer_runs, "each model variant alone ...");
    let tract = time_tract(&manifest, config.model.threads, args.infer_runs)?;
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
        window: &window,
        peak_rss,
        tract: &tract,
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
    if window.frames() == 0 {
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

// ---------------------------------------------------------------------------------------------------------
// 1. Capture alone.

/// Per camera: the histogram of `next_frame` durations of its source, unpaced, nothing else running.
fn measure_capture(config: &Config, samples: u64) -> Result<Vec<Samples>, Failure> {
    let mut out = Vec::with_capacity(config.cameras.len());
    for (index, cam) in config.cameras.iter().enumerate() {
        let mut cam = cam.clone();
        cam.fps = 0;
        let fail = |e: &dyn std::fmt::Display| {
            Failure::config(format!(
                "config {}: camera[{index}] ({}): {e}",
                config.origin, cam.name
            ))
        };
        let mut source = ocellus::source::open(index, &cam).map_err(|e| fail(&e))?;
        source.start().map_err(|e| fail(&e))?;
        let mut buf = FrameBuf::new(source.max_frame_bytes());
        let mut times = Vec::with_capacity(samples as usize);
        for _ in 0..samples {
            let t = monotonic_ns();
            match source.next_frame(&mut buf) {
                Ok(()) => times.push(monotonic_ns() - t),
                Err(ocellus::source::SourceError::EndOfStream { .. }) => break,
                Err(e) => return Err(fail(&e)),
            }
        }
        source.stop();
        out.push(Samples::new(times));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// 2. The pipeline, and the sink that cuts the measured window.

/// What the statistics say at one point of the run.
struct Mark {
    at_ns: u64,
    stages: [HistogramSnapshot; STAGE_COUNT],
    captured: u64,
    dropped: u64,
    corrupt: u64,
    late_frames: u64,
    errors: u64,
    alloc: AllocStats,
}

impl Mark {
    fn empty() -> Self {
        Mark {
            at_ns: 0,
            stages: std::array::from_fn(|_| HistogramSnapshot::default()),
            captured: 0,
            dropped: 0,
            corrupt: 0,
            late_frames: 0,
            errors: 0,
            alloc: AllocStats::default(),
        }
    }

    /// Fills `self` from `stats` without allocating.
    fn take(&mut self, stats: &Stats, scratch: &mut HistogramSnapshot) {
        for stage in Stage::ALL {
            stats.stage_snapshot(stage, &mut self.stages[stage.index()], scratch);
        }
        self.captured = stats.total(|c| &c.captured);
        self.dropped = stats.total(|c| &c.dropped);
        self.corrupt = stats.total(|c| &c.corrupt);
        self.late_frames = stats.total(|c| &c.late_frames);
        self.errors = stats.total(|c| &c.infer_errors)
            + stats.total(|c| &c.publish_errors)
            + stats.total(|c| &c.source_errors);
        self.alloc = ocellus::alloc::stats();
        self.at_ns = monotonic_ns();
    }
}

/// The measured window: the statistics at its start and end.
struct Window {
    start: Mark,
    end: Mark,
    scratch: HistogramSnapshot,
    started: bool,
    /// The window ended at frame `warmup + frames + 1` (not cut short by a signal or a replay's end).
    complete: bool,
    /// Frames the pipeline published in all, warm-up included.
    published: u64,
}

impl Window {
    /// The window's histogram of one stage.
    fn stage(&self, stage: Stage) -> HistogramSnapshot {
        let mut d = HistogramSnapshot::default();
        d.set_difference(
            &self.end.stages[stage.index()],
            &self.start.stages[stage.index()],
        );
        d
    }

    fn frames(&self) -> u64 {
        if self.started {
            self.stage(Stage::EndToEnd).count
        } else {
            0
        }
    }

    fn seconds(&self) -> f64 {
        self.end.at_ns.saturating_sub(self.start.at_ns) as f64 / 1e9
    }
}

/// The last sink of the benchmark's pipeline: snapshots the statistics when it publishes frame `warmup + 1`
/// and frame `warmup + frames + 1` (each time the statistics hold every earlier frame and nothing of the
/// current one), then hands the window over. Allocates nothing on the frame path.
struct WindowSink {
    stats: Arc<Stats>,
    warmup: u64,
    frames: u64,
    seen: u64,
    window: Option<Box<Window>>,
    out: Arc<Mutex<Option<Box<Window>>>>,
}

impl WindowSink {
    fn hand_over(&mut self) {
        if let Some(mut w) = self.window.take() {
            w.published = self.seen;
            if let Ok(mut slot) = self.out.lock() {
                *slot = Some(w);
            }
        }
    }
}

impl Sink for WindowSink {
    fn publish(&mut self, _: &FrameResult<'_>) -> Result<(), SinkError> {
        self.seen += 1;
        let Some(w) = self.window.as_mut() else {
            return Ok(());
        };
        if self.seen == self.warmup + 1 {
            w.start.take(&self.stats, &mut w.scratch);
            w.started = true;
        } else if self.seen == self.warmup + self.frames + 1 {
            w.end.take(&self.stats, &mut w.scratch);
            w.complete = true;
            self.hand_over();
        }
        Ok(())
    }

    /// Called on the inference thread after its last frame: a window cut short ends here.
    fn stop(&mut self) {
        if let Some(w) = self.window.as_mut() {
            if w.started {
                w.end.take(&self.stats, &mut w.scratch);
            }
        }
        self.hand_over();
    }
}

fn run_pipeline(config: &Config, args: &BenchArgs) -> Result<Window, Failure> {
    let interrupt = super::run::interrupt_flag()?;
    let run_args = RunArgs {
        config: None,
        frames: Some(args.warmup + args.frames + 1),
        duration: None,
        summary_json: None,
        status_interval: 0.0,
        shm: Some(
            args.shm
                .clone()
                .unwrap_or_else(|| format!("ocellus-bench-{}", std::process::id())),
        ),
        no_shm: args.no_shm,
    };
    let (mut pipeline, _prompts) = super::run::build(config, &run_args)?;
    let out = Arc::new(Mutex::new(None));
    let sink = WindowSink {
        stats: Arc::clone(pipeline.stats()),
        warmup: args.warmup,
        frames: args.frames,
        seen: 0,
        window: Some(Box::new(Window {
            start: Mark::empty(),
            end: Mark::empty(),
            scratch: HistogramSnapshot::default(),
            started: false,
            complete: false,
            published: 0,
        })),
        out: Arc::clone(&out),
    };
    pipeline
        .add_sink(Box::new(sink))
        .map_err(|e| Failure::runtime(e.to_string()))?;
    pipeline
        .start()
        .map_err(|e| Failure::runtime(format!("cannot start the pipeline: {e}")))?;
    let stats = Arc::clone(pipeline.stats());
    let (mut last, mut last_change) = (0u64, Instant::now());
    let mut stalled = false;
    while !pipeline.wait(Duration::from_secs(1), &interrupt) {
        if interrupt.load(Ordering::SeqCst) {
            tracing::info!("signal received; stopping");
            break;
        }
        let now = stats.total(|c| &c.processed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() >= STALL {
            stalled = true;
            break;
        }
    }
    pipeline.stop();
    let window =
        out.lock().ok().and_then(|mut w| w.take()).ok_or_else(|| {
            Failure::runtime("the pipeline stopped without handing over its figures")
        })?;
    if stalled {
        return Err(Failure::runtime(format!(
            "no frame was published for {} s (after {} frames): see the log above for camera and model errors",
            STALL.as_secs(),
            window.published
        )));
    }
    if !window.started {
        return Err(Failure::runtime(format!(
            "the pipeline published {} frames, not even the {} warm-up frames: see the log above (a replay \
             without loop ends early; lower --warmup)",
            window.published, args.warmup
        )));
    }
    Ok(*window)
}

/// `VmHWM` of /proc/self/status in bytes: the process's peak resident set.
fn peak_rss_bytes() -> Option<u64> {
    ocellus::alloc::process_memory().map(|m| m.high_water)
}

/// The 1, 5 and 15 minute load averages (/proc/loadavg), to read the figures beside.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

// ---------------------------------------------------------------------------------------------------------
// 3. The engine alone.

/// Medians of one variant run by itself.
struct EngineTimes {
    variant: Variant,
    encoder: Samples,
    resampler: Samples,
}

impl EngineTimes {
    fn encoder_ms(&self) -> f64 {
        ms(self.encoder.pct(0.5))
    }
    fn resampler_ms(&self) -> f64 {
        ms(self.resampler.pct(0.5))
    }
    fn total_ms(&self) -> f64 {
        self.encoder_ms() + self.resampler_ms()
    }
}

/// Every variant of the bundle, `runs` timed runs each after a warm-up, on one fixed input.
fn time_tract(
    manifest: &Manifest,
    threads: usize,
    runs: usize,
) -> Result<Vec<EngineTimes>, Failure> {
    let mut out = Vec::new();
    for variant in [Variant::Fp32, Variant::Int8] {
        if manifest
            .file(ocellus::manifest::Role::Vision, variant)
            .is_none()
        {
            continue;
        }
        let mut engine = Engine::load(manifest, variant, threads).map_err(Failure::config)?;
        let mut output = engine.new_output();
        let pixels: Vec<f32> = (0..engine.input_len())
            .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
            .collect();
        let (mut enc, mut res) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for i in 0..ENGINE_WARMUP + runs {
            let t = engine
                .run(&pixels, &mut output)
                .map_err(|e| Failure::runtime(format!("{variant} engine run failed: {e}")))?;
            if i >= ENGINE_WARMUP {
                enc.push(u64::try_from(t.encoder.as_nanos()).unwrap_or(u64::MAX));
                res.push(u64::try_from(t.resampler.as_nanos()).unwrap_or(u64::MAX));
            }
        }
        out.push(EngineTimes {
            variant,
            encoder: Samples::new(enc),
            resampler: Samples::new(res),
        });
    }
    if out.is_empty() {
        return Err(Failure::config(format!(
            "{}: the manifest lists no vision file",
            manifest.name
        )));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// 4. onnxruntime, through the tools' Python.

fn default_python() -> PathBuf {
    let venv = std::env::var_os("HOME")
        .map(PathBuf::from)
        .map(|h| h.join(".cache/ocellus/venv/bin/python"));
    venv.filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn default_tools() -> Option<PathBuf> {
    [
        PathBuf::from("tools"),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tools")),
    ]
    .into_iter()
    .find(|d| d.join("ocellus_tools/cli.py").is_file())
    .and_then(|d| d.canonicalize().ok())
}

/// Runs `ocellus-tools ort-bench` and returns its report, or why there is none.
fn run_ort(args: &BenchArgs, config: &Config, runs: usize) -> Result<Value, String> {
    let python = args.python.clone().unwrap_or_else(default_python);
    let tools = args.tools.clone().or_else(default_tools);
    let bundle = config
        .model
        .manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let tmp = std::env::temp_dir();
    let json_path = tmp.join(format!("ocellus-bench-ort-{}.json", std::process::id()));
    let err_path = tmp.join(format!("ocellus-bench-ort-{}.err", std::process::id()));
    let stderr = std::fs::File::create(&err_path)
        .map_err(|e| format!("cannot create {}: {e}", err_path.display()))?;
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "ocellus_tools.cli", "--threads"])
        .arg(config.model.threads.to_string())
        .arg("ort-bench")
        .arg(&bundle)
        .arg("--runs")
        .arg(runs.to_string())
        .arg("--json")
        .arg(&json_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(dir) = &tools {
        let mut path = std::ffi::OsString::from(dir);
        if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
            path.push(":");
            path.push(old);
        }
        cmd.env("PYTHONPATH", path);
    }
    let status = cmd.status();
    let err_text = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    let status = status.map_err(|e| {
        format!(
            "cannot run {} ({e}): give --python PATH to a Python with onnxruntime and the tools (make setup \
             makes ~/.cache/ocellus/venv)",
            python.display()
        )
    })?;
    let text = std::fs::read_to_string(&json_path);
    let _ = std::fs::remove_file(&json_path);
    if !status.success() {
        let tail: Vec<&str> = err_text.lines().rev().take(3).collect();
        let why = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        return Err(format!(
            "{} -m ocellus_tools.cli ort-bench failed ({status}): {}",
            python.display(),
            if why.is_empty() {
                "no message".into()
            } else {
                why
            }
        ));
    }
    let text = text.map_err(|e| format!("ort-bench wrote no report: {e}"))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("ort-bench's report is not JSON: {e}"))?;
    for model in ["encoder", "resampler"] {
        if value["models"][model]["best_ms"].as_f64().is_none() {
            return Err(format!("ort-bench's report has no models.{model}.best_ms"));
        }
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------------------------
// The report.

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The window's largest value: the top of its highest bucket, or the run's maximum if that is lower (a
/// difference of snapshots keeps the whole run's maximum, warm-up included).
fn window_max_ns(s: &HistogramSnapshot) -> u64 {
    s.buckets().last().map_or(0, |(_, hi, _)| hi.min(s.max_ns))
}

/// Every value of a short measurement (capture alone, the engines alone), sorted, for exact percentiles.
#[derive(Debug, Clone, Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn new(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        Samples(values)
    }
}

/// A latency distribution: the pipeline's histograms (percentiles within 6.25 %, reported as the upper
/// edge of their bucket) or exact samples.
trait Distribution {
    fn count(&self) -> u64;
    fn mean_ns(&self) -> f64;
    /// The nearest-rank percentile: the smallest value with at least `q * count` values at or below it.
    fn pct(&self, q: f64) -> u64;
    fn max_ns(&self) -> u64;
}

impl Distribution for HistogramSnapshot {
    fn count(&self) -> u64 {
        self.count
    }
    fn mean_ns(&self) -> f64 {
        HistogramSnapshot::mean_ns(self)
    }
    fn pct(&self, q: f64) -> u64 {
        self.percentile(q)
    }
    fn max_ns(&self) -> u64 {
        window_max_ns(self)
    }
}

impl Distribution for Samples {
    fn count(&self) -> u64 {
        self.0.len() as u64
    }
    fn mean_ns(&self) -> f64 {
        if self.0.is_empty() {
            0.0
        } else {
            self.0.iter().map(|&v| v as f64).sum::<f64>() / self.0.len() as f64
        }
    }
    fn pct(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.0.len() as f64).ceil() as usize).max(1);
        self.0[rank - 1]
    }
    fn max_ns(&self) -> u64 {
        self.0.last().copied().unwrap_or(0)
    }
}

fn figures(d: &impl Distribution) -> Value {
    json!({
        "count": d.count(),
        "mean_ms": d.mean_ns() / 1e6,
        "p50_ms": ms(d.pct(0.5)),
        "p90_ms": ms(d.pct(0.9)),
        "p99_ms": ms(d.pct(0.99)),
        "p999_ms": ms(d.pct(0.999)),
        "max_ms": ms(d.max_ns()),
    })
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

fn goal(value: Option<f64>, limit: f64) -> Value {
    json!({ "value": value, "limit": limit, "met": value.map(|v| v <= limit) })
}

struct Report<'a> {
    config: &'a Config,
    manifest: &'a Manifest,
    args: &'a BenchArgs,
    fps_configured: &'a [u32],
    capture: &'a [Samples],
    window: &'a Window,
    peak_rss: Option<u64>,
    tract: &'a [EngineTimes],
    ort: &'a Result<Value, String>,
    load: [Option<[f64; 3]>; 2],
}

impl Report<'_> {
    fn best_tract(&self) -> &EngineTimes {
        self.tract
            .iter()
            .min_by(|a, b| a.total_ms().total_cmp(&b.total_ms()))
            .expect("time_tract returns at least one variant")
    }

    fn json(&self) -> Value {
        let w = self.window;
        let e2e = w.stage(Stage::EndToEnd);
        let mut stages = Map::new();
        for stage in Stage::ALL {
            stages.insert(stage.name().into(), figures(&w.stage(stage)));
        }
        let capture_p50: Vec<f64> = self.capture.iter().map(|c| ms(c.pct(0.5))).collect();
        let capture_mean_p50 = capture_p50.iter().sum::<f64>() / capture_p50.len().max(1) as f64;
        let p50 = |s: Stage| ms(w.stage(s).percentile(0.5));
        let stage_sum = capture_mean_p50
            + p50(Stage::Prepare)
            + p50(Stage::Encoder)
            + p50(Stage::Resampler)
            + p50(Stage::Score)
            + p50(Stage::Publish);
        let e2e_p50 = ms(e2e.percentile(0.5));
        let e2e_p99 = ms(e2e.percentile(0.99));
        let frames = w.frames();
        let seconds = w.seconds();

        let best = self.best_tract();
        let variants: Map<String, Value> = self
            .tract
            .iter()
            .map(|t| {
                (
                    t.variant.to_string(),
                    json!({
                        "encoder_ms": t.encoder_ms(),
                        "resampler_ms": t.resampler_ms(),
                        "total_ms": t.total_ms(),
                        "encoder": figures(&t.encoder),
                        "resampler": figures(&t.resampler),
                    }),
                )
            })
            .collect();
        let (ort_report, ort_error) = match self.ort {
            Ok(v) => (v.clone(), Value::Null),
            Err(e) => (Value::Null, Value::String(e.clone())),
        };
        let ort_model = |m: &str| -> Option<(f64, String)> {
            let model = &ort_report["models"][m];
            Some((
                model["best_ms"].as_f64()?,
                model["best"].as_str()?.to_owned(),
            ))
        };
        let ort_enc = ort_model("encoder");
        let ort_res = ort_model("resampler");
        let ort_total = ort_enc
            .as_ref()
            .zip(ort_res.as_ref())
            .map(|(a, b)| a.0 + b.0);
        let ocellus_total = best.total_ms();
        let ratio_total = ort_total.and_then(|o| ratio(ocellus_total, o));
        let per_model = |ours: f64, theirs: &Option<(f64, String)>| {
            json!({
                "ocellus_ms": ours,
                "ocellus_variant": best.variant.to_string(),
                "ort_ms": theirs.as_ref().map(|t| t.0),
                "ort_variant": theirs.as_ref().map(|t| t.1.clone()),
                "ratio_vs_ort": theirs.as_ref().and_then(|t| ratio(ours, t.0)),
            })
        };

        let cameras: Vec<Value> = self
            .config
            .cameras
            .iter()
            .zip(self.fps_configured)
            .zip(self.capture)
            .map(|((c, &fps), cap)| {
                json!({
                    "name": c.name,
                    "source": format!("{:?}", c.kind()).to_lowercase(),
                    "pixel_format": c.format.to_string(),
                    "width": c.width,
                    "height": c.height,
                    "fps_configured": fps,
                    "fps_run": c.fps,
                    "capture_alone": figures(cap),
                })
            })
            .collect();
        let alloc = w.end.alloc.since(&w.start.alloc);
        let per_frame = |n: u64| (frames > 0).then(|| n as f64 / frames as f64);
        let allocations = alloc.installed.then(|| {
            let roles: Map<String, Value> = Role::ALL
                .iter()
                .map(|&role| {
                    let c = alloc.role(role);
                    (
                        role.name().to_owned(),
                        json!({ "system": per_frame(c.system), "region": per_frame(c.region) }),
                    )
                })
                .collect();
            json!({
                "per_frame": roles,
                "system_per_frame": per_frame(alloc.system_allocations()),
                "region_per_frame": per_frame(alloc.region_allocations()),
                "fallbacks": alloc.fallbacks,
                "region_bytes": alloc.region_bytes,
                "region_high_water_bytes": alloc.region_high_water,
            })
        });
        let allocations_per_frame = alloc
            .installed
            .then(|| per_frame(alloc.system_allocations() + alloc.region_allocations()))
            .flatten();
        let histogram: Vec<Value> = e2e
            .buckets()
            .map(|(lo, hi, n)| json!({ "lo_ms": ms(lo), "hi_ms": ms(hi), "count": n }))
            .collect();

        json!({
            "ocellus_version": env!("CARGO_PKG_VERSION"),
            "config": self.config.origin.to_string(),
            "model": {
                "name": self.manifest.name,
                "manifest": self.config.model.manifest.display().to_string(),
                "variant": self.config.model.variant.to_string(),
                "threads": self.config.model.threads,
            },
            "cameras": cameras,
            "paced": self.args.paced,
            "shm": !self.args.no_shm,
            "warmup_frames": self.args.warmup,
            "frames_requested": self.args.frames,
            "frames": frames,
            "complete": w.complete,
            "duration_s": seconds,
            "throughput_fps": if seconds > 0.0 { frames as f64 / seconds } else { 0.0 },
            "captured": w.end.captured - w.start.captured,
            "dropped": w.end.dropped - w.start.dropped,
            "corrupt": w.end.corrupt - w.start.corrupt,
            "late_frames": w.end.late_frames - w.start.late_frames,
            "errors": w.end.errors - w.start.errors,
            "end_to_end": figures(&e2e),
            "stages": stages,
            "capture_alone_p50_ms": capture_mean_p50,
            "stage_sum_p50_ms": stage_sum,
            "allocations_per_frame": allocations_per_frame,
            "allocations": allocations,
            "peak_rss_bytes": self.peak_rss,
            "peak_rss_mib": self.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
            "histogram": { "stage": "end_to_end", "buckets": histogram },
            "inference": {
                "runs": self.args.infer_runs,
                "threads": self.config.model.threads,
                "ocellus": { "engine": "tract", "variants": variants, "best": best.variant.to_string() },
                "onnxruntime": ort_report,
            },
            "ocellus_infer_ms": ocellus_total,
            "ort_infer_ms": ort_total,
            "ort_error": ort_error,
            "ratio_vs_ort": ratio_total,
            "per_model": {
                "encoder": per_model(best.encoder_ms(), &ort_enc),
                "resampler": per_model(best.resampler_ms(), &ort_res),
            },
            "goals": {
                "end_to_end_p50_over_stage_sum": goal(ratio(e2e_p50, stage_sum), GOAL_E2E_OVER_STAGE_SUM),
                "end_to_end_p99_over_p50": goal(ratio(e2e_p99, e2e_p50), GOAL_P99_OVER_P50),
                "ocellus_infer_over_ort": goal(ratio_total, GOAL_INFER_OVER_ORT),
            },
            "load_average": { "before": self.load[0], "after": self.load[1] },
        })
    }

    /// The human-readable summary printed beside the JSON file.
    fn text(&self, j: &Value) -> String {
        use std::fmt::Write as _;
        let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.3}"));
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} frames measured ({} warm-up) in {:.2} s: {:.1} fps{}; dropped {}, late {}, errors {}",
            j["frames"],
            j["warmup_frames"],
            j["duration_s"].as_f64().unwrap_or(0.0),
            j["throughput_fps"].as_f64().unwrap_or(0.0),
            if self.args.paced {
                ", paced as configured"
            } else {
                ", unpaced"
            },
            j["dropped"],
            j["late_frames"],
            j["errors"]
        );
        let _ = writeln!(
            s,
            "{:<11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "stage (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        let _ = writeln!(
            s,
            "{:<11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "capture*",
            self.capture.iter().map(|c| c.count()).sum::<u64>(),
            f(&j["capture_alone_p50_ms"]),
            "",
            "",
            "",
            ""
        );
        for stage in Stage::ALL {
            let st = &j["stages"][stage.name()];
            let _ = writeln!(
                s,
                "{:<11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
                stage.name(),
                st["count"].as_u64().unwrap_or(0),
                f(&st["p50_ms"]),
                f(&st["p90_ms"]),
                f(&st["p99_ms"]),
                f(&st["p999_ms"]),
                f(&st["max_ms"])
            );
        }
        let _ = writeln!(
            s,
            "* capture alone (source by itself); stage sum (capture + prepare .. publish, p50) {} ms",
            f(&j["stage_sum_p50_ms"])
        );
        let _ = writeln!(
            s,
            "peak RSS {} MiB; allocations per frame (frame-path threads) {}, of them from the system {}",
            j["peak_rss_mib"]
                .as_f64()
                .map_or("-".into(), |m| format!("{m:.1}")),
            j["allocations_per_frame"]
                .as_f64()
                .map_or("- (allocator not installed)".into(), |m| format!("{m:.1}")),
            j["allocations"]["system_per_frame"]
                .as_f64()
                .map_or("-".into(), |m| format!("{m:.1}")),
        );
        let _ = writeln!(
            s,
            "inference alone (median): ocellus {} ms ({}), onnxruntime {} ms, ratio {}{}",
            f(&j["ocellus_infer_ms"]),
            j["inference"]["ocellus"]["best"].as_str().unwrap_or("?"),
            f(&j["ort_infer_ms"]),
            f(&j["ratio_vs_ort"]),
            j["ort_error"]
                .as_str()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
        for (name, g) in j["goals"].as_object().into_iter().flatten() {
            let met = match g["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            };
            let _ = writeln!(
                s,
                "goal {name}: {} <= {}: {met}",
                f(&g["value"]),
                f(&g["limit"])
            );
        }
        if let Some(path) = Some(&self.args.json).filter(|p| p.as_os_str() != "-") {
            let _ = writeln!(s, "wrote {}", path.display());
        }
        s
    }

    fn svg(&self) -> String {
        let w = self.window;
        let e2e = w.stage(Stage::EndToEnd);
        let buckets: Vec<(f64, f64, u64)> = e2e
            .buckets()
            .map(|(lo, hi, n)| (ms(lo), ms(hi.min(window_max_ns(&e2e))), n))
            .collect();
        let marks = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
        let markers: Vec<svg::Marker<'_>> = marks
            .iter()
            .map(|&(label, q)| svg::Marker {
                label,
                ms: ms(e2e.percentile(q)),
            })
            .collect();
        let capture_p50 = self.capture.iter().map(|c| ms(c.pct(0.5))).sum::<f64>()
            / self.capture.len().max(1) as f64;
        let capture_p99 = self
            .capture
            .iter()
            .map(|c| ms(c.pct(0.99)))
            .fold(0.0, f64::max);
        let mut bars = vec![svg::StageBar {
            name: "capture*",
            p50_ms: capture_p50,
            p99_ms: capture_p99,
        }];
        for stage in Stage::ALL {
            let s = w.stage(stage);
            bars.push(svg::StageBar {
                name: stage.name(),
                p50_ms: ms(s.percentile(0.5)),
                p99_ms: ms(s.percentile(0.99)),
            });
        }
        let cams: Vec<String> = self
            .config
            .cameras
            .iter()
            .map(|c| format!("{} {}x{}", c.format, c.width, c.height))
            .collect();
        let title = format!(
            "ocellus bench: {} frames, {:.1} fps, {} {} ({} thread{})",
            w.frames(),
            if w.seconds() > 0.0 {
                w.frames() as f64 / w.seconds()
            } else {
                0.0
            },
            self.manifest.name,
            self.config.model.variant,
            self.config.model.threads,
            if self.config.model.threads == 1 {
                ""
            } else {
                "s"
            }
        );
        let subtitle = format!(
            "{}; {}; config {} (* capture measured alone)",
            cams.join(", "),
            if self.args.paced {
                "paced as configured"
            } else {
                "unpaced"
            },
            self.config.origin
        );
        svg::plot(&title, &subtitle, &buckets, &markers, &bars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_percentiles_are_nearest_rank() {
        let s = Samples::new((1..=200u64).rev().collect());
        assert_eq!(s.count(), 200);
        assert_eq!(s.pct(0.5), 100);
        assert_eq!(s.pct(0.9), 180);
        assert_eq!(s.pct(0.99), 198);
        assert_eq!(s.pct(0.999), 200);
        assert_eq!(s.pct(0.0), 1);
        assert_eq!(s.max_ns(), 200);
        assert!((s.mean_ns() - 100.5).abs() < 1e-9);
        let empty = Samples::default();
        assert_eq!(
            (empty.pct(0.5), empty.max_ns(), empty.mean_ns()),
            (0, 0, 0.0)
        );
    }

    #[test]
    fn window_figures_leave_the_warm_up_out() {
        let stats = Stats::new(1);
        let cam = stats.camera(0);
        // Warm-up: one slow frame.
        cam.record(Stage::EndToEnd, 900_000_000);
        let mut start = Mark::empty();
        let mut scratch = HistogramSnapshot::default();
        start.take(&stats, &mut scratch);
        for i in 1..=100u64 {
            cam.record(Stage::EndToEnd, i * 100_000);
        }
        let mut end = Mark::empty();
        end.take(&stats, &mut scratch);
        let w = Window {
            start,
            end,
            scratch,
            started: true,
            complete: true,
            published: 101,
        };
        let e2e = w.stage(Stage::EndToEnd);
        let f = figures(&e2e);
        assert_eq!(f["count"].as_u64(), Some(100));
        assert_eq!(w.frames(), 100);
        let max = f["max_ms"].as_f64().unwrap();
        // 10 ms, reported within the histogram's 6.25 %, not the warm-up's 900 ms.
        assert!((10.0..=10.0 * 1.0625).contains(&max), "{f}");
        let p50 = f["p50_ms"].as_f64().unwrap();
        assert!((5.0..=5.0 * 1.0625).contains(&p50), "{f}");
        assert!((f["mean_ms"].as_f64().unwrap() - 5.05).abs() < 1e-9, "{f}");
    }

    #[test]
    fn goals_compare_against_their_limit() {
        assert_eq!(goal(Some(1.2), 1.25)["met"], json!(true));
        assert_eq!(goal(Some(1.3), 1.25)["met"], json!(false));
        assert!(goal(None, 1.0)["met"].is_null());
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
    }
}
