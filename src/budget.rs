//! The memory budget: every buffer of the process sized from the validated configuration and the model
//! bundle, totalled, and checked against `budgets.memory-mib` before anything runs.
//!
//! A [`MemoryPlan`] lists the parts (frame pools, the sources' own frames, prepared tensors, model weights,
//! tract's working memory on the frame path, the text encoder's, result buffers, the shared-memory segment
//! and the runtime's fixed overhead). [`MemoryPlan::estimate`] works from the config and the manifest
//! alone (weights from the manifest's file sizes; tract's working memory is unknown until the models are
//! planned, so the estimate leaves it out), so a configuration that cannot fit is refused before the models
//! are loaded; [`MemoryPlan::with_engine`] replaces the estimates with the planned figures of the loaded
//! models, and the pipeline starts only if that fits too. [`MemoryPlan::check`] refuses with a message that
//! lists each part and says what to change.
//!
//! The frame-path region of [`crate::alloc`] is sized here ([`MemoryPlan::arena_bytes`]): the per-run tensors
//! tract's plans produce, with headroom for the size classes and for op scratch space (docs/memory.md has
//! the measurements behind the numbers). `memory.arena-mib` overrides it.

use std::fmt;
use std::path::Path;

use crate::config::{Config, SourceConfig};
use crate::frame::PixelFormat;
use crate::infer::{EngineMemory, FileSize, PlanMemory};
use crate::manifest::{Manifest, Preprocess, Role};
use crate::shm::{Dims, Layout};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The process's own heap besides the listed parts: the parsed models' graphs, the tokenizer, the manifest,
/// logging, the system allocator's slack. Measured at about 7 MiB for the demo (docs/memory.md); a
/// tokenizer with a real vocabulary takes more, so this has headroom.
pub const STARTUP_HEAP_BYTES: u64 = 16 * MIB;
/// Stack of each thread ocellus starts (Rust's default for spawned threads; the main thread's is counted
/// the same). Resident only as far as used, unless memory is locked.
pub const THREAD_STACK_BYTES: u64 = 2 * MIB;
/// Code and libraries when `/proc/self/maps` cannot be read.
pub const CODE_BYTES_UNKNOWN: u64 = 64 * MIB;

/// The frame-path region holds the tensors one run of both models produces, plus this percentage for the
/// size classes' rounding (at most a quarter) and alignment...
pub const ARENA_TENSOR_PERCENT: u64 = 125;
/// ...plus this much for tract's small per-run allocations (shapes, value lists) and its per-thread op
/// scratch space, which stays in the region once made.
pub const ARENA_SLACK_BYTES: u64 = 2 * MIB;

/// `[memory]`: the frame-path region and the memory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Lock all of the process's memory (`mlockall`) before the pipeline starts.
    pub lock: bool,
    /// Refuse to start when the lock fails (otherwise warn and run unlocked).
    pub lock_required: bool,
    /// Size of the frame-path region in MiB; `None`: sized from the planned models.
    pub arena_mib: Option<u64>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            lock: true,
            lock_required: false,
            arena_mib: None,
        }
    }
}

/// One part of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What it is, e.g. "frame pools".
    pub name: &'static str,
    /// How it is made up, e.g. "2 x 4 x 600 KiB".
    pub detail: String,
    pub bytes: u64,
    /// How to make it smaller ("" for the fixed overhead).
    pub shrink: &'static str,
}

/// The process's memory, part by part, against the budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// `budgets.memory-mib` in bytes.
    pub budget_bytes: u64,
    pub parts: Vec<Part>,
    /// Size of the frame-path region (included in the parts as "tract working memory").
    pub arena_bytes: u64,
    /// Whether the model figures come from the planned models ([`MemoryPlan::with_engine`]) rather than
    /// the manifest alone.
    pub planned: bool,
}

/// A plan that does not fit the budget; its `Display` is the message a person acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BudgetExceeded {
    pub needed: u64,
    pub allowed: u64,
    message: String,
}

/// Why the plan's memory could not be taken at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("memory budget: {0}")]
    Region(#[from] crate::alloc::ReserveError),
    #[error("memory.lock-required = true but {0}")]
    Lock(String),
}

/// Bytes as a person reads them: "600 KiB", "4.7 MiB", "1.2 GiB".
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes < KIB {
        format!("{bytes} B")
    } else if bytes < MIB {
        format!("{:.0} KiB", b / KIB as f64)
    } else if bytes < 1024 * MIB {
        format!("{:.1} MiB", b / MIB as f64)
    } else {
        format!("{:.2} GiB", b / (1024 * MIB) as f64)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// "2 x 1.5 MiB" when all sizes are equal, else the sizes added up.
fn each_detail(sizes: &[u64]) -> String {
    match sizes {
        [] => "none".into(),
        [one] => human(*one),
        [first, ..] if sizes.iter().all(|s| s == first) => {
            format!("{} x {}", sizes.len(), human(*first))
        }
        _ => sizes
            .iter()
            .map(|&b| human(b))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

/// "n x size" per camera, "cameras x n x size" when all are equal, else the terms added up.
fn sum_detail(items: &[(u64, u64)]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    if items.iter().all(|&i| i == items[0]) && items.len() > 1 {
        let (n, each) = items[0];
        return format!("{} x {n} x {}", items.len(), human(each));
    }
    items
        .iter()
        .map(|&(n, each)| {
            if n == 1 {
                human(each)
            } else {
                format!("{n} x {}", human(each))
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Scratch a [`crate::prepare::Preparer`] allocates for `format` frames of `width` x `height`: the RGB
/// conversion, the horizontal pass's rows, the resized image and the resize coefficients (an upper bound).
pub fn preparer_bytes(pre: &Preprocess, format: PixelFormat, width: u32, height: u32) -> u64 {
    let (w, h) = (width as u64, height as u64);
    let (ow, oh) = (pre.width as u64, pre.height as u64);
    let c = if format == PixelFormat::Grey { 1 } else { 3 };
    let rgb = if format == PixelFormat::Rgb24 {
        0
    } else {
        w * h * c
    };
    let tmp = ow * h * c;
    let resized = ow * oh * c;
    // Pillow's kernels: support 2 (bicubic) times the downscale factor, each side, per output pixel.
    let taps = |input: u64, output: u64| 2 * (2 * input).div_ceil(output.max(1)) + 1;
    let coefficients = (ow * (taps(w, ow) * 4 + 16)) + (oh * (taps(h, oh) * 4 + 16));
    let lut = 3 * 256 * 4;
    rgb + tmp + resized + coefficients + lut
}

/// Memory a camera's source holds besides the frame pool: the synthetic camera's render and YUV scratch,
/// a replay's decoded frames (it reads everything at start), a V4L2 driver's mmap buffers.
fn source_bytes(config: &crate::config::CameraConfig) -> u64 {
    let (w, h) = (config.width as u64, config.height as u64);
    match &config.source {
        SourceConfig::Synthetic { .. } => w * h * 3 + w * h * 2,
        SourceConfig::Replay { path, .. } => replay_bytes(path, config.format, w * h * 3),
        SourceConfig::V4l2 { buffers, .. } => *buffers as u64 * config.max_frame_bytes() as u64,
    }
}

fn replay_bytes(path: &Path, format: PixelFormat, decoded_frame: u64) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    let Ok(dir) = std::fs::read_dir(path) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_ascii_lowercase();
            let image = [".png", ".jpg", ".jpeg"].iter().any(|x| name.ends_with(x));
            image.then(|| match format {
                PixelFormat::Mjpeg => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => decoded_frame,
            })
        })
        .sum()
}

impl MemoryPlan {
    /// The plan from the configuration and the manifest alone, before any model is loaded: weights from
    /// the manifest's file sizes; tract's working memory is not known yet and left out (0), unless
    /// `memory.arena-mib` fixes the region's size.
    pub fn estimate(config: &Config, manifest: &Manifest, with_shm: bool) -> MemoryPlan {
        let variant = config.model.variant;
        let weights: Vec<(Role, u64)> = [Role::Vision, Role::Resampler, Role::Text]
            .iter()
            .map(|&r| (r, manifest.file(r, variant).map_or(0, |f| f.size)))
            .collect();
        let arena = config.memory.arena_mib.map_or(0, |m| m * MIB);
        Self::build(config, manifest, with_shm, &weights, arena, None, false)
    }

    /// The plan with the planned figures of the loaded models: the engine's weights and per-run tensors
    /// (the frame-path region is sized from them), and the text encoder's (`text`: its files and plan).
    pub fn with_engine(
        config: &Config,
        manifest: &Manifest,
        with_shm: bool,
        engine: &EngineMemory,
        text: Option<(&[FileSize], PlanMemory)>,
    ) -> MemoryPlan {
        let mut weights: Vec<(Role, u64)> = engine
            .files
            .iter()
            .map(|f| (f.role, f.weight_bytes))
            .collect();
        match text {
            Some((files, _)) => weights.extend(files.iter().map(|f| (f.role, f.weight_bytes))),
            None => weights.push((
                Role::Text,
                manifest
                    .file(Role::Text, config.model.variant)
                    .map_or(0, |f| f.size),
            )),
        }
        let arena = match config.memory.arena_mib {
            Some(m) => m * MIB,
            None => Self::arena_for(engine),
        };
        let text_run = text.map(|(_, m)| m.tensor_bytes + m.input_bytes);
        let mut plan = Self::build(config, manifest, with_shm, &weights, arena, text_run, true);
        if let Some(p) = plan.parts.iter_mut().find(|p| p.name == PART_TRACT) {
            p.detail = format!(
                "region for the per-run tensors of encoder {} + resampler {} (planned), x{:.2} + {}{}",
                human(engine.encoder.tensor_bytes),
                human(engine.resampler.tensor_bytes),
                ARENA_TENSOR_PERCENT as f64 / 100.0,
                human(ARENA_SLACK_BYTES),
                if config.memory.arena_mib.is_some() {
                    "; memory.arena-mib overrides it"
                } else {
                    ""
                }
            );
        }
        plan
    }

    /// The frame-path region for an engine: the per-run tensors of both models (every tensor of a run,
    /// as if none were freed before the run ends) times [`ARENA_TENSOR_PERCENT`] plus
    /// [`ARENA_SLACK_BYTES`]. A segregated-fit heap never needs more than one run's allocations once it
    /// is warm: the second run finds every block the first one carved free again.
    pub fn arena_for(engine: &EngineMemory) -> u64 {
        (engine.encoder.tensor_bytes + engine.resampler.tensor_bytes) * ARENA_TENSOR_PERCENT / 100
            + ARENA_SLACK_BYTES
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        config: &Config,
        manifest: &Manifest,
        with_shm: bool,
        weights: &[(Role, u64)],
        arena: u64,
        text_run: Option<u64>,
        planned: bool,
    ) -> MemoryPlan {
        let mut parts = Vec::new();
        let pre = &manifest.preprocess;

        let pools: Vec<(u64, u64)> = config
            .cameras
            .iter()
            .map(|c| (c.pool_size as u64, c.max_frame_bytes() as u64))
            .collect();
        parts.push(Part {
            name: "frame pools",
            detail: sum_detail(&pools),
            bytes: pools.iter().map(|(n, b)| n * b).sum(),
            shrink: "lower camera pool-size, width or height",
        });

        let sources: Vec<u64> = config.cameras.iter().map(source_bytes).collect();
        let kinds: Vec<&str> = config.cameras.iter().map(|c| c.kind().name()).collect();
        parts.push(Part {
            name: "camera sources",
            detail: format!("{} ({})", each_detail(&sources), kinds.join(", ")),
            bytes: sources.iter().sum(),
            shrink: "shorten replay recordings, lower v4l2 buffers or the resolution",
        });

        let input = 3 * pre.width as u64 * pre.height as u64 * 4;
        let scratch: Vec<u64> = config
            .cameras
            .iter()
            .map(|c| preparer_bytes(pre, c.format, c.width, c.height))
            .collect();
        parts.push(Part {
            name: "prepared tensors",
            detail: format!(
                "preparers {} + model input 2 x {}",
                each_detail(&scratch),
                human(input)
            ),
            bytes: scratch.iter().sum::<u64>() + 2 * input,
            shrink: "lower the cameras' resolution",
        });

        let weight_total: u64 = weights.iter().map(|(_, b)| b).sum();
        parts.push(Part {
            name: "model weights",
            detail: weights
                .iter()
                .map(|(r, b)| format!("{r} {}", human(*b)))
                .collect::<Vec<_>>()
                .join(" + "),
            bytes: weight_total,
            shrink: "use model.variant = \"int8\" or a smaller model",
        });

        parts.push(Part {
            name: PART_TRACT,
            detail: if planned || arena > 0 {
                format!("region of {}", human(arena))
            } else {
                "known once the models are planned".into()
            },
            bytes: arena,
            shrink: "use a model with a smaller input or fewer layers (or set memory.arena-mib)",
        });

        let text = text_run.unwrap_or(0);
        parts.push(Part {
            name: "text encoder runs",
            detail: if text_run.is_some() {
                "one prompt's tensors (start-up and prompt changes, off the frame path)".into()
            } else {
                "known once the models are planned".into()
            },
            bytes: text,
            shrink: "use a smaller text model",
        });

        let e = manifest.embed_dim as u64;
        let (l, dl) = (
            manifest.resampler.num_latents as u64,
            manifest.resampler.latent_dim as u64,
        );
        let patch = manifest
            .file(Role::Vision, config.model.variant)
            .and_then(|f| f.outputs.iter().find(|s| s.name == "patch_tokens"))
            .map_or(0, |s| s.shape.iter().product::<usize>() as u64);
        let k = config.prompts.max as u64;
        let output = 4 * (e + patch + l * dl);
        // Two prompt sets can be alive at once (the current one and the one being swapped in).
        let prompts = 2 * k * (4 * e + 64);
        let stats =
            config.cameras.len() as u64 * std::mem::size_of::<crate::stats::CameraStats>() as u64;
        parts.push(Part {
            name: "result buffers",
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
            Layout::new(Dims {
                cameras: config.cameras.len(),
                embed_dim: manifest.embed_dim,
                num_latents: manifest.resampler.num_latents,
                latent_dim: manifest.resampler.latent_dim,
                max_prompts: config.prompts.max,
                latents_dtype: config.shm.latents,
            })
            .map_or(0, |l| l.total_size)
        } else {
            0
        };
        parts.push(Part {
            name: "shared-memory segment",
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

        let (code, measured) = match crate::alloc::mapped_file_bytes() {
            Some(b) => (b, "mapped now"),
            None => (CODE_BYTES_UNKNOWN, "not readable, assumed"),
        };
        parts.push(Part {
            name: "code and libraries",
            detail: format!("executable and shared libraries ({measured})"),
            bytes: code,
            shrink: "",
        });
        let workers = if config.model.threads > 1 {
            config.model.threads as u64
        } else {
            0
        };
        // main, inference, shared-memory heartbeat, status line, prompt watcher, capture per camera.
        let threads = 5 + config.cameras.len() as u64 + workers;
        parts.push(Part {
            name: "thread stacks",
            detail: format!("{threads} threads x {}", human(THREAD_STACK_BYTES)),
            bytes: threads * THREAD_STACK_BYTES,
            shrink: "",
        });
        parts.push(Part {
            name: "start-up heap",
            detail: "model graphs, tokenizer, manifest, logging, allocator slack (fixed)".into(),
            bytes: STARTUP_HEAP_BYTES,
            shrink: "",
        });

        MemoryPlan {
            budget_bytes: config.budgets.memory_mib * MIB,
            parts,
            arena_bytes: arena,
            planned,
        }
    }

    /// Sum of the parts.
    pub fn total_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// The part called `name`, if any.
    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// Ok if the total fits `budgets.memory-mib`; otherwise the message lists every part and the fix.
    pub fn check(&self) -> Result<(), BudgetExceeded> {
        let needed = self.total_bytes();
        if needed <= self.budget_bytes {
            return Ok(());
        }
        let parts = self
            .parts
            .iter()
            .filter(|p| p.bytes > 0)
            .map(|p| format!("{} {} = {}", p.name, p.detail, human(p.bytes)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut largest: Vec<&Part> = self.parts.iter().filter(|p| !p.shrink.is_empty()).collect();
        largest.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        let shrink = largest
            .iter()
            .take(2)
            .map(|p| format!("{} ({})", p.name, p.shrink))
            .collect::<Vec<_>>()
            .join(" or ");
        let unplanned = if self.planned {
            ""
        } else {
            " (before the models are planned: tract's working memory comes on top)"
        };
        Err(BudgetExceeded {
            needed,
            allowed: self.budget_bytes,
            message: format!(
                "budget exceeded: {} needed, {} MiB allowed (budgets.memory-mib){unplanned}: {parts}; raise budgets.memory-mib to at least {} or shrink {shrink}",
                mib(needed),
                self.budget_bytes / MIB,
                needed.div_ceil(MIB),
            ),
        })
    }
}

const PART_TRACT: &str = "tract working memory";

impl fmt::Display for MemoryPlan {
    /// The breakdown, one part per line, then the total against the budget.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            writeln!(f, "{:<22} {:>10}  {}", p.name, human(p.bytes), p.detail)?;
        }
        write!(
            f,
            "{:<22} {:>10}  of {} MiB (budgets.memory-mib){}",
            "total",
            mib(self.total_bytes()),
            self.budget_bytes / MIB,
            if self.planned {
                ""
            } else {
                ", before the models are planned"
            }
        )
    }
}

/// What [`take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Size of the frame-path region.
    pub arena_bytes: u64,
    /// Whether the process's memory is locked.
    pub locked: bool,
}

/// Reserves the frame-path region the plan sizes ([`crate::alloc::reserve`]) and, when `memory.lock`,
/// locks the process's memory. A failed lock is an error only with `memory.lock-required`; otherwise it
/// is logged and the run goes on unlocked. Call it after the plan passed [`MemoryPlan::check`] and after
/// the pipeline's buffers are allocated, before it starts.
pub fn take(plan: &MemoryPlan, memory: &MemoryConfig) -> Result<Taken, TakeError> {
    let arena_bytes = crate::alloc::reserve(plan.arena_bytes.max(1))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(614_400), "600 KiB");
        assert_eq!(human(5 * MIB / 2), "2.5 MiB");
        assert_eq!(human(3 * 1024 * MIB / 2), "1.50 GiB");
        assert_eq!(sum_detail(&[(4, 614_400), (4, 614_400)]), "2 x 4 x 600 KiB");
        assert_eq!(
            sum_detail(&[(4, 614_400), (3, 2048)]),
            "4 x 600 KiB + 3 x 2 KiB"
        );
        assert_eq!(each_detail(&[2048, 2048]), "2 x 2 KiB");
        assert_eq!(each_detail(&[2048, 4096]), "2 KiB + 4 KiB");
    }
}
