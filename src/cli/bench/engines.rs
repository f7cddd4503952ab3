//! Third and fourth measurements: the engine alone, and onnxruntime through the tools' Python.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ocellus::config::Config;
use ocellus::infer::{EngineSettings, RunVariant};
use ocellus::manifest::{EngineKind, Manifest, ModelRole, Variant};
use serde_json::Value;

use super::report::{ms, Distribution, Samples};
use super::{BenchArgs, ENGINE_WARMUP};
use crate::cli::Failure;

/// Medians of one variant run by itself.
pub(super) struct EngineTimes {
    pub(super) engine: EngineKind,
    pub(super) variant: RunVariant,
    /// The vision and resampler files it ran.
    pub(super) files: Vec<PathBuf>,
    pub(super) encoder: Samples,
    pub(super) resampler: Samples,
}

impl EngineTimes {
    pub(super) fn encoder_ms(&self) -> f64 {
        ms(self.encoder.pct(0.5))
    }
    pub(super) fn resampler_ms(&self) -> f64 {
        ms(self.resampler.pct(0.5))
    }
    pub(super) fn total_ms(&self) -> f64 {
        self.encoder_ms() + self.resampler_ms()
    }
}

/// Every variant of the bundle that `engine` runs, `runs` timed runs each after a warm-up, on one fixed input.
pub(super) fn time_engine(
    manifest: &Manifest,
    config: &Config,
    engine: EngineKind,
    runs: usize,
) -> Result<Vec<EngineTimes>, Failure> {
    let threads = config.model.threads;
    let mut out = Vec::new();
    for file_variant in [Variant::Fp32, Variant::Int8] {
        if manifest
            .file_for(ModelRole::Vision, file_variant, engine)
            .is_none()
        {
            continue;
        }
        let variant = RunVariant::from(file_variant);
        let settings = EngineSettings {
            onnxruntime: config.onnxruntime.clone(),
            ..EngineSettings::new(engine, variant, threads)
        };
        let mut engine = ocellus::infer::load(manifest, &settings).map_err(Failure::config)?;
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
            engine: settings.engine,
            variant,
            files: engine.info().files.clone(),
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

pub(super) fn default_python() -> PathBuf {
    let venv = std::env::var_os("HOME")
        .map(PathBuf::from)
        .map(|h| h.join(".cache/ocellus/venv/bin/python"));
    venv.filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

pub(super) fn default_tools() -> Option<PathBuf> {
    [
        PathBuf::from("tools"),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tools")),
    ]
    .into_iter()
    .find(|d| d.join("ocellus_tools/cli.py").is_file())
    .and_then(|d| d.canonicalize().ok())
}

/// Runs `ocellus-tools ort-bench` and returns its report, or why there is none.
pub(super) fn run_ort(args: &BenchArgs, config: &Config, runs: usize) -> Result<Value, String> {
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
