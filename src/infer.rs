//! Inference: manifest verification, the engine seam, and the engines behind it.
//!
//! Everything around inference (preparation, deadlines, budgets, publishing, `ocellus bench`, `check`,
//! `infer`) talks to an [`InferenceEngine`]: the vision encoder then the resampler, loaded and planned once,
//! run once per frame into a [`VisionOutput`] allocated once. [`load`] makes the engine the settings name
//! ([`EngineSettings`]): tract ([`TractEngine`], the default and the only engine of a plain build), or
//! onnxruntime (`OrtEngine`, with the cargo feature `onnxruntime`: a libonnxruntime loaded at run time,
//! configured by [`OnnxruntimeSettings`]; docs/engines.md). [`select`] says which variant runs on this CPU
//! (`model.variant = "auto"`) and why.
//!
//! Lifecycle: loading verifies the bundle ([`verify`]: sizes, sha256, ONNX signatures, shapes against each
//! other), then parses, optimises and plans each model once and allocates the input tensors; the caller
//! allocates a [`VisionOutput`] once with [`InferenceEngine::new_output`]; [`InferenceEngine::run`] then
//! writes each frame into the same input tensor and copies the results into the same output buffers.
//!
//! Allocation on the frame path: ocellus's own buffers are reused, but tract allocates every intermediate
//! tensor of every run (the same sizes each time; counted by `tests/infer_alloc.rs`).
//! [`InferenceEngine::memory`] gives the sizes an arena in front of those allocations needs. onnxruntime
//! runs on input and output tensors bound once (no Rust allocation per frame); what its C++ side allocates
//! goes through malloc, which Rust's allocator does not see: its memory is measured at start-up
//! ([`MeasuredMemory`]) and its per-frame malloc calls by `ocellus bench`.

#[cfg(feature = "onnxruntime")]
mod ort;
mod plan;
pub mod select;
mod settings;
mod tract;
mod verify;

use std::time::Duration;

use crate::manifest::{EngineKind, Manifest, ModelRole};

#[cfg(feature = "onnxruntime")]
pub use self::ort::OrtEngine;
pub use plan::PlanMemory;
pub(crate) use plan::{Executor, Planned, Precision};
pub use select::{RunVariant, VariantChoice};
pub use settings::{OnnxruntimeSettings, Provider, ORT_DYLIB_PATH_VAR, ORT_MIN_VERSION};
pub use tract::TractEngine;
pub use verify::{
    check_consistency, file_sizes, file_sizes_for, verify, verify_for, verify_path, FileSize,
    LoadError,
};
pub(crate) use verify::{check_file, check_manifest, read_verified};
#[cfg(feature = "onnxruntime")]
pub(crate) use verify::{check_manifest_for, read_verified_for};

/// The vision encoder's and resampler's results for one frame; allocated once, overwritten every frame.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionOutput {
    /// Pooled image embedding, E values, L2-normalised.
    pub image_embeds: Vec<f32>,
    /// The encoder's token sequence, N*D values (row-major), as the resampler read it.
    pub patch_tokens: Vec<f32>,
    /// (N, D).
    pub patch_tokens_shape: (usize, usize),
    /// The resampler's latents, L*Dl values (row-major).
    pub latents: Vec<f32>,
    /// (L, Dl).
    pub latents_shape: (usize, usize),
}

impl VisionOutput {
    /// Zeroed buffers for an engine writing `embed_dim` embedding values, `patch` (N, D) tokens and `latents`
    /// (L, Dl): what every engine's [`InferenceEngine::new_output`] returns.
    pub(crate) fn zeroed(
        embed_dim: usize,
        patch: (usize, usize),
        latents: (usize, usize),
    ) -> VisionOutput {
        VisionOutput {
            image_embeds: vec![0.0; embed_dim],
            patch_tokens: vec![0.0; patch.0 * patch.1],
            patch_tokens_shape: patch,
            latents: vec![0.0; latents.0 * latents.1],
            latents_shape: latents,
        }
    }

    /// Whether these buffers have the lengths such an engine writes (an output made by another engine or
    /// bundle is refused, never resized on the frame path).
    pub(crate) fn check_fits(
        &self,
        embed_dim: usize,
        patch: (usize, usize),
        latents: (usize, usize),
    ) -> Result<(), InferError> {
        let (n, d) = patch;
        let (l, dl) = latents;
        if self.image_embeds.len() != embed_dim
            || self.patch_tokens.len() != n * d
            || self.latents.len() != l * dl
        {
            return Err(InferError::OutputShape {
                problem: format!(
                    "image_embeds {}, patch_tokens {}, latents {} values; this engine writes {}, {}, {}",
                    self.image_embeds.len(),
                    self.patch_tokens.len(),
                    self.latents.len(),
                    embed_dim,
                    n * d,
                    l * dl
                ),
            });
        }
        Ok(())
    }
}

/// Wall-clock time of each model in one [`InferenceEngine::run`] (monotonic clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    pub encoder: Duration,
    pub resampler: Duration,
}

/// Memory the engine holds or needs, for the memory budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineMemory {
    /// The vision and resampler files (bytes on disk and weight bytes).
    pub files: Vec<FileSize>,
    pub encoder: PlanMemory,
    pub resampler: PlanMemory,
    /// Bytes of one [`VisionOutput`].
    pub output_bytes: u64,
    /// Memory the engine holds outside ocellus's allocator (onnxruntime's C++ heap), measured at start-up;
    /// `None` for tract, whose every allocation goes through ocellus's allocator and is planned.
    pub measured: Option<MeasuredMemory>,
}

/// Memory an engine took at start-up, measured around creating its sessions and its first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasuredMemory {
    /// Growth of the resident set (`VmRSS`) across loading and the first run.
    pub rss_bytes: u64,
    /// Growth of glibc's heap in use (`mallinfo2`: `uordblks + hblkhd`) across the same span.
    pub heap_bytes: u64,
    /// What the budget counts beside the weights: the larger of the two growths less the files' weight
    /// bytes (counted as model weights already), at least the heap growth beyond the weights.
    pub counted_bytes: u64,
}

/// The frame-path region holds the tensors one run of both models produces, plus this percentage for the
/// size classes' rounding (at most a quarter) and alignment...
pub const ARENA_TENSOR_PERCENT: u64 = 125;
/// ...plus this much for tract's small per-run allocations (shapes, value lists) and its per-thread op
/// scratch space, which stays in the region once made.
pub const ARENA_SLACK_BYTES: u64 = 2 << 20;

impl EngineMemory {
    /// Bytes of the weights the engine holds.
    pub fn weight_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.weight_bytes).sum()
    }

    /// The frame-path region this engine's runs need: the per-run tensors of both models (every tensor of a
    /// run, as if none were freed before the run ends) times [`ARENA_TENSOR_PERCENT`] plus
    /// [`ARENA_SLACK_BYTES`]. A segregated-fit heap never needs more than one run's allocations once it is
    /// warm: the second run finds every block the first one carved free again.
    pub fn arena_bytes(&self) -> u64 {
        (self.encoder.tensor_bytes + self.resampler.tensor_bytes) * ARENA_TENSOR_PERCENT / 100
            + ARENA_SLACK_BYTES
    }

    /// Weights plus the per-run tensors of both models plus inputs and outputs: an upper bound of what
    /// one frame of inference touches (op scratch space aside).
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.weight_bytes).sum::<u64>()
            + self.encoder.tensor_bytes
            + self.encoder.input_bytes
            + self.resampler.tensor_bytes
            + self.output_bytes
    }
}

/// Why one frame could not be run. The engine stays usable for the next frame.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("pixel_values has {actual} values but the vision encoder takes {expected} (3 x H x W of the manifest's [preprocess]): prepare frames with the same manifest")]
    InputLength { expected: usize, actual: usize },
    #[error("the VisionOutput does not fit this engine ({problem}): allocate it with this engine's InferenceEngine::new_output")]
    OutputShape { problem: String },
    #[error("the {role} model failed: {message}")]
    Tract { role: ModelRole, message: String },
    #[error("onnxruntime failed to run the {role} model: {message}")]
    Onnxruntime { role: ModelRole, message: String },
    #[error("the {role} model produced a non-finite {output}: the model or its int8 quantisation is broken; re-export it")]
    NonFinite {
        role: ModelRole,
        output: &'static str,
    },
}

/// The vision encoder then the resampler of one bundle, loaded and planned once, run once per frame.
///
/// `run` must not allocate ocellus-visible buffers (the output is the caller's, made once with
/// `new_output`); what the engine allocates inside is its own business, measured by `ocellus bench` and
/// bounded by [`InferenceEngine::memory`].
pub trait InferenceEngine: Send {
    /// Which engine, variant and files: for logs and reports.
    fn info(&self) -> &EngineInfo;
    /// 3 * H * W: the length of `pixel_values` for [`InferenceEngine::run`].
    fn input_len(&self) -> usize;
    /// E: the width of `image_embeds`.
    fn embed_dim(&self) -> usize;
    /// Output buffers of the right sizes; allocate once and pass to every `run`.
    fn new_output(&self) -> VisionOutput;
    /// Runs the encoder on `pixel_values` (NCHW, 3*H*W values), then the resampler on its patch tokens,
    /// and copies the results into `out` (image_embeds L2-normalised).
    fn run(
        &mut self,
        pixel_values: &[f32],
        out: &mut VisionOutput,
    ) -> Result<StageTimes, InferError>;
    /// Sizes for the memory budget.
    fn memory(&self) -> &EngineMemory;
}

/// What an engine is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub engine: EngineKind,
    pub variant: RunVariant,
    pub threads: usize,
    /// The vision and resampler files.
    pub files: Vec<std::path::PathBuf>,
}

impl std::fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({} thread{})",
            self.engine,
            self.variant,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }
}

/// How to make an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    pub engine: EngineKind,
    pub variant: RunVariant,
    /// Threads for matrix products (1 = the calling thread only); onnxruntime's intra-op threads.
    pub threads: usize,
    /// `[onnxruntime]`: the library and execution providers (used only by the onnxruntime engine).
    pub onnxruntime: OnnxruntimeSettings,
}

impl EngineSettings {
    /// Settings for `engine` and `variant` with `threads` threads and the default `[onnxruntime]`.
    pub fn new(engine: EngineKind, variant: RunVariant, threads: usize) -> EngineSettings {
        EngineSettings {
            engine,
            variant,
            threads,
            onnxruntime: OnnxruntimeSettings::default(),
        }
    }
}

/// Verifies the bundle's vision and resampler files for `settings` and makes the engine.
pub fn load(
    manifest: &Manifest,
    settings: &EngineSettings,
) -> Result<Box<dyn InferenceEngine>, LoadError> {
    match settings.engine {
        EngineKind::Tract => Ok(Box::new(TractEngine::load_with(manifest, settings)?)),
        #[cfg(feature = "onnxruntime")]
        EngineKind::Onnxruntime => Ok(Box::new(OrtEngine::load(manifest, settings)?)),
        #[cfg(not(feature = "onnxruntime"))]
        EngineKind::Onnxruntime => Err(LoadError::EngineUnavailable {
            engine: settings.engine,
            hint: "this build of ocellus has tract only: build with `--features onnxruntime` (docs/engines.md), or set model.engine = \"tract\"",
        }),
    }
}

/// Builds the executor for `threads` worker threads of tract's matrix products.
pub(crate) fn executor(threads: usize) -> Result<Executor, LoadError> {
    match threads {
        0 => Err(LoadError::Threads {
            threads,
            message: "zero threads".into(),
        }),
        1 => Ok(Executor::SingleThread),
        n => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("{}{i}", crate::thread::WORKER_PREFIX))
            .start_handler(|_| crate::alloc::register_thread(crate::thread::ThreadRole::Worker))
            .build()
            .map(|pool| Executor::MultiThread(std::sync::Arc::new(pool)))
            .map_err(|e| LoadError::Threads {
                threads,
                message: e.to_string(),
            }),
    }
}

/// Scales `v` to unit length; false (and `v` untouched) if its norm is zero or not finite.
pub(crate) fn l2_normalise(v: &mut [f32]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return false;
    }
    let inv = 1.0 / norm;
    v.iter_mut().for_each(|x| *x *= inv);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_fits_the_shapes_it_was_made_for_and_no_other() {
        let out = VisionOutput::zeroed(64, (65, 96), (8, 32));
        assert_eq!(out.image_embeds.len(), 64);
        assert_eq!(out.patch_tokens.len(), 65 * 96);
        assert_eq!(out.latents.len(), 8 * 32);
        out.check_fits(64, (65, 96), (8, 32))
            .expect("its own shapes");
        let err = out
            .check_fits(64, (50, 768), (8, 32))
            .expect_err("another bundle's tokens");
        let text = err.to_string();
        assert!(
            text.contains("patch_tokens 6240") && text.contains("writes 64, 38400, 256"),
            "{text}"
        );
    }
}
