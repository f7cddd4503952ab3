//! The phases of start-up, shared by [`Runtime::build`] (which stops at the first error) and
//! [`super::check`] (which runs every phase it can and reports every problem).

use std::sync::Arc;

use arc_swap::ArcSwap;

use std::collections::BTreeMap;

use super::calibrate::{self, EngineTiming, Measured};
use super::memory::{self, ModelMemory};
use super::{BuildError, ModelInfo, Prompts, Runtime, RuntimeOptions, ShmTarget};
use crate::budget::MemoryPlan;
use crate::config::Config;
use crate::infer::select::{self, CpuFeatures};
use crate::infer::{EngineSettings, InferenceEngine, RunVariant};
use crate::manifest::{Manifest, ModelRole};
use crate::pipeline::{CameraSpec, Deadlines, Pipeline, PipelineSettings};
use crate::prompts::{
    load_prototypes, PromptError, PromptSet, PromptWatcher, TextEncoder, POLL_INTERVAL,
};
use crate::recorder::{
    max_recording_bytes, ModelIdentity, Recorder, RecorderSpec, ResultsShape, RingCamera,
};
use crate::shm::{Dims, WriterConfig};
use crate::sink::{LogSink, ShmSink, ShmSinkConfig, Sink};
use crate::source::{self, SourceSettings};
use crate::stats::Stage;

pub(super) fn build(config: &Config, options: RuntimeOptions) -> Result<Runtime, BuildError> {
    config.require_cameras().map_err(BuildError::config)?;
    if options.take_memory {
        crate::alloc::limit_system_arenas();
    }
    let manifest = manifest(config)?;
    for index in 0..config.cameras.len() {
        probe_camera(config, index)?;
    }
    let selected = select_engine(config, &manifest)?;
    tracing::info!(
        engine = %selected.settings.engine,
        variant = %selected.settings.variant,
        why = %selected.reason,
        cpu = %selected.cpu,
        threads = config.model.threads,
        threads_why = config.model.threads_origin.reason(),
        "inference variant chosen"
    );
    let with_shm = options.shm != ShmTarget::Off;
    check_recorder(config, &manifest)?;
    // Refuse a configuration that cannot fit before loading the models, then again with their plans.
    estimate(config, &manifest, &selected, with_shm)?;
    let (engine, selected, timing) = engine(config, &manifest, selected, options.remeasure)?;
    tracing::info!(
        model = %manifest.name,
        engine = %engine.info(),
        why = %selected.reason,
        encoder_p50_ms = timing.encoder.p50_ms,
        resampler_p50_ms = timing.resampler.p50_ms,
        "models loaded"
    );
    let deadlines = deadlines(config, &manifest, &timing)?;
    let source = prompt_source(config, &manifest, &selected)?;
    let plan = plan(
        config,
        &manifest,
        &selected,
        with_shm,
        engine.as_ref(),
        &source,
        timing.region_bytes,
    )?;
    let prompts = prompts(config, source, engine.embed_dim())?;

    let cameras = (0..config.cameras.len())
        .map(|index| open_camera(config, index))
        .collect::<Result<Vec<_>, _>>()?;
    if config.testing.is_active() {
        tracing::warn!(testing = ?config.testing, "test aids from [testing] are on: frames are slowed or stalled on purpose");
    }
    let model = ModelInfo {
        name: manifest.name.clone(),
        engine: selected.settings.engine,
        variant: selected.settings.variant,
        variant_reason: selected.reason.clone(),
        threads: selected.settings.threads,
        embed_dim: engine.embed_dim(),
        identity: model_identity(&manifest, &selected),
    };
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(LogSink::new())];
    let mut pipeline = Pipeline::new(
        settings(config, deadlines, options.max_frames, options.lossless),
        cameras,
        engine,
        &manifest.preprocess,
        Arc::clone(&prompts.current),
        sinks,
    )
    .map_err(BuildError::config)?;
    let segment = match shm_sink(config, &options.shm, &manifest, &selected, pipeline.stats())? {
        Some(sink) => {
            let name = sink.writer().name().to_owned();
            tracing::info!(segment = %name, "publishing into shared memory");
            pipeline
                .add_sink(Box::new(sink))
                .map_err(BuildError::runtime)?;
            Some(name)
        }
        None => None,
    };
    for make in options.extra_sinks {
        let sink = make(Arc::clone(pipeline.stats()));
        pipeline.add_sink(sink).map_err(BuildError::runtime)?;
    }
    let recorder = if config.recorder.is_on() {
        let spec = RecorderSpec {
            settings: config.recorder.clone(),
            cameras: ring_cameras(config),
            shape: results_shape(config, &manifest),
            model: model.identity.clone(),
        };
        let (recorder, tap) = Recorder::new(spec, Arc::clone(pipeline.stats()));
        pipeline.set_recorder(tap).map_err(BuildError::runtime)?;
        if let Some(out) = &config.recorder.capture {
            tracing::info!(out = %out.display(), "capturing every processed frame");
        } else {
            tracing::info!(dir = %config.recorder.dir.display(), socket = %config.recorder.socket.display(), "flight recorder on");
        }
        Some(recorder)
    } else {
        None
    };
    let taken = if options.take_memory {
        let taken = memory::take(&plan, &config.memory).map_err(BuildError::config)?;
        tracing::info!(
            planned_mib = plan.total_bytes() / (1 << 20),
            budget_mib = config.budgets.memory_mib,
            region_kib = taken.arena_bytes / 1024,
            locked = taken.locked,
            "memory budget checked; frame-path region reserved"
        );
        Some(taken)
    } else {
        None
    };
    Ok(Runtime {
        pipeline,
        prompts,
        plan,
        taken,
        model,
        segment,
        recorder,
    })
}

/// Phase 1: the bundle's manifest.
pub(super) fn manifest(config: &Config) -> Result<Manifest, BuildError> {
    Manifest::load(&config.model.manifest).map_err(BuildError::config)
}

/// Phase 2: what can be known of camera `index` without opening it: a replay's files exist and hold frames of
/// the configured format and size. Errors name the camera's key.
pub fn probe_camera(config: &Config, index: usize) -> Result<(), BuildError> {
    let cam = &config.cameras[index];
    let SourceSettings::Replay { path, .. } = &cam.source else {
        return Ok(());
    };
    let key = |k: &str| format!("config {}: camera[{index}].{k}", config.origin);
    let probe = source::replay::probe(path)
        .map_err(|e| BuildError::config(format!("{}: {e}", key("path"))))?;
    if !probe.formats.contains(&cam.format) {
        let can: Vec<&str> = probe.formats.iter().map(|f| f.name()).collect();
        return Err(BuildError::config(format!(
            "{}: replay {} cannot deliver {}: it holds {} (set pixel-format to one of {})",
            key("pixel-format"),
            path.display(),
            cam.format,
            probe.what,
            can.join(", ")
        )));
    }
    if let Some((w, h)) = probe.size {
        if (w, h) != (cam.width, cam.height) {
            return Err(BuildError::config(format!(
                "{}: replay {} holds {w}x{h} frames, not {}x{}: set width = {w}, height = {h}",
                key(if w != cam.width { "width" } else { "height" }),
                path.display(),
                cam.width,
                cam.height
            )));
        }
    }
    Ok(())
}

/// The engine and variant that will run, and why.
#[derive(Debug, Clone)]
pub struct Selected {
    pub settings: EngineSettings,
    /// Why this variant (`model.variant`, or what `auto` saw).
    pub reason: String,
    /// The CPU features tract uses (after `model.cpu-isa`).
    pub cpu: CpuFeatures,
    /// Variants `auto` measures before keeping the fastest (see [`super::calibrate`]).
    pub candidates: Vec<RunVariant>,
    /// The candidates this start loaded and timed (empty until the models are loaded, and when the
    /// measurements file remembered the choice): the memory plan counts their load-time peak.
    pub measured: Vec<RunVariant>,
}

/// Phase 2b: `model.cpu-isa` applied, the CPU's features read, `model.variant` resolved for the engine.
pub fn select_engine(config: &Config, manifest: &Manifest) -> Result<Selected, BuildError> {
    let m = &config.model;
    select::prepare_isa(m.cpu_isa.as_deref())
        .map_err(|e| BuildError::config(format!("config {}: model.cpu-isa: {e}", config.origin)))?;
    let cpu = CpuFeatures::native();
    let choice = select::choose(m.variant, manifest, m.engine, &cpu)
        .map_err(|e| BuildError::config(format!("config {}: model.variant: {e}", config.origin)))?;
    Ok(Selected {
        settings: EngineSettings {
            engine: m.engine,
            variant: choice.variant,
            threads: m.threads,
            onnxruntime: config.onnxruntime.clone(),
        },
        reason: choice.reason,
        cpu,
        candidates: choice.candidates,
        measured: Vec::new(),
    })
}

/// Phase 3: the plan from the configuration and the manifest alone, checked.
pub(super) fn estimate(
    config: &Config,
    manifest: &Manifest,
    selected: &Selected,
    with_shm: bool,
) -> Result<MemoryPlan, BuildError> {
    // With candidates to measure, each is loaded in turn: plan for the heaviest.
    let variant = std::iter::once(selected.settings.variant)
        .chain(selected.candidates.iter().copied())
        .map(|v| v.file_variant())
        .max_by_key(|&v| {
            [ModelRole::Vision, ModelRole::Resampler]
                .iter()
                .filter_map(|&r| manifest.file_for(r, v, selected.settings.engine))
                .map(|f| f.size)
                .sum::<u64>()
        })
        .unwrap_or(selected.settings.variant.file_variant());
    let calibrating: Vec<_> = selected
        .candidates
        .iter()
        .map(|v| v.file_variant())
        .collect();
    let plan = memory::plan(config, manifest, variant, with_shm, None, &calibrating);
    plan.check().map_err(BuildError::config)?;
    Ok(plan)
}

/// Phase 4: the vision encoder and resampler, verified, loaded and planned, with their times on this machine.
/// When `auto` left candidates to measure (see [`super::calibrate`]), each is loaded and timed and the fastest
/// kept, unless the measurements file remembers the answer (`remeasure` ignores it). The times come from
/// those runs or the file; a model not measured before is timed once and remembered.
pub(super) fn engine(
    config: &Config,
    manifest: &Manifest,
    mut selected: Selected,
    remeasure: bool,
) -> Result<(Box<dyn InferenceEngine>, Selected, EngineTiming), BuildError> {
    let s = &selected.settings;
    let candidates = if selected.candidates.len() > 1 {
        selected.candidates.clone()
    } else {
        vec![s.variant]
    };
    let key = calibrate::key(
        manifest,
        s.engine,
        s.threads,
        &selected.cpu.to_string(),
        &candidates,
    );
    let path = calibrate::measurements_path(config);
    let recalled = match (&path, remeasure) {
        (Some(p), false) => calibrate::recall(p, &key),
        _ => None,
    };
    let base = selected.settings.clone();
    let load = |variant: RunVariant| {
        let settings = EngineSettings {
            variant,
            ..base.clone()
        };
        crate::infer::load(manifest, &settings).map_err(BuildError::config)
    };
    let time = |engine: &mut Box<dyn InferenceEngine>| {
        calibrate::time_engine(engine.as_mut(), calibrate::ENGINE_RUNS)
            .map_err(|e| BuildError::config(format!("measuring the model: {e}")))
    };
    if let Some(m) = recalled
        .as_ref()
        .filter(|m| candidates.iter().any(|v| v.name() == m.variant.as_str()))
    {
        let variant = *candidates
            .iter()
            .find(|v| v.name() == m.variant.as_str())
            .unwrap_or(&selected.settings.variant);
        if candidates.len() > 1 {
            selected.reason = format!(
                "{}; measured here before: {}",
                selected.reason,
                summary(&m.p50_ms)
            );
        }
        selected.settings.variant = variant;
        let engine = load(variant)?;
        return Ok((engine, selected, m.timing));
    }
    // One engine alive at a time, so memory never holds two variants (the plan counts one): each candidate
    // is timed and dropped, and the fastest loaded again unless it was the last one timed.
    let mut best: Option<(RunVariant, EngineTiming)> = None;
    let mut last: Option<(Box<dyn InferenceEngine>, RunVariant)> = None;
    let mut p50 = BTreeMap::new();
    for &variant in &candidates {
        drop(last.take());
        let mut engine = match load(variant) {
            Ok(e) => e,
            // f16 is a candidate only if its outputs stay close enough to fp32 for this bundle.
            Err(e) if variant == RunVariant::F16 && candidates.len() > 1 => {
                tracing::warn!(error = %e, "f16 left out");
                continue;
            }
            Err(e) => return Err(e),
        };
        let timing = time(&mut engine)?;
        p50.insert(variant.to_string(), timing.p50_ms());
        selected.measured.push(variant);
        if best
            .as_ref()
            .is_none_or(|(_, b)| timing.p50_ms() < b.p50_ms())
        {
            best = Some((variant, timing));
        }
        last = Some((engine, variant));
    }
    let Some((variant, timing)) = best else {
        return Err(BuildError::config("no variant to load"));
    };
    let engine = match last {
        Some((engine, v)) if v == variant => engine,
        other => {
            drop(other);
            load(variant)?
        }
    };
    if candidates.len() > 1 {
        selected.reason = format!("{}; measured here: {}", selected.reason, summary(&p50));
    }
    selected.settings.variant = variant;
    if let Some(path) = &path {
        let m = Measured {
            key,
            model: manifest.name.clone(),
            variant: variant.to_string(),
            p50_ms: p50,
            timing,
        };
        match calibrate::remember(path, m) {
            Ok(()) => tracing::debug!(file = %path.display(), "model times remembered"),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remember the model's measured times; they will be measured again at the next start (set model.measurements to a writable file)")
            }
        }
    }
    Ok((engine, selected, timing))
}

/// "fp32 3.1 ms, int8 12.4 ms": the candidates' medians, fastest first.
fn summary(p50: &BTreeMap<String, f64>) -> String {
    let mut v: Vec<(&String, &f64)> = p50.iter().collect();
    v.sort_by(|a, b| a.1.total_cmp(b.1));
    v.iter()
        .map(|(k, ms)| format!("{k} {ms:.2} ms"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Phase 4b: the deadlines (those `[budgets]` leaves out derived from the measured times, see
/// [`super::calibrate`]), with the preparer timed on each camera's frames.
pub(super) fn deadlines(
    config: &Config,
    manifest: &Manifest,
    timing: &EngineTiming,
) -> Result<Deadlines, BuildError> {
    let prepare = config
        .cameras
        .iter()
        .enumerate()
        .map(|(i, cam)| {
            calibrate::time_preparer(manifest, cam, calibrate::PREPARE_RUNS).map_err(|e| {
                BuildError::config(format!(
                    "config {}: camera[{i}] ({}): cannot prepare its frames for the model: {e}",
                    config.origin, cam.name
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (d, derived) = calibrate::deadlines(config, &prepare, timing);
    let ms = |s: Stage| d.stage_ns[s.index()] as f64 / 1e6;
    if derived.iter().any(|&x| x) {
        tracing::info!(
            dequeue_ms = ms(Stage::Dequeue),
            prepare_ms = ms(Stage::Prepare),
            encoder_ms = ms(Stage::Encoder),
            resampler_ms = ms(Stage::Resampler),
            publish_ms = ms(Stage::Publish),
            end_to_end_ms = ms(Stage::EndToEnd),
            "deadlines ([budgets] left out derived from the model's times measured here)"
        );
    }
    Ok(d)
}

/// What frames are scored against: prompts through the bundle's text encoder, the bundle's few-shot
/// prototypes (a vision-only bundle), or nothing (a vision-only bundle without prototypes: embeddings and
/// latents are published with no scores).
pub enum PromptSource {
    Text(Box<TextEncoder>),
    Prototypes(PromptSet),
    Nothing,
}

/// Phase 5a: the prompt source. With a text encoder, the chosen variant's text file (else the fp32 one) and
/// the tokenizer. Without one, prompts named in the config are an error (they cannot be embedded).
pub fn prompt_source(
    config: &Config,
    manifest: &Manifest,
    selected: &Selected,
) -> Result<PromptSource, BuildError> {
    if manifest.text.is_some() {
        let wanted = selected.settings.variant.file_variant();
        let variant = if manifest.file(ModelRole::Text, wanted).is_some() {
            wanted
        } else {
            crate::manifest::Variant::Fp32
        };
        return TextEncoder::load(manifest, variant)
            .map(|e| PromptSource::Text(Box::new(e)))
            .map_err(BuildError::config);
    }
    if !config.prompts.defaulted {
        let key = if config.prompts.file.is_some() {
            "prompts.file"
        } else {
            "prompts.labels"
        };
        return Err(BuildError::config(format!(
            "config {}: {key}: the model bundle {} is vision-only (no text encoder), so text prompts cannot be embedded: remove the prompts from [prompts]{}",
            config.origin,
            manifest.name,
            if manifest.prototypes.is_some() {
                " (its few-shot prototypes are scored instead)"
            } else {
                ", or add few-shot prototypes to the bundle (`ocellus-tools prototypes`)"
            }
        )));
    }
    match load_prototypes(manifest).map_err(BuildError::config)? {
        Some(set) => {
            if set.len() > config.prompts.max {
                return Err(BuildError::config(format!(
                    "config {}: prompts.max: the bundle has {} prototypes but prompts.max = {}: raise it",
                    config.origin,
                    set.len(),
                    config.prompts.max
                )));
            }
            Ok(PromptSource::Prototypes(set))
        }
        None => Ok(PromptSource::Nothing),
    }
}

/// A prompt error as a configuration error naming its key.
pub(super) fn prompt_error(config: &Config, e: PromptError) -> BuildError {
    match e {
        PromptError::Rule { key, message } => {
            BuildError::config(format!("config {}: {key}: {message}", config.origin))
        }
        e @ (PromptError::Read { .. } | PromptError::Empty { .. }) => {
            BuildError::config(format!("config {}: prompts.file: {e}", config.origin))
        }
        e => BuildError::config(e),
    }
}

/// Phase 5b: the prompt set: with a text encoder, the labels then the file's prompts, checked and embedded
/// (with a file, the watcher that re-embeds it when it changes); else the prototypes, or an empty set.
pub(super) fn prompts(
    config: &Config,
    source: PromptSource,
    embed_dim: usize,
) -> Result<Prompts, BuildError> {
    let mut encoder = match source {
        PromptSource::Text(encoder) => *encoder,
        PromptSource::Prototypes(set) => {
            tracing::info!(
                prototypes = set.len(),
                labels = ?set.labels(),
                "vision-only bundle: scoring its few-shot image prototypes (not language)"
            );
            return Ok(Prompts {
                current: Arc::new(ArcSwap::from_pointee(set)),
                watcher: None,
            });
        }
        PromptSource::Nothing => {
            tracing::info!(
                "vision-only bundle without prototypes: publishing embeddings and latents with no scores (num_scores = 0)"
            );
            return Ok(Prompts {
                current: Arc::new(ArcSwap::from_pointee(PromptSet::empty(embed_dim))),
                watcher: None,
            });
        }
    };
    if config.prompts.file.is_some() {
        let watcher = PromptWatcher::start(encoder, config.prompts.clone(), POLL_INTERVAL)
            .map_err(|e| prompt_error(config, e))?;
        return Ok(Prompts {
            current: watcher.prompts(),
            watcher: Some(watcher),
        });
    }
    let labels = config
        .prompts
        .current()
        .map_err(|e| prompt_error(config, e))?;
    let set = encoder.embed(&labels).map_err(BuildError::config)?;
    tracing::info!(prompts = set.len(), "prompts embedded");
    Ok(Prompts {
        current: Arc::new(ArcSwap::from_pointee(set)),
        watcher: None,
    })
}

/// Phase 6: the plan with the planned models' figures, checked.
pub(super) fn plan(
    config: &Config,
    manifest: &Manifest,
    selected: &Selected,
    with_shm: bool,
    engine: &dyn InferenceEngine,
    source: &PromptSource,
    measured_region: u64,
) -> Result<MemoryPlan, BuildError> {
    let (text_files, text_run) = match source {
        PromptSource::Text(encoder) => (encoder.files(), encoder.memory()),
        _ => (&[][..], Default::default()),
    };
    let models = ModelMemory {
        engine: engine.memory(),
        text_files,
        text_run,
        measured_region,
    };
    let plan = memory::plan(
        config,
        manifest,
        selected.settings.variant.file_variant(),
        with_shm,
        Some(&models),
        &selected
            .measured
            .iter()
            .map(|v| v.file_variant())
            .collect::<Vec<_>>(),
    );
    plan.check().map_err(BuildError::config)?;
    Ok(plan)
}

/// Phase 7a: camera `index`'s source, made (not started).
pub(super) fn open_camera(config: &Config, index: usize) -> Result<CameraSpec, BuildError> {
    let cam = &config.cameras[index];
    let source = source::open(index, cam).map_err(|e| {
        BuildError::config(format!("config {}: camera[{index}]: {e}", config.origin))
    })?;
    Ok(CameraSpec {
        name: cam.name.clone(),
        source,
        format: cam.format,
        width: cam.width,
        height: cam.height,
        pool_size: cam.pool_size,
    })
}

/// The pipeline's settings from the configuration and the deadlines.
pub(super) fn settings(
    config: &Config,
    deadlines: Deadlines,
    max_frames: Option<u64>,
    lossless: bool,
) -> PipelineSettings {
    PipelineSettings {
        deadlines,
        max_frames,
        lossless,
        max_prompts: config.prompts.max,
        realtime: config.realtime.clone(),
        test_hooks: config.testing,
        ground_truth: Some(crate::scene::class_prompt),
        ..PipelineSettings::default()
    }
}

/// Each camera as the recorder sees it, with its ring's slots.
pub(crate) fn ring_cameras(config: &Config) -> Vec<RingCamera> {
    config
        .cameras
        .iter()
        .map(|c| RingCamera {
            name: c.name.clone(),
            source: c.kind().name().into(),
            format: c.format,
            width: c.width,
            height: c.height,
            fps: c.fps,
            slots: config.recorder.slots(c.fps),
        })
        .collect()
}

/// The result arrays a recording holds for this configuration and bundle.
pub(crate) fn results_shape(config: &Config, manifest: &Manifest) -> ResultsShape {
    ResultsShape {
        embed_dim: manifest.embed_dim,
        num_latents: manifest.resampler.num_latents,
        latent_dim: manifest.resampler.latent_dim,
        max_scores: config.prompts.max,
    }
}

/// What a recording says about the model that ran.
pub(crate) fn model_identity(manifest: &Manifest, selected: &Selected) -> ModelIdentity {
    let s = &selected.settings;
    let sha = |role| {
        manifest
            .file_for(role, s.variant.file_variant(), s.engine)
            .map(|f| f.sha256.clone())
            .unwrap_or_default()
    };
    ModelIdentity {
        name: manifest.name.clone(),
        engine: s.engine.to_string(),
        variant: s.variant.to_string(),
        threads: s.threads,
        cpu: selected.cpu.to_string(),
        vision_sha256: sha(ModelRole::Vision),
        resampler_sha256: sha(ModelRole::Resampler),
    }
}

/// Phase 3a: a flight recording of full rings fits `recorder.quota-mib` (else every recording would fail).
pub(crate) fn check_recorder(config: &Config, manifest: &Manifest) -> Result<(), BuildError> {
    let r = &config.recorder;
    if !r.enabled || r.capture.is_some() {
        return Ok(());
    }
    let need = max_recording_bytes(&ring_cameras(config), &results_shape(config, manifest));
    if need > r.quota_bytes {
        return Err(BuildError::config(format!(
            "config {}: recorder.quota-mib: one recording of the whole window takes up to {:.1} MiB on disk, more than the quota of {} MiB: raise recorder.quota-mib to at least {}, or lower recorder.seconds / recorder.frames",
            config.origin,
            need as f64 / (1u64 << 20) as f64,
            r.quota_bytes >> 20,
            need.div_ceil(1 << 20)
        )));
    }
    Ok(())
}

/// The shared-memory segment's dimensions for this configuration and bundle.
pub(super) fn shm_dims(config: &Config, manifest: &Manifest) -> Dims {
    Dims {
        cameras: config.cameras.len(),
        embed_dim: manifest.embed_dim,
        num_latents: manifest.resampler.num_latents,
        latent_dim: manifest.resampler.latent_dim,
        max_prompts: config.prompts.max,
        latents_dtype: config.shm.latents,
    }
}

/// Phase 7c: the shared-memory sink, unless publishing is off.
fn shm_sink(
    config: &Config,
    target: &ShmTarget,
    manifest: &Manifest,
    selected: &Selected,
    stats: &Arc<crate::stats::Stats>,
) -> Result<Option<ShmSink>, BuildError> {
    let name = match target {
        ShmTarget::Off => return Ok(None),
        ShmTarget::Config => config.shm.name.clone(),
        ShmTarget::Named(n) => n.clone(),
    };
    let posix =
        crate::shm::segment_name(&name).map_err(|m| BuildError::config(format!("--shm: {m}")))?;
    let mut writer = WriterConfig::new(posix, shm_dims(config, manifest));
    writer.mode = config.shm.mode;
    writer.group = config.shm.group.clone();
    let variant = selected.settings.variant;
    writer.model_id = format!("{}:{variant}", manifest.name);
    writer.model_sha256 = manifest
        .file_for(
            ModelRole::Vision,
            variant.file_variant(),
            selected.settings.engine,
        )
        .map(|f| f.sha256.clone())
        .unwrap_or_default();
    ShmSink::create(&ShmSinkConfig::new(writer), Some(Arc::clone(stats)))
        .map(Some)
        .map_err(|e| BuildError::config(format!("{e} (or run with --no-shm)")))
}
