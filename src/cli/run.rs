//! `ocellus run`: the pipeline with a live status line and a summary at exit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ocellus::budget::{self, MemoryPlan};
use ocellus::config::Config;
use ocellus::infer::Engine;
use ocellus::manifest::{Manifest, Role};
use ocellus::notify::ServiceNotifier;
use ocellus::pipeline::{CameraSpec, Deadlines, Pipeline, PipelineError, PipelineSettings};
use ocellus::prompts::{PromptWatcher, TextEncoder, POLL_INTERVAL};
use ocellus::shm::{Dims, ShmSink, ShmSinkConfig, WriterConfig};
use ocellus::sink::{LogSink, Sink, StatusMode, StatusReporter};
use ocellus::stats::{Stage, Summary};

use super::{init_logging, load_config, Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML); without it, the built-in default: the synthetic camera and the bundled
    /// demo model (models/demo).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Stop after this many published frames (all cameras together).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Also write the summary as JSON to this file (machine-readable; `-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Seconds between status lines (0 turns the live status off).
    #[arg(long, default_value_t = 0.5)]
    pub status_interval: f64,
    /// Publish into this shared-memory segment instead of the config's `shm.name`.
    #[arg(long, value_name = "NAME", conflicts_with = "no_shm")]
    pub shm: Option<String>,
    /// Do not publish into shared memory.
    #[arg(long)]
    pub no_shm: bool,
}

/// The current prompt set and, when the prompts come from a file, the watcher that updates it.
pub(super) struct Prompts {
    current: Arc<ArcSwap<ocellus::prompts::PromptSet>>,
    _watcher: Option<PromptWatcher>,
    /// The text model's files and per-run tensors, for the memory budget.
    text_memory: (Vec<ocellus::infer::FileSize>, ocellus::infer::PlanMemory),
}

pub fn run(args: RunArgs, v: Verbosity) -> Result<(), Failure> {
    let config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(Failure::config(format!(
                "--duration {d}: give a positive number of seconds"
            )));
        }
    }
    if !(args.status_interval.is_finite() && args.status_interval >= 0.0) {
        return Err(Failure::config(
            "--status-interval: give a number of seconds >= 0",
        ));
    }

    let interrupt = interrupt_flag()?;
    // systemd's notify protocol when NOTIFY_SOCKET is set (docs/service.md).
    let mut service = ServiceNotifier::from_env();

    // `_prompts` keeps the prompt watcher (if any) running until the pipeline has stopped.
    let (mut pipeline, _prompts) = build(&config, &args)?;
    pipeline.start().map_err(|e| match e {
        PipelineError::Realtime(_) => Failure::config(format!("cannot start the pipeline: {e}")),
        e => Failure::runtime(format!("cannot start the pipeline: {e}")),
    })?;
    let started = Instant::now();
    service.ready(pipeline.stats(), started);
    let mut reporter = if args.status_interval > 0.0 {
        StatusReporter::spawn(
            Arc::clone(pipeline.stats()),
            Duration::from_secs_f64(args.status_interval),
            StatusMode::for_stderr(),
            std::io::stderr(),
        )
        .map_err(|e| tracing::warn!(error = %e, "no live status: cannot start its thread"))
        .ok()
    } else {
        None
    };

    let limit = args
        .duration
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::MAX);
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() || pipeline.wait(left.min(service.tick_interval()), &interrupt) {
            break;
        }
        if interrupt.load(Ordering::SeqCst) {
            tracing::info!("signal received; stopping");
            break;
        }
        service.tick(pipeline.stats(), Instant::now());
    }
    service.stopping();
    pipeline.stop();
    if let Some(r) = reporter.as_mut() {
        r.stop();
    }
    log_frame_path_memory();
    let summary = pipeline.stats().summary();
    print!("{summary}");
    if let Some(path) = &args.summary_json {
        write_json(path, &summary)?;
    }
    // A signal before the first frame (a service stopped during start-up) is not a failure.
    if summary.frames == 0 && !interrupt.load(Ordering::SeqCst) {
        return Err(Failure::runtime(format!(
            "no frame was processed in {:.1} s: see the log above for camera and model errors",
            summary.duration_s
        )));
    }
    Ok(())
}

/// A flag SIGINT and SIGTERM set; a second signal while stopping exits at once (exit code 1).
pub(super) fn interrupt_flag() -> Result<Arc<AtomicBool>, Failure> {
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&interrupt))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&interrupt)))
            .map_err(|e| Failure::runtime(format!("cannot install the signal handlers: {e}")))?;
    }
    Ok(interrupt)
}

/// Loads the model and prompts, opens the sources and allocates the pipeline (nothing runs yet); `ocellus
/// bench` builds its pipeline here too. The returned [`Prompts`] must outlive the pipeline's run.
pub(super) fn build(config: &Config, args: &RunArgs) -> Result<(Pipeline, Prompts), Failure> {
    let manifest = Manifest::load(&config.model.manifest).map_err(Failure::config)?;
    // Refuse a configuration that cannot fit before loading the models, then again with their plans.
    let with_shm = !args.no_shm;
    MemoryPlan::estimate(config, &manifest, with_shm)
        .check()
        .map_err(Failure::config)?;
    let engine = Engine::load(&manifest, config.model.variant, config.model.threads)
        .map_err(Failure::config)?;
    tracing::info!(
        model = %manifest.name,
        variant = %config.model.variant,
        threads = config.model.threads,
        "models loaded"
    );
    let prompts = load_prompts(config, &manifest)?;
    let (text_files, text_plan) = &prompts.text_memory;
    let plan = MemoryPlan::with_engine(
        config,
        &manifest,
        with_shm,
        engine.memory(),
        Some((text_files, *text_plan)),
    );
    plan.check().map_err(Failure::config)?;

    let mut cameras = Vec::with_capacity(config.cameras.len());
    for (index, cam) in config.cameras.iter().enumerate() {
        let source = ocellus::source::open(index, cam).map_err(|e| {
            Failure::config(format!("config {}: camera[{index}]: {e}", config.origin))
        })?;
        cameras.push(CameraSpec {
            name: cam.name.clone(),
            source,
            format: cam.format,
            width: cam.width,
            height: cam.height,
            pool_size: cam.pool_size,
        });
    }
    let b = &config.budgets;
    let settings = PipelineSettings {
        deadlines: Deadlines::default()
            .with(Stage::Dequeue, Some(b.capture))
            .with(Stage::Prepare, Some(b.prepare))
            .with(Stage::Encoder, Some(b.encoder))
            .with(Stage::Resampler, Some(b.resampler))
            .with(Stage::Publish, Some(b.publish))
            .with(Stage::EndToEnd, Some(b.end_to_end)),
        max_frames: args.frames,
        max_prompts: config.prompts.max,
        realtime: config.realtime.clone(),
        test_hooks: config.testing,
        ..PipelineSettings::default()
    };
    if config.testing.is_active() {
        tracing::warn!(testing = ?config.testing, "test aids from [testing] are on: frames are slowed or stalled on purpose");
    }
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(LogSink::new())];
    let dims = Dims {
        cameras: config.cameras.len(),
        embed_dim: engine.embed_dim(),
        num_latents: manifest.resampler.num_latents,
        latent_dim: manifest.resampler.latent_dim,
        max_prompts: config.prompts.max,
        latents_dtype: config.shm.latents,
    };
    let mut pipeline = Pipeline::new(
        settings,
        cameras,
        engine,
        &manifest.preprocess,
        Arc::clone(&prompts.current),
        sinks,
    )
    .map_err(Failure::config)?;
    if with_shm {
        let name = args.shm.as_deref().unwrap_or(&config.shm.name);
        let mut writer = WriterConfig::new(format!("/{}", name.trim_start_matches('/')), dims);
        writer.mode = config.shm.mode;
        writer.group = config.shm.group.clone();
        writer.model_id = format!("{}:{}", manifest.name, config.model.variant);
        writer.model_sha256 = manifest
            .file(Role::Vision, config.model.variant)
            .map(|f| f.sha256.clone())
            .unwrap_or_default();
        let sink = ShmSink::create(
            &ShmSinkConfig::new(writer),
            Some(Arc::clone(pipeline.stats())),
        )
        .map_err(|e| Failure::config(format!("{e} (or run with --no-shm)")))?;
        tracing::info!(segment = %sink.writer().name(), "publishing into shared memory");
        pipeline
            .add_sink(Box::new(sink))
            .map_err(|e| Failure::runtime(e.to_string()))?;
    }
    let taken = budget::take(&plan, &config.memory).map_err(Failure::config)?;
    tracing::info!(
        planned_mib = plan.total_bytes() / (1 << 20),
        budget_mib = config.budgets.memory_mib,
        region_kib = taken.arena_bytes / 1024,
        locked = taken.locked,
        "memory budget checked; frame-path region reserved"
    );
    Ok((pipeline, prompts))
}

/// Logs how much of the frame-path region the run used and whether the frame path ever fell back to
/// the system allocator.
fn log_frame_path_memory() {
    let a = ocellus::alloc::stats();
    tracing::info!(
        region_kib = a.region_bytes / 1024,
        high_water_kib = a.region_high_water / 1024,
        region_allocations = a.region_allocations(),
        system_allocations = a.system_allocations(),
        "frame-path memory"
    );
    if a.fallbacks > 0 {
        tracing::warn!(
            fallbacks = a.fallbacks,
            "the frame-path region was too small for some allocations: raise memory.arena-mib"
        );
    }
}

fn load_prompts(config: &Config, manifest: &Manifest) -> Result<Prompts, Failure> {
    let mut encoder = TextEncoder::load(manifest, config.model.variant).map_err(Failure::config)?;
    let text_memory = (encoder.files().to_vec(), encoder.memory());
    if let Some(file) = &config.prompts.file {
        if !config.prompts.labels.is_empty() {
            tracing::warn!(
                file = %file.display(),
                "prompts.labels and prompts.file are both set: the watched file alone is used"
            );
        }
        let watcher =
            PromptWatcher::start(encoder, file.clone(), POLL_INTERVAL).map_err(Failure::config)?;
        return Ok(Prompts {
            current: watcher.prompts(),
            _watcher: Some(watcher),
            text_memory,
        });
    }
    let labels = config
        .prompts
        .load(&config.origin)
        .map_err(Failure::config)?;
    let set = encoder.embed(&labels).map_err(Failure::config)?;
    tracing::info!(prompts = set.len(), "prompts embedded");
    Ok(Prompts {
        current: Arc::new(ArcSwap::from_pointee(set)),
        _watcher: None,
        text_memory,
    })
}

fn write_json(path: &std::path::Path, summary: &Summary) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(summary)
        .map_err(|e| Failure::runtime(format!("cannot encode the summary: {e}")))?;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, text + "\n").map_err(|e| {
        Failure::runtime(format!(
            "cannot write the summary to {}: {e}",
            path.display()
        ))
    })
}
