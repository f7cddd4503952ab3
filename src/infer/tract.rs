//! The tract engine: each ONNX file parsed, optimised and planned once by tract, run on the frame path.

use std::time::Instant;

use tract_onnx::prelude::{f16, Datum, TValue};

use super::plan::Precision;
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
        let precision = if run == RunVariant::F16 {
            let cpu = super::select::CpuFeatures::native();
            if !cpu.has_f16_arithmetic() {
                return Err(LoadError::Variant {
                    variant: run,
                    problem: format!(
                        "this CPU ({cpu}) has no f16 arithmetic: tract would emulate it, far slower than fp32; use fp32 or auto"
                    ),
                });
            }
            Precision::F16
        } else {
            Precision::AsFile
        };
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
        let encoder = Planned::build(vision, executor.clone(), precision)?;
        let resampler = Planned::build(resampler, executor, precision)?;

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
        let mut engine = TractEngine {
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
        };
        if run == RunVariant::F16 {
            accept_f16(manifest, &mut engine, threads)?;
        }
        Ok(engine)
    }
}

/// The cosine an f16 translation must keep against fp32: the lowest the bundle's own int8 files reached
/// (its manifest's parity, int8 against fp32), so f16 is held to what the bundle already accepts; 0.999
/// without int8 figures.
fn f16_target(manifest: &Manifest) -> f64 {
    manifest
        .files
        .iter()
        .filter(|f| f.variant == crate::manifest::Variant::Int8)
        .filter(|f| matches!(f.role, ModelRole::Vision | ModelRole::Resampler))
        .filter_map(|f| f.parity.as_ref())
        .flat_map(|p| p.outputs.iter())
        .filter(|o| o.name == "image_embeds" || o.name == "latents")
        .map(|o| o.cosine)
        .fold(None, |a: Option<f64>, c| Some(a.map_or(c, |a| a.min(c))))
        .unwrap_or(0.999)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Accepts an f16 engine only if its outputs stay within [`f16_target`] of fp32: on the bundle's reference
/// inputs against the fp32 reference outputs (`reference/`), or, without reference data, against the fp32
/// files run in tract on a fixed input.
fn accept_f16(manifest: &Manifest, f16: &mut TractEngine, threads: usize) -> Result<(), LoadError> {
    let target = f16_target(manifest);
    let mut out = f16.new_output();
    let mut worst = (f64::INFINITY, f64::INFINITY);
    let mut check = |pixels: &[f32], embeds: &[f32], latents: &[f32]| -> Result<(), LoadError> {
        f16.run(pixels, &mut out).map_err(|e| LoadError::Variant {
            variant: RunVariant::F16,
            problem: format!("the f16 translation failed to run: {e}"),
        })?;
        worst.0 = worst.0.min(cosine(&out.image_embeds, embeds));
        worst.1 = worst.1.min(cosine(&out.latents, latents));
        Ok(())
    };
    let reference = reference_pairs(manifest);
    if reference.is_empty() {
        let mut fp32 = TractEngine::load(manifest, RunVariant::Fp32, threads)?;
        let pixels: Vec<f32> = (0..fp32.input_len())
            .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
            .collect();
        let mut want = fp32.new_output();
        fp32.run(&pixels, &mut want)
            .map_err(|e| LoadError::Variant {
                variant: RunVariant::F16,
                problem: format!("the fp32 model it is checked against failed: {e}"),
            })?;
        check(&pixels, &want.image_embeds, &want.latents)?;
    } else {
        for (pixels, embeds, latents) in &reference {
            check(pixels, embeds, latents)?;
        }
    }
    tracing::info!(
        image_embeds_cosine = worst.0,
        latents_cosine = worst.1,
        target,
        "f16 translation checked against fp32"
    );
    if worst.0 < target || worst.1 < target {
        return Err(LoadError::Variant {
            variant: RunVariant::F16,
            problem: format!(
                "its outputs drift from fp32 (image_embeds cosine {:.6}, latents {:.6}) below the bundle's parity target {target:.6}: use fp32 (auto falls back to it)",
                worst.0, worst.1
            ),
        });
    }
    Ok(())
}

/// The bundle's reference inputs with their fp32 outputs (`reference/index.toml`): (pixel_values,
/// image_embeds, latents) per image. Empty if there is no usable reference data.
fn reference_pairs(manifest: &Manifest) -> Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let dir = manifest.dir.join("reference");
    let Ok(text) = std::fs::read_to_string(dir.join("index.toml")) else {
        return Vec::new();
    };
    let Ok(index) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let read = |rel: &str| -> Option<Vec<f32>> {
        let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(dir.join(rel)).ok()?;
        Some(a.iter().copied().collect())
    };
    let images = index.get("images").and_then(|v| v.as_array());
    images
        .into_iter()
        .flatten()
        .filter_map(|img| {
            let pv = read(img.get("pixel_values")?.as_str()?)?;
            let fp32 = img.get("outputs")?.get("fp32")?;
            let embeds = read(fp32.get("image_embeds")?.as_str()?)?;
            let latents = read(fp32.get("latents")?.as_str()?)?;
            Some((pv, embeds, latents))
        })
        .collect()
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
        VisionOutput::zeroed(self.embed_dim, self.patch_shape, self.latents_shape)
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
        out.check_fits(self.embed_dim, self.patch_shape, self.latents_shape)?;
        let failed = |role: ModelRole| {
            move |e: anyhow::Error| InferError::Tract {
                role,
                message: format!("{e:#}"),
            }
        };

        let start = Instant::now();
        if self.info.variant == RunVariant::F16 {
            self.encoder
                .with_input(0, |input: &mut [f16]| {
                    for (d, s) in input.iter_mut().zip(pixel_values) {
                        *d = f16::from_f32(*s);
                    }
                })
                .map_err(failed(ModelRole::Vision))?;
        } else {
            self.encoder
                .with_input(0, |input: &mut [f32]| input.copy_from_slice(pixel_values))
                .map_err(failed(ModelRole::Vision))?;
        }
        let mut encoded = self.encoder.run().map_err(failed(ModelRole::Vision))?;
        read_into(&encoded, self.image_embeds_out, &mut out.image_embeds)
            .map_err(failed(ModelRole::Vision))?;
        read_into(&encoded, self.patch_tokens_out, &mut out.patch_tokens)
            .map_err(failed(ModelRole::Vision))?;
        // Moved, not cloned: the resampler holds the only reference and may reuse the buffer.
        let tokens: TValue = encoded.swap_remove(self.patch_tokens_out);
        drop(encoded);
        let encoder = start.elapsed();

        let start = Instant::now();
        let resampled = self
            .resampler
            .run_with(std::iter::once(tokens).collect())
            .map_err(failed(ModelRole::Resampler))?;
        read_into(&resampled, self.latents_out, &mut out.latents)
            .map_err(failed(ModelRole::Resampler))?;
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

/// Copies output `ix` (f32, or f16 in an f16 model) into `out`, which has its length.
fn read_into(values: &[TValue], ix: usize, out: &mut [f32]) -> anyhow::Result<()> {
    let value = values
        .get(ix)
        .ok_or_else(|| anyhow::anyhow!("missing output {ix}"))?;
    let view = value.try_as_plain_ram()?;
    if value.datum_type() == f16::datum_type() {
        for (d, s) in out.iter_mut().zip(view.as_slice::<f16>()?) {
            *d = s.to_f32();
        }
    } else {
        out.copy_from_slice(view.as_slice::<f32>()?);
    }
    Ok(())
}
