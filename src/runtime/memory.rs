//! The memory plan of a configuration, assembled from what each component reports about itself, and
//! taking the memory at start-up (the frame-path region and the memory lock).

use crate::budget::{
    each_detail, human, parts, sum_detail, MemoryPlan, Part, CODE_BYTES_UNKNOWN, MIB,
    STARTUP_HEAP_BYTES, THREAD_STACK_BYTES,
};
use crate::config::Config;
use crate::infer::{EngineMemory, FileSize, PlanMemory, ARENA_SLACK_BYTES, ARENA_TENSOR_PERCENT};
use crate::manifest::{EngineKind, Manifest, ModelRole, Variant};
use crate::prepare::Preparer;
use crate::shm::Layout;

/// The planned models' figures.
#[derive(Debug, Clone, Copy)]
pub struct ModelMemory<'a> {
    pub engine: &'a EngineMemory,
    pub text_files: &'a [FileSize],
    pub text_run: PlanMemory,
    /// What the frame-path region carved serving the engine's calibration runs (`alloc::trace`); 0: not
    /// measured (the region is then sized from the planned tensors, an overestimate).
    pub measured_region: u64,
}

/// Headroom on a measured region, besides a sixteenth for alignment padding between blocks: the small
/// allocations of the rest of the frame path. (Measured: the demo and the tiny HF bundle, fp32 and int8, 1
/// and 2 threads, need 1.09-1.39x less than the region this sizes; docs/memory.md.)
pub const MEASURED_REGION_SLACK: u64 = 16 * 1024;

/// What the capture threads allocate per frame, served by the region: the synthetic camera's MJPEG
/// encoder (its compressed output and scratch; measured at 26 KiB for 640x480, this allows a quarter byte
/// per pixel and 64 KiB).
fn capture_region_bytes(config: &Config) -> u64 {
    config
        .cameras
        .iter()
        .filter(|c| {
            c.format == crate::frame::PixelFormat::Mjpeg
                && matches!(c.source, crate::source::SourceSettings::Synthetic { .. })
        })
        .map(|c| c.width as u64 * c.height as u64 / 4 + 64 * 1024)
        .sum()
}

/// The plan of `config` with `manifest`'s models of file `variant`: from the manifest alone (`models` = `None`, before any
/// model is loaded: weights from the files' sizes, the engine's working memory unknown unless
/// `memory.arena-mib` fixes it), or with the planned models' figures. `calibrating`: the variants `auto`
/// loads and times at start-up before keeping `variant` (empty when it remembers its choice).
pub fn plan(
    config: &Config,
    manifest: &Manifest,
    variant: Variant,
    with_shm: bool,
    models: Option<&ModelMemory<'_>>,
    calibrating: &[Variant],
) -> MemoryPlan {
    let mut plan = MemoryPlan::new(config.budgets.memory_mib * MIB, models.is_some());
    let pre = &manifest.preprocess;

    let pools: Vec<(u64, u64)> = config
        .cameras
        .iter()
        .map(|c| (c.pool_size as u64, c.max_frame_bytes() as u64))
        .collect();
    plan.push(Part {
        name: parts::FRAME_POOLS,
        detail: sum_detail(&pools),
        bytes: pools.iter().map(|(n, b)| n * b).sum(),
        shrink: "lower camera pool-size, width or height",
    });

    let sources: Vec<u64> = config
        .cameras
        .iter()
        .map(crate::source::resident_bytes)
        .collect();
    let kinds: Vec<&str> = config.cameras.iter().map(|c| c.kind().name()).collect();
    plan.push(Part {
        name: parts::SOURCES,
        detail: format!("{} ({})", each_detail(&sources), kinds.join(", ")),
        bytes: sources.iter().sum(),
        shrink: "shorten replay recordings, lower v4l2 buffers or the resolution",
    });

    let input = 3 * pre.width as u64 * pre.height as u64 * 4;
    let scratch: Vec<u64> = config
        .cameras
        .iter()
        .map(|c| Preparer::scratch_bytes(pre, c.format, c.width, c.height))
        .collect();
    plan.push(Part {
        name: parts::PREPARED,
        detail: format!(
            "preparers {} + model input 2 x {}",
            each_detail(&scratch),
            human(input)
        ),
        bytes: scratch.iter().sum::<u64>() + 2 * input,
        shrink: "lower the cameras' resolution",
    });

    let weights: Vec<(ModelRole, u64)> = match models {
        Some(m) => m
            .engine
            .files
            .iter()
            .chain(m.text_files)
            .map(|f| (f.role, f.weight_bytes))
            .collect(),
        None => [ModelRole::Vision, ModelRole::Resampler, ModelRole::Text]
            .iter()
            .filter_map(|&r| {
                // The text encoder always runs in tract.
                let engine = if r == ModelRole::Text {
                    EngineKind::Tract
                } else {
                    config.model.engine
                };
                manifest.file_for(r, variant, engine).map(|f| (r, f.size))
            })
            .collect(),
    };
    plan.push(Part {
        name: parts::WEIGHTS,
        detail: weights
            .iter()
            .map(|(r, b)| format!("{r} {}", human(*b)))
            .collect::<Vec<_>>()
            .join(" + "),
        bytes: weights.iter().map(|(_, b)| b).sum(),
        shrink: "use model.variant = \"int8\" or a smaller model",
    });

    let (loading, detail) = loading_bytes(config, manifest, variant, calibrating);
    plan.push(Part {
        name: parts::LOADING,
        detail,
        bytes: loading,
        shrink: "use model.variant = \"int8\" or a smaller model",
    });

    let fixed = config.memory.arena_mib.map(|m| m * MIB);
    let (arena, detail) = match (models, fixed) {
        (Some(m), _) if m.measured_region > 0 => {
            let capture = capture_region_bytes(config);
            let arena = fixed.unwrap_or(
                m.measured_region + m.measured_region / 16 + MEASURED_REGION_SLACK + capture,
            );
            (
                arena,
                format!(
                    "region: the engine's runs carved {} measured here, + 1/16 + {}{}{}",
                    human(m.measured_region),
                    human(MEASURED_REGION_SLACK),
                    if capture > 0 {
                        format!(" + capture {}", human(capture))
                    } else {
                        String::new()
                    },
                    if fixed.is_some() {
                        "; memory.arena-mib overrides it"
                    } else {
                        ""
                    }
                ),
            )
        }
        (Some(m), _) => {
            let e = m.engine;
            let arena = fixed.unwrap_or_else(|| e.arena_bytes());
            (
                arena,
                format!(
                    "region for the per-run tensors of encoder {} (peak live {}) + resampler {} (peak live {}) (planned), x{:.2} + {}{}",
                    human(e.encoder.tensor_bytes),
                    human(e.encoder.peak_live_bytes),
                    human(e.resampler.tensor_bytes),
                    human(e.resampler.peak_live_bytes),
                    ARENA_TENSOR_PERCENT as f64 / 100.0,
                    human(ARENA_SLACK_BYTES),
                    if fixed.is_some() {
                        "; memory.arena-mib overrides it"
                    } else {
                        ""
                    }
                ),
            )
        }
        (None, Some(bytes)) => (
            bytes,
            format!("region of {} (memory.arena-mib)", human(bytes)),
        ),
        (None, None) => (0, "known once the models are planned".into()),
    };
    plan.arena_bytes = arena;
    plan.push(Part {
        name: parts::ENGINE,
        detail,
        bytes: arena,
        shrink: "use a model with a smaller input or fewer layers (or set memory.arena-mib)",
    });
    if let Some(measured) = models.and_then(|m| m.engine.measured) {
        plan.push(Part {
            name: parts::ENGINE_HEAP,
            detail: format!(
                "measured at start-up: resident set +{}, malloc heap +{} across creating the sessions and the \
                 first run, less the weights counted above",
                human(measured.rss_bytes),
                human(measured.heap_bytes)
            ),
            bytes: measured.counted_bytes,
            shrink: "use model.variant = \"int8\" or a smaller model",
        });
    }

    let text = models.map(|m| m.text_run.tensor_bytes + m.text_run.input_bytes);
    plan.push(Part {
        name: parts::TEXT,
        detail: if text.is_some() {
            "one prompt's tensors (start-up and prompt changes, off the frame path)".into()
        } else {
            "known once the models are planned".into()
        },
        bytes: text.unwrap_or(0),
        shrink: "use a smaller text model",
    });

    let e = manifest.embed_dim as u64;
    let output = match models {
        Some(m) => m.engine.output_bytes,
        None => {
            let (l, dl) = (
                manifest.resampler.num_latents as u64,
                manifest.resampler.latent_dim as u64,
            );
            let patch = manifest
                .file(ModelRole::Vision, variant)
                .and_then(|f| f.outputs.iter().find(|s| s.name == "patch_tokens"))
                .map_or(0, |s| s.shape.iter().product::<usize>() as u64);
            4 * (e + patch + l * dl)
        }
    };
    let k = config.prompts.max as u64;
    // Two prompt sets can be alive at once (the current one and the one being swapped in).
    let prompts = 2 * k * (4 * e + 64);
    let stats =
        config.cameras.len() as u64 * std::mem::size_of::<crate::stats::CameraStats>() as u64;
    plan.push(Part {
        name: parts::RESULTS,
        detail: format!(
            "vision output {} + scores {} + prompt sets 2 x {} + statistics {}",
            human(output),
            human(4 * k),
            human(prompts / 2),
            human(stats)
        ),
        bytes: output + 4 * k + prompts + stats,
        shrink: "lower prompts.max",
    });

    let shm = if with_shm {
        Layout::new(super::build::shm_dims(config, manifest)).map_or(0, |l| l.total_size)
    } else {
        0
    };
    plan.push(Part {
        name: parts::SHM,
        detail: if with_shm {
            format!(
                "{} cameras x 3 samples, {} prompts",
                config.cameras.len(),
                config.prompts.max
            )
        } else {
            "not published (--no-shm)".into()
        },
        bytes: shm,
        shrink: "lower prompts.max or set shm.latents = \"f16\"",
    });

    let recorder = &config.recorder;
    let mut recorder_threads = 0;
    if recorder.is_on() {
        let shape = super::build::results_shape(config, manifest);
        let cameras = super::build::ring_cameras(config);
        let rings: Vec<u64> = cameras
            .iter()
            .map(|c| crate::recorder::ring_bytes(c.slots, c.frame_bytes(), &shape))
            .collect();
        let detail = cameras
            .iter()
            .zip(&config.cameras)
            .map(|(c, cam)| {
                format!(
                    "{} {} frames ({}) x ({} frame + {} results)",
                    c.name,
                    c.slots,
                    recorder.window_detail(cam.fps),
                    human(c.frame_bytes() as u64),
                    human(shape.record_bytes() as u64)
                )
            })
            .collect::<Vec<_>>()
            .join(" + ");
        plan.push(Part {
            name: parts::RECORDER,
            detail: if recorder.capture.is_some() {
                format!("capture rings: {detail}")
            } else {
                format!("rings of the last frames: {detail}")
            },
            bytes: rings.iter().sum(),
            shrink: "lower recorder.seconds or recorder.frames, or set recorder.enabled = false",
        });
        // The writer; the flight recorder's control socket and signal handler.
        recorder_threads = if recorder.capture.is_some() { 1 } else { 3 };
    }

    let (code, measured) = match crate::alloc::mapped_file_bytes() {
        Some(b) => (b, "mapped now"),
        None => (CODE_BYTES_UNKNOWN, "not readable, assumed"),
    };
    plan.push(Part {
        name: parts::CODE,
        detail: format!("executable and shared libraries ({measured})"),
        bytes: code,
        shrink: "",
    });
    let workers = if config.model.threads > 1 {
        config.model.threads as u64
    } else {
        0
    };
    // main, inference, shared-memory heartbeat, status line, prompt watcher, capture per camera, recorder.
    let threads = 5 + config.cameras.len() as u64 + workers + recorder_threads;
    plan.push(Part {
        name: parts::STACKS,
        detail: format!("{threads} threads x {}", human(THREAD_STACK_BYTES)),
        bytes: threads * THREAD_STACK_BYTES,
        shrink: "",
    });
    plan.push(Part {
        name: parts::HEAP,
        detail: "model graphs, tokenizer, manifest, logging, allocator slack (fixed)".into(),
        bytes: STARTUP_HEAP_BYTES,
        shrink: "",
    });
    plan
}

/// The vision and resampler files of `variant` for the configured engine, then the text encoder's (the
/// order start-up loads them in, see `runtime::build`), with their sizes.
fn load_order(config: &Config, manifest: &Manifest, variant: Variant) -> Vec<(ModelRole, u64)> {
    let engine = config.model.engine;
    let mut order: Vec<(ModelRole, u64)> = [ModelRole::Vision, ModelRole::Resampler]
        .iter()
        .filter_map(|&r| manifest.file_for(r, variant, engine).map(|f| (r, f.size)))
        .collect();
    let text = manifest
        .file(ModelRole::Text, variant)
        .or_else(|| manifest.file(ModelRole::Text, Variant::Fp32));
    if let (true, Some(f)) = (manifest.text.is_some(), text) {
        order.push((ModelRole::Text, f.size));
    }
    order
}

/// How far the load-time peak rises above the weights of the models kept (`variant`), and what causes it.
///
/// While a file loads, three copies of its weights are alive: the file's bytes, the decoded protobuf and the
/// tensors being built (measured: ViT-B/32 fp32 peaks 332 MiB above the steady plan while its 242 MiB text
/// file loads), beside the files loaded before it into the same engine. `auto`'s first start measures each of
/// `calibrating`'s variants first, one engine at a time (its vision and resampler files loaded, timed and
/// dropped), then loads the one it keeps and the text encoder.
fn loading_bytes(
    config: &Config,
    manifest: &Manifest,
    variant: Variant,
    calibrating: &[Variant],
) -> (u64, String) {
    let kept = load_order(config, manifest, variant);
    let weights: u64 = kept.iter().map(|(_, b)| b).sum();
    let mut peak = (0u64, String::new());
    let mut walk = |order: &[(ModelRole, u64)], what: &str| {
        let mut loaded = 0u64;
        for &(role, size) in order {
            let at = loaded + 3 * size;
            if at > peak.0 {
                peak = (
                    at,
                    format!(
                        "{what}its {role} file ({}) read, decoded and built",
                        human(size)
                    ),
                );
            }
            loaded += size;
        }
    };
    for &v in calibrating.iter().filter(|&&v| v != variant) {
        let order: Vec<_> = load_order(config, manifest, v)
            .into_iter()
            .filter(|(r, _)| *r != ModelRole::Text)
            .collect();
        walk(&order, &format!("measuring {v} at the first start: "));
    }
    walk(&kept, "");
    let extra = peak.0.saturating_sub(weights);
    let detail = if extra == 0 {
        "start-up only: nothing above the weights".into()
    } else {
        format!("start-up only: {}", peak.1)
    };
    (extra, detail)
}

/// What [`take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Size of the frame-path region.
    pub arena_bytes: u64,
    /// Whether the process's memory is locked.
    pub locked: bool,
}

/// Why the plan's memory could not be taken at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("memory budget: {0}")]
    Region(#[from] crate::alloc::ReserveError),
    #[error("memory.lock-required = true but {0}")]
    Lock(String),
}

/// Reserves the frame-path region the plan sizes ([`crate::alloc::reserve`]), makes the C allocator keep
/// its heap from now on ([`crate::alloc::keep_system_heap`]) and, when `memory.lock`, locks the process's
/// memory. A failed lock is an error only with `memory.lock-required`; otherwise it
/// is logged and the run goes on unlocked. Call it after the plan passed [`MemoryPlan::check`] and after
/// the pipeline's buffers are allocated, before it starts.
pub fn take(plan: &MemoryPlan, memory: &crate::alloc::MemorySettings) -> Result<Taken, TakeError> {
    let arena_bytes = crate::alloc::reserve(plan.arena_bytes.max(1))?;
    if !crate::alloc::keep_system_heap() {
        tracing::debug!("the C allocator's thresholds were not set (not glibc, or refused)");
    }
    let mut locked = false;
    if memory.lock {
        match crate::alloc::lock_memory() {
            Ok(()) => locked = true,
            Err(e) if memory.lock_required => return Err(TakeError::Lock(e)),
            Err(e) => tracing::warn!("memory not locked: {e}"),
        }
    }
    Ok(Taken {
        arena_bytes,
        locked,
    })
}
