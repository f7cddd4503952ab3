//! Manifest verification, tract models, and the per-frame vision encoder + resampler.
//!
//! Lifecycle: [`Engine::load`] verifies the bundle ([`verify`]: sizes, sha256, ONNX signatures, shapes against
//! each other), then parses, optimises and plans each model once and allocates the input tensors; the
//! caller allocates a [`VisionOutput`] once with [`Engine::new_output`]; [`Engine::run`] then writes each
//! frame into the same input tensor and copies the results into the same output buffers.
//!
//! Allocation on the frame path: ocellus's own buffers are reused, but tract allocates every intermediate
//! tensor of every run (the same sizes each time; counted by `tests/infer_alloc.rs`). [`Engine::memory`]
//! gives the sizes an arena in front of those allocations needs.

mod plan;
mod verify;

use std::time::{Duration, Instant};

use crate::manifest::{Manifest, ModelRole, Variant};

pub use plan::PlanMemory;
pub(crate) use plan::{Executor, Planned};
use tract_onnx::prelude::TValue;
pub(crate) use verify::{check_manifest, read_verified};
pub use verify::{file_sizes, verify, verify_path, FileSize, LoadError};

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

/// Wall-clock time of each model in one [`Engine::run`] (monotonic clock).
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
    #[error("the VisionOutput does not fit this engine ({problem}): allocate it with Engine::new_output")]
    OutputShape { problem: String },
    #[error("the {role} model failed: {message}")]
    Tract { role: ModelRole, message: String },
    #[error("the {role} model produced a non-finite {output}: the model or its int8 quantisation is broken; re-export it")]
    NonFinite {
        role: ModelRole,
        output: &'static str,
    },
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

/// Vision encoder then resampler, planned once, run once per frame.
pub struct Engine {
    variant: Variant,
    encoder: Planned,
    resampler: Planned,
    input_len: usize,
    patch_tokens_out: usize,
    image_embeds_out: usize,
    latents_out: usize,
    patch_shape: (usize, usize),
    latents_shape: (usize, usize),
    embed_dim: usize,
    memory: EngineMemory,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("variant", &self.variant)
            .field("encoder", &self.encoder.path)
            .field("resampler", &self.resampler.path)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Verifies the vision and resampler files of `variant` (see [`verify`]), then loads, optimises and
    /// plans both with `threads` threads for matrix products (1 = the calling thread only).
    pub fn load(
        manifest: &Manifest,
        variant: Variant,
        threads: usize,
    ) -> Result<Engine, LoadError> {
        check_manifest(
            manifest,
            variant,
            &[ModelRole::Vision, ModelRole::Resampler],
        )?;
        let vision = read_verified(manifest, ModelRole::Vision, variant)?;
        let resampler = read_verified(manifest, ModelRole::Resampler, variant)?;
        let files = vec![vision.size.clone(), resampler.size.clone()];
        let executor = executor(threads)?;
        let encoder = Planned::build(vision, executor.clone())?;
        let resampler = Planned::build(resampler, executor)?;

        let missing = |p: &Planned, what: &str| LoadError::Signature {
            path: p.path.clone(),
            problem: format!("the optimised model has no {what}"),
        };
        if encoder.input_index("pixel_values") != Some(0) || encoder.input_names().len() != 1 {
            return Err(missing(&encoder, "single input pixel_values"));
        }
        if resampler.input_names().len() != 1 {
            return Err(missing(&resampler, "single input patch_tokens"));
        }
        let patch_tokens_out = encoder
            .output_index("patch_tokens")
            .ok_or_else(|| missing(&encoder, "output patch_tokens"))?;
        let image_embeds_out = encoder
            .output_index("image_embeds")
            .ok_or_else(|| missing(&encoder, "output image_embeds"))?;
        let latents_out = resampler
            .output_index("latents")
            .ok_or_else(|| missing(&resampler, "output latents"))?;

        let pre = &manifest.preprocess;
        // check_manifest guarantees the vision entry's patch_tokens is [1, N, D].
        let patch = manifest
            .file(ModelRole::Vision, variant)
            .and_then(|e| e.outputs.iter().find(|s| s.name == "patch_tokens"))
            .map(|s| (s.shape[1], s.shape[2]))
            .ok_or_else(|| missing(&encoder, "patch_tokens entry"))?;
        let latents_shape = (
            manifest.resampler.num_latents,
            manifest.resampler.latent_dim,
        );
        let embed_dim = manifest.embed_dim;
        let output_bytes =
            4 * (embed_dim + patch.0 * patch.1 + latents_shape.0 * latents_shape.1) as u64;
        let memory = EngineMemory {
            files,
            encoder: encoder.memory,
            resampler: resampler.memory,
            output_bytes,
        };
        Ok(Engine {
            variant,
            input_len: 3 * pre.height * pre.width,
            encoder,
            resampler,
            patch_tokens_out,
            image_embeds_out,
            latents_out,
            patch_shape: patch,
            latents_shape,
            embed_dim,
            memory,
        })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// 3 * H * W: the length of `pixel_values` for [`Engine::run`].
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// E: the width of `image_embeds`.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// Sizes for the memory budget.
    pub fn memory(&self) -> &EngineMemory {
        &self.memory
    }

    /// Output buffers of the right sizes; allocate once and pass to every [`Engine::run`].
    pub fn new_output(&self) -> VisionOutput {
        VisionOutput {
            image_embeds: vec![0.0; self.embed_dim],
            patch_tokens: vec![0.0; self.patch_shape.0 * self.patch_shape.1],
            patch_tokens_shape: self.patch_shape,
            latents: vec![0.0; self.latents_shape.0 * self.latents_shape.1],
            latents_shape: self.latents_shape,
        }
    }

    /// Runs the encoder on `pixel_values` (NCHW, 3*H*W values), then the resampler on its patch tokens,
    /// and copies the results into `out` (image_embeds L2-normalised). `out`'s buffers are never
    /// reallocated; tract allocates its intermediate tensors (see the module documentation).
    pub fn run(
        &mut self,
        pixel_values: &[f32],
        out: &mut VisionOutput,
    ) -> Result<StageTimes, InferError> {
        if pixel_values.len() != self.input_len {
            return Err(InferError::InputLength {
                expected: self.input_len,
                actual: pixel_values.len(),
            });
        }
        self.check_output(out)?;
        let failed = |role: ModelRole| {
            move |e: anyhow::Error| InferError::Tract {
                role,
                message: format!("{e:#}"),
            }
        };

        let start = Instant::now();
        self.encoder
            .with_input(0, |input: &mut [f32]| input.copy_from_slice(pixel_values))
            .map_err(failed(ModelRole::Vision))?;
        let mut encoded = self.encoder.run().map_err(failed(ModelRole::Vision))?;
        let embeds =
            read_f32(&encoded, self.image_embeds_out).map_err(failed(ModelRole::Vision))?;
        out.image_embeds.copy_from_slice(embeds);
        let tokens =
            read_f32(&encoded, self.patch_tokens_out).map_err(failed(ModelRole::Vision))?;
        out.patch_tokens.copy_from_slice(tokens);
        // Moved, not cloned: the resampler holds the only reference and may reuse the buffer.
        let tokens: TValue = encoded.swap_remove(self.patch_tokens_out);
        drop(encoded);
        let encoder = start.elapsed();

        let start = Instant::now();
        let resampled = self
            .resampler
            .run_with(std::iter::once(tokens).collect())
            .map_err(failed(ModelRole::Resampler))?;
        let latents =
            read_f32(&resampled, self.latents_out).map_err(failed(ModelRole::Resampler))?;
        out.latents.copy_from_slice(latents);
        drop(resampled);
        let resampler = start.elapsed();

        if !l2_normalise(&mut out.image_embeds) {
            return Err(InferError::NonFinite {
                role: ModelRole::Vision,
                output: "image_embeds",
            });
        }
        if !out.latents.iter().all(|x| x.is_finite()) {
            return Err(InferError::NonFinite {
                role: ModelRole::Resampler,
                output: "latents",
            });
        }
        Ok(StageTimes { encoder, resampler })
    }

    fn check_output(&self, out: &VisionOutput) -> Result<(), InferError> {
        let (n, d) = self.patch_shape;
        let (l, dl) = self.latents_shape;
        if out.image_embeds.len() != self.embed_dim
            || out.patch_tokens.len() != n * d
            || out.latents.len() != l * dl
        {
            return Err(InferError::OutputShape {
                problem: format!(
                    "image_embeds {}, patch_tokens {}, latents {} values; this engine writes {}, {}, {}",
                    out.image_embeds.len(),
                    out.patch_tokens.len(),
                    out.latents.len(),
                    self.embed_dim,
                    n * d,
                    l * dl
                ),
            });
        }
        Ok(())
    }
}

fn read_f32(values: &[TValue], ix: usize) -> anyhow::Result<&[f32]> {
    let value = values
        .get(ix)
        .ok_or_else(|| anyhow::anyhow!("missing output {ix}"))?;
    value.try_as_plain_ram()?.as_slice::<f32>()
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
