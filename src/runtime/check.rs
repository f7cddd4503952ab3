//! `ocellus check`: every start-up phase that can run without starting anything, each problem reported
//! (a phase that depends on a failed one is skipped).

use super::build::{self, PromptSource};
use crate::budget::MemoryPlan;
use crate::config::Config;
use crate::infer;
use crate::prepare::Preparer;
use crate::source::SourceError;

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// What passed, one line each.
    pub ok: Vec<String>,
    /// What must be fixed, one line each (a non-empty list means exit code 2).
    pub problems: Vec<String>,
    /// The memory plan with the planned models, when they loaded.
    pub plan: Option<MemoryPlan>,
    /// The deadlines in force, as a `[budgets]` table to put in the config (derived ones marked).
    pub budgets: Option<String>,
}

/// The deadlines as a `[budgets]` table, each derived one marked as measured.
fn budgets_table(config: &Config, d: &crate::pipeline::Deadlines) -> String {
    use crate::stats::Stage;
    let b = &config.budgets;
    let mut out = format!("[budgets]\nmemory-mib = {}\n", b.memory_mib);
    for (key, stage, given) in [
        ("dequeue-ms", Stage::Dequeue, b.dequeue),
        ("prepare-ms", Stage::Prepare, b.prepare),
        ("encoder-ms", Stage::Encoder, b.encoder),
        ("resampler-ms", Stage::Resampler, b.resampler),
        ("publish-ms", Stage::Publish, b.publish),
        ("end-to-end-ms", Stage::EndToEnd, b.end_to_end),
    ] {
        let ms = d.stage_ns[stage.index()] as f64 / 1e6;
        let note = if given.is_some() {
            "from the config"
        } else {
            "derived from the times measured here"
        };
        out.push_str(&format!(
            "{key} = {:.1}   # {note}\n",
            (ms * 10.0).ceil() / 10.0
        ));
    }
    out
}

/// Runs the start-up phases of [`super::Runtime::build`] against `config` without starting anything:
/// the prompts, each camera (opened, started and stopped, which checks that it delivers the configured
/// format and size), the manifest and its files, the preparers, the models, the memory plan.
pub fn check(config: &Config) -> CheckReport {
    check_with(config, false)
}

/// [`check`], and with `measure` the model's times measured again (ignoring the measurements file) and the
/// deadlines they give printed as a `[budgets]` table ([`CheckReport::budgets`]).
pub fn check_with(config: &Config, measure: bool) -> CheckReport {
    let mut r = CheckReport::default();
    if let Err(e) = config.require_cameras() {
        r.problems.push(e.to_string());
    }
    if !config.prompts.defaulted {
        match config.prompts.current() {
            Ok(p) => r.ok.push(format!("{} prompts", p.len())),
            Err(e) => r.problems.push(build::prompt_error(config, e).message),
        }
    }
    for (i, cam) in config.cameras.iter().enumerate() {
        let probed = build::probe_camera(config, i)
            .map_err(|e| e.message)
            .and_then(|()| {
                check_source(i, cam).map_err(|e| {
                    format!("config {}: camera[{i}] ({}): {e}", config.origin, cam.name)
                })
            });
        match probed {
            Ok(()) => r.ok.push(format!(
                "camera[{i}] {}: {} {} {}x{} deliverable",
                cam.name,
                cam.kind(),
                cam.format,
                cam.width,
                cam.height
            )),
            Err(e) => r.problems.push(e),
        }
    }
    let manifest = match build::manifest(config) {
        Ok(m) => m,
        Err(e) => {
            r.problems.push(e.message);
            return r;
        }
    };
    let selected = match build::select_engine(config, &manifest) {
        Ok(s) => s,
        Err(e) => {
            r.problems.push(e.message);
            return r;
        }
    };
    r.ok.push(format!("CPU features tract uses: {}", selected.cpu));
    if selected.candidates.len() > 1 {
        let names: Vec<&str> = selected.candidates.iter().map(|v| v.name()).collect();
        r.ok.push(format!(
            "engine {}, variant auto: measures {} on this machine and keeps the fastest ({})",
            selected.settings.engine,
            names.join(" and "),
            selected.reason
        ));
    } else {
        r.ok.push(format!(
            "engine {}, variant {} ({})",
            selected.settings.engine, selected.settings.variant, selected.reason
        ));
    }
    r.ok.push(format!(
        "inference threads: {} ({})",
        config.model.threads,
        config.model.threads_origin.reason()
    ));
    check_recorder(config, &manifest, &mut r);
    if let Err(e) = build::estimate(config, &manifest, &selected, true) {
        r.problems.push(e.message);
        return r;
    }
    // Every file variant this start may run: auto's candidates, else the one chosen.
    let mut variants = vec![selected.settings.variant.file_variant()];
    for v in &selected.candidates {
        if !variants.contains(&v.file_variant()) {
            variants.push(v.file_variant());
        }
    }
    for &variant in &variants {
        if let Err(e) = infer::verify_for(&manifest, variant, selected.settings.engine) {
            r.problems.push(e.to_string());
            return r;
        }
    }
    let names: Vec<String> = variants.iter().map(|v| v.to_string()).collect();
    r.ok.push(format!(
        "model {} ({}) at {}: files, sha256 and shapes verified",
        manifest.name,
        names.join(", "),
        config.model.manifest.display()
    ));
    for (i, cam) in config.cameras.iter().enumerate() {
        if let Err(e) = Preparer::new(&manifest.preprocess, cam.format, cam.width, cam.height) {
            r.problems.push(format!(
                "config {}: camera[{i}] ({}): cannot prepare {} {}x{} frames for the model: {e}",
                config.origin, cam.name, cam.format, cam.width, cam.height
            ));
        }
    }
    let mut measured_region = 0;
    // What the engine kept (auto's choice, and the candidates it measured) decides the text encoder and the plan.
    let mut selected = selected;
    let engine = match build::engine(config, &manifest, selected.clone(), measure) {
        Ok((engine, chosen, timing)) => {
            measured_region = timing.region_bytes;
            r.ok.push("vision encoder and resampler load and plan".into());
            r.ok.push(format!(
                "runs {} ({}); encoder p50 {:.2} ms (max {:.2}), resampler p50 {:.2} ms (max {:.2}) on this machine",
                engine.info(),
                chosen.reason,
                timing.encoder.p50_ms,
                timing.encoder.max_ms,
                timing.resampler.p50_ms,
                timing.resampler.max_ms
            ));
            match build::deadlines(config, &manifest, &timing) {
                Ok(d) => r.budgets = Some(budgets_table(config, &d)),
                Err(e) => r.problems.push(e.message),
            }
            selected = chosen;
            Some(engine)
        }
        Err(e) => {
            r.problems.push(e.message);
            None
        }
    };
    match build::prompt_source(config, &manifest, &selected) {
        Ok(mut source) => {
            if let Some(engine) = &engine {
                match build::plan(
                    config,
                    &manifest,
                    &selected,
                    true,
                    engine.as_ref(),
                    &source,
                    measured_region,
                ) {
                    Ok(plan) => {
                        r.ok.push(format!(
                            "memory plan fits: {:.1} of {} MiB (budgets.memory-mib)",
                            plan.total_bytes() as f64 / (1 << 20) as f64,
                            config.budgets.memory_mib
                        ));
                        r.plan = Some(plan);
                    }
                    Err(e) => r.problems.push(e.message),
                }
            }
            match &mut source {
                PromptSource::Text(encoder) => {
                    if let Ok(labels) = config.prompts.current() {
                        for p in labels.iter().filter(|p| encoder.is_unknown_only(p)) {
                            r.ok.push(format!(
                                "warning: prompt '{p}': every word is outside the tokenizer's vocabulary (it scores as a prompt of unknown words); reword it"
                            ));
                        }
                        match encoder.embed(&labels) {
                            Ok(set) => r.ok.push(format!("{} prompts embedded", set.len())),
                            Err(e) => r.problems.push(e.to_string()),
                        }
                    }
                }
                PromptSource::Prototypes(set) => r.ok.push(format!(
                    "vision-only bundle: {} few-shot prototypes scored ({})",
                    set.len(),
                    set.labels().join(", ")
                )),
                PromptSource::Nothing => r.ok.push(
                    "vision-only bundle without prototypes: embeddings and latents are published with no scores"
                        .into(),
                ),
            }
        }
        Err(e) => r.problems.push(e.message),
    }
    r
}

/// The flight recorder: a whole window fits the disk quota, and its directory can be written.
fn check_recorder(config: &Config, manifest: &crate::manifest::Manifest, r: &mut CheckReport) {
    let rec = &config.recorder;
    if !rec.enabled {
        return;
    }
    if let Err(e) = build::check_recorder(config, manifest) {
        r.problems.push(e.message);
        return;
    }
    let probe = rec.dir.join(".ocellus-check");
    let writable = std::fs::create_dir_all(&rec.dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe));
    if let Err(e) = writable {
        r.problems.push(format!(
            "config {}: recorder.dir {}: cannot write there ({e}): create it writable by the service's user, or point recorder.dir elsewhere",
            config.origin,
            rec.dir.display()
        ));
        return;
    }
    let cameras = build::ring_cameras(config);
    let most =
        crate::recorder::max_recording_bytes(&cameras, &build::results_shape(config, manifest));
    let stages: Vec<&str> = rec.on_late.iter().map(|s| s.name()).collect();
    r.ok.push(format!(
        "flight recorder: {} frames per camera ({}), recordings of up to {:.1} MiB in {} (quota {} MiB); triggers: late {}{}, SIGUSR1, {}",
        cameras.iter().map(|c| c.slots.to_string()).collect::<Vec<_>>().join(" + "),
        config.cameras.first().map(|c| rec.window_detail(c.fps)).unwrap_or_default(),
        most as f64 / (1u64 << 20) as f64,
        rec.dir.display(),
        rec.quota_bytes >> 20,
        if stages.is_empty() { "(none)".to_owned() } else { stages.join(", ") },
        if rec.on_camera_fault { ", camera faults" } else { "" },
        rec.socket.display()
    ));
}

/// Opens and starts the camera's source (which checks that it can deliver the configured format and size),
/// then stops it.
fn check_source(index: usize, cam: &crate::source::CameraSettings) -> Result<(), SourceError> {
    let mut source = crate::source::open(index, cam)?;
    source.start()?;
    source.stop();
    Ok(())
}
