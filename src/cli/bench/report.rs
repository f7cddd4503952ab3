//! The report: JSON, text and the plot.

use ocellus::config::Config;
use ocellus::manifest::Manifest;
use ocellus::stats::{HistogramSnapshot, Stage};
use ocellus::thread::ThreadRole;
use serde_json::{json, Map, Value};

use super::engines::EngineTimes;
use super::svg;
use super::window::Window;
use super::EngineRun;
use super::{BenchArgs, GOAL_E2E_OVER_STAGE_SUM, GOAL_INFER_OVER_ORT, GOAL_P99_OVER_P50};

pub(super) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The window's largest value: the top of its highest bucket, or the run's maximum if that is lower (a
/// difference of snapshots keeps the whole run's maximum, warm-up included).
pub(super) fn window_max_ns(s: &HistogramSnapshot) -> u64 {
    s.buckets().last().map_or(0, |(_, hi, _)| hi.min(s.max_ns))
}

/// Every value of a short measurement (capture alone, the engines alone), sorted, for exact percentiles.
#[derive(Debug, Clone, Default)]
pub(super) struct Samples(Vec<u64>);

impl Samples {
    pub(super) fn new(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        Samples(values)
    }
}

/// A latency distribution: the pipeline's histograms (percentiles within 6.25 %, reported as the upper
/// edge of their bucket) or exact samples.
pub(super) trait Distribution {
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

pub(super) fn figures(d: &impl Distribution) -> Value {
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

pub(super) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

pub(super) fn goal(value: Option<f64>, limit: f64) -> Value {
    json!({ "value": value, "limit": limit, "met": value.map(|v| v <= limit) })
}

pub(super) struct Report<'a> {
    pub(super) config: &'a Config,
    pub(super) manifest: &'a Manifest,
    pub(super) args: &'a BenchArgs,
    pub(super) fps_configured: &'a [u32],
    pub(super) capture: &'a [Samples],
    /// One pipeline run per engine; the first is the one the top-level fields describe.
    pub(super) runs: &'a [EngineRun],
    /// Whether the malloc counters see shared libraries' allocations (`crate::malloc_count::active`).
    pub(super) malloc_counted: bool,
    pub(super) ort: &'a Result<Value, String>,
    pub(super) load: [Option<[f64; 3]>; 2],
}

/// The variant with the lowest encoder + resampler median.
fn best(times: &[EngineTimes]) -> &EngineTimes {
    times
        .iter()
        .min_by(|a, b| a.total_ms().total_cmp(&b.total_ms()))
        .expect("time_engine returns at least one variant")
}

/// ort-bench's figure for the files `t` ran, when it timed the same files (the same file names): (encoder
/// ms, resampler ms, ort-bench's variant name).
fn ort_same_files(ort: &Value, t: &EngineTimes) -> Option<(f64, f64, String)> {
    let name = |i: usize| -> Option<String> {
        Some(t.files.get(i)?.file_name()?.to_string_lossy().into_owned())
    };
    let find = |model: &str, file: &str| -> Option<(f64, String)> {
        let variants = ort["models"][model]["variants"].as_object()?;
        variants.iter().find_map(|(k, v)| {
            (v["file"].as_str() == Some(file))
                .then(|| v["median_ms"].as_f64().map(|ms| (ms, k.clone())))
                .flatten()
        })
    };
    let (enc, enc_variant) = find("encoder", &name(0)?)?;
    let (res, res_variant) = find("resampler", &name(1)?)?;
    let variant = if enc_variant == res_variant {
        enc_variant
    } else {
        format!("{enc_variant}+{res_variant}")
    };
    Some((enc, res, variant))
}

/// The heap activity of a window: malloc-family calls per frame (the inference thread's and the process's)
/// and the growth of glibc's heap in use.
fn heap(w: &Window, counted: bool) -> Value {
    let frames = w.frames();
    let per_frame = |n: u64| (frames > 0 && counted).then(|| n as f64 / frames as f64);
    let thread = w.end.malloc_thread.since(&w.start.malloc_thread);
    let process = w.end.malloc_process.since(&w.start.malloc_process);
    let growth = w
        .start
        .heap_in_use
        .zip(w.end.heap_in_use)
        .map(|(a, b)| b as i64 - a as i64);
    json!({
        "method": "malloc, calloc, realloc, memalign, aligned_alloc, posix_memalign, valloc and pvalloc interposed by the ocellus executable (src/malloc_count.rs): calls and requested bytes, frees not counted; plus mallinfo2's heap in use",
        "counted": counted,
        "inference_thread_calls_per_frame": per_frame(thread.calls),
        "inference_thread_bytes_per_frame": per_frame(thread.bytes),
        "process_calls_per_frame": per_frame(process.calls),
        "process_bytes_per_frame": per_frame(process.bytes),
        "heap_in_use_growth_bytes": growth,
    })
}

/// Per-stage p50 and p99 of a window, its stage sum and end-to-end ratio.
fn stage_figures(w: &Window, capture_p50: f64) -> (Value, f64) {
    let mut stages = Map::new();
    for stage in Stage::ALL {
        let d = w.stage(stage);
        stages.insert(
            stage.name().into(),
            json!({ "p50_ms": ms(d.percentile(0.5)), "p99_ms": ms(d.percentile(0.99)) }),
        );
    }
    let p50 = |s: Stage| ms(w.stage(s).percentile(0.5));
    let sum = capture_p50
        + p50(Stage::Prepare)
        + p50(Stage::Encoder)
        + p50(Stage::Resampler)
        + p50(Stage::Score)
        + p50(Stage::Publish);
    (Value::Object(stages), sum)
}

impl Report<'_> {
    pub(super) fn best_tract(&self) -> &EngineTimes {
        best(&self.runs[0].times)
    }

    /// One entry of `engines`: what one engine's pipeline run and its variants alone measured.
    fn engine_json(&self, run: &EngineRun, capture_p50: f64, ort: &Value) -> Value {
        let w = &run.window;
        let (stages, stage_sum) = stage_figures(w, capture_p50);
        let e2e = w.stage(Stage::EndToEnd);
        let e2e_p50 = ms(e2e.percentile(0.5));
        let best = best(&run.times);
        let ran = run.times.iter().find(|t| t.variant == run.ran.variant);
        let same = ran.and_then(|t| ort_same_files(ort, t));
        let ort_best = ort["total_best_ms"].as_f64();
        let seconds = w.seconds();
        let a = w.end.alloc.since(&w.start.alloc);
        let allocations_per_frame = (a.installed && w.frames() > 0)
            .then(|| (a.system_allocations() + a.region_allocations()) as f64 / w.frames() as f64);
        let mut entry = json!({
            "engine": run.ran.engine.to_string(),
            "variant": run.ran.variant.to_string(),
            "variant_reason": run.ran.reason,
            "frames": w.frames(),
            "throughput_fps": if seconds > 0.0 { w.frames() as f64 / seconds } else { 0.0 },
            "end_to_end": { "p50_ms": e2e_p50, "p99_ms": ms(e2e.percentile(0.99)) },
            "stages": stages,
            "stage_sum_p50_ms": stage_sum,
            "end_to_end_p50_over_stage_sum": ratio(e2e_p50, stage_sum),
            "allocations_per_frame": allocations_per_frame,
            "peak_rss_mib": run.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
            "inference": {
                "run_variant": run.ran.variant.to_string(),
                "run_variant_ms": ran.map(|t| t.total_ms()),
                "run_variant_encoder_ms": ran.map(|t| t.encoder_ms()),
                "run_variant_resampler_ms": ran.map(|t| t.resampler_ms()),
                "best_variant": best.variant.to_string(),
                "best_variant_ms": best.total_ms(),
                "ort_same_files_variant": same.as_ref().map(|s| s.2.clone()),
                "ort_same_files_ms": same.as_ref().map(|s| s.0 + s.1),
                "ort_same_files_encoder_ms": same.as_ref().map(|s| s.0),
                "ort_same_files_resampler_ms": same.as_ref().map(|s| s.1),
                "run_variant_over_ort_same_files": ran.zip(same.as_ref()).and_then(|(t, s)| ratio(t.total_ms(), s.0 + s.1)),
                "best_variant_over_ort_best": ort_best.and_then(|o| ratio(best.total_ms(), o)),
            },
        });
        // Apart: one json! of every field exceeds the macro's recursion limit.
        if let Value::Object(m) = &mut entry {
            m.insert("heap".into(), heap(w, self.malloc_counted));
            m.insert(
                "end_to_end_p99_over_p50".into(),
                json!(ratio(ms(e2e.percentile(0.99)), e2e_p50)),
            );
        }
        entry
    }

    pub(super) fn json(&self) -> Value {
        let w = &self.runs[0].window;
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
        let first = &self.runs[0];
        let variants: Map<String, Value> = first
            .times
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
        let run_total = first
            .times
            .iter()
            .find(|t| t.variant == first.ran.variant)
            .map(EngineTimes::total_ms);
        let engines: Vec<Value> = self
            .runs
            .iter()
            .map(|r| self.engine_json(r, capture_mean_p50, &ort_report))
            .collect();
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
            let roles: Map<String, Value> = ThreadRole::ALL
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

        let mut report = json!({
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
            "peak_rss_bytes": first.peak_rss,
            "peak_rss_mib": first.peak_rss.map(|b| b as f64 / (1024.0 * 1024.0)),
            "heap": heap(w, self.malloc_counted),
            "histogram": { "stage": "end_to_end", "buckets": histogram },
            "inference": {
                "runs": self.args.infer_runs,
                "threads": self.config.model.threads,
                "ocellus": { "engine": best.engine.to_string(), "variants": variants, "best": best.variant.to_string() },
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
        });
        // Added separately: one json! of every field exceeds the macro's recursion limit.
        let more = json!({
            "engine": first.ran.engine.to_string(),
            "cpu_features": ocellus::infer::select::CpuFeatures::native().to_string(),
            "heap": heap(w, self.malloc_counted),
            "engines": engines,
            "ocellus_infer_variant": best.variant.to_string(),
            "ocellus_run_variant": first.ran.variant.to_string(),
            "ocellus_run_infer_ms": run_total,
            "ratio_run_vs_ort": run_total.zip(ort_total).and_then(|(a, b)| ratio(a, b)),
        });
        if let (Some(all), Value::Object(more)) = (report.as_object_mut(), more) {
            all.extend(more);
        }
        report
    }

    /// The human-readable summary printed beside the JSON file.
    pub(super) fn text(&self, j: &Value) -> String {
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
        let _ = writeln!(
            s,
            "the pipeline ran {} {}: inference alone {} ms (the best variant, {}, {} ms); CPU: {}",
            j["engine"].as_str().unwrap_or("?"),
            j["ocellus_run_variant"].as_str().unwrap_or("?"),
            f(&j["ocellus_run_infer_ms"]),
            j["ocellus_infer_variant"].as_str().unwrap_or("?"),
            f(&j["ocellus_infer_ms"]),
            j["cpu_features"].as_str().unwrap_or("?"),
        );
        for e in j["engines"].as_array().into_iter().flatten() {
            let st = |name: &str| {
                format!(
                    "{} {}/{}",
                    name,
                    f(&e["stages"][name]["p50_ms"]),
                    f(&e["stages"][name]["p99_ms"])
                )
            };
            let _ = writeln!(
                s,
                "engine {} {}: {:.1} fps; p50/p99 ms: {}, {}, {}, {}; end to end {}/{} (p99/p50 x{}; stage sum {}, x{}); \
                 malloc calls per frame: inference thread {}, process {}; alone {} ms vs onnxruntime {} ms on the \
                 same files ({}): x{}",
                e["engine"].as_str().unwrap_or("?"),
                e["variant"].as_str().unwrap_or("?"),
                e["throughput_fps"].as_f64().unwrap_or(0.0),
                st("prepare"),
                st("encoder"),
                st("resampler"),
                st("publish"),
                f(&e["end_to_end"]["p50_ms"]),
                f(&e["end_to_end"]["p99_ms"]),
                f(&e["end_to_end_p99_over_p50"]),
                f(&e["stage_sum_p50_ms"]),
                f(&e["end_to_end_p50_over_stage_sum"]),
                e["heap"]["inference_thread_calls_per_frame"]
                    .as_f64()
                    .map_or("- (not counted)".into(), |m| format!("{m:.1}")),
                e["heap"]["process_calls_per_frame"]
                    .as_f64()
                    .map_or("-".into(), |m| format!("{m:.1}")),
                f(&e["inference"]["run_variant_ms"]),
                f(&e["inference"]["ort_same_files_ms"]),
                e["inference"]["ort_same_files_variant"]
                    .as_str()
                    .unwrap_or("not timed by ort-bench"),
                f(&e["inference"]["run_variant_over_ort_same_files"]),
            );
        }
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

    pub(super) fn svg(&self) -> String {
        let w = &self.runs[0].window;
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
    use super::super::window::Mark;
    use super::*;
    use ocellus::stats::Stats;

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
