//! The tract engine: each ONNX file parsed, optimised and planned once by tract, run on the frame path.

use std::time::Instant;

use tract_onnx::prelude::TValue;

use super::{
    check_manifest, executor, l2_normalise, read_verified, EngineInfo, EngineMemory,
    EngineSettings, InferError, InferenceEngine, LoadError, Planned, RunVariant, StageTimes,
    VisionOutput,
};
use crate::manifest::{EngineKind, Manifest, ModelRole};

/// Vision encoder then resampler in tract, planned once, run once per frame.
pub struct TractEngine {
    info: EngineInfo,
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

impl std::fmt::Debug for TractEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractEngine")
            .field("variant", &self.info.variant)
            .field("encoder", &self.encoder.path)
            .field("resampler", &self.resampler.path)
            .finish_non_exhaustive()
    }
}

impl TractEngine {
    /// Verifies the vision and resampler files of `variant` (see [`super::verify`]), then loads, optimises
    /// and plans both with `threads` threads for matrix products (1 = the calling thread only).
    pub fn load(
        manifest: &Manifest,
        variant: RunVariant,
        threads: usize,
    ) -> Result<TractEngine, LoadError> {
        Self::load_with(
            manifest,
            &EngineSettings::new(EngineKind::Tract, variant, threads),
        )
    }

    /// [`TractEngine::load`] from engine settings (the engine must be tract).
    pub fn load_with(
        manifest: &Manifest,
        settings: &EngineSettings,
    ) -> Result<TractEngine, LoadError> {
        let (run, threads) = (settings.variant, settings.threads);
        if run == RunVariant::F16 {
            return Err(LoadError::Variant {
                variant: run,
                problem: "f16 is not available in this build of ocellus yet".into(),
            });
        }
        let variant = run.file_variant();
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
            measured: None,
        };
        let info = EngineInfo {
            engine: EngineKind::Tract,
            variant: run,
            threads,
            files: vec![encoder.path.clone(), resampler.path.clone()],
        };
        Ok(TractEngine {
            info,
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
}

impl InferenceEngine for TractEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn input_len(&self) -> usize {
        self.input_len
    }

    fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    fn memory(&self) -> &EngineMemory {
        &self.memory
    }

    fn new_output(&self) -> VisionOutput {
        VisionOutput {
            image_embeds: vec![0.0; self.embed_dim],
            patch_tokens: vec![0.0; self.patch_shape.0 * self.patch_shape.1],
            patch_tokens_shape: self.patch_shape,
            latents: vec![0.0; self.latents_shape.0 * self.latents_shape.1],
            latents_shape: self.latents_shape,
        }
    }

    /// `out`'s buffers are never reallocated; tract allocates its intermediate tensors (see the module
    /// documentation).
    fn run(
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
}

impl TractEngine {
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
