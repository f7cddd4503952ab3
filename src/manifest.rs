//! The model bundle's manifest (`models/<name>/manifest.toml`), formats 1 and 2: see `docs/manifest.md`.
//!
//! Format 2 adds, all optional: vision-only bundles (no `[text]`), letterbox preprocessing (`pad`), few-shot
//! image `[prototypes]`, and per file the engines it is for (`engines`) and its int8 form (`quant`). A format 1
//! manifest reads as it always did.
//!
//! This module only parses and describes; `infer` verifies the files against it before loading them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The newest manifest format this runtime reads (the tools write it).
pub const FORMAT: u32 = 2;
/// Every format this runtime reads.
pub const FORMATS: [u32; 2] = [1, 2];

/// The largest model dimension (embedding, latents, context length) a manifest may declare.
pub const MAX_DIM: usize = 1 << 20;
/// The largest model input side, in pixels.
pub const MAX_SIDE: usize = 1 << 16;
/// The largest model file (1 TiB).
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// The most elements one tensor of a file entry may have.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub tools_version: String,
    pub source: String,
    pub embed_dim: usize,
    pub preprocess: Preprocess,
    /// The tokenizer and context length; `None` in a vision-only bundle (format 2).
    #[serde(default)]
    pub text: Option<Text>,
    /// How similarities become scores; required with `[text]` or `[prototypes]`.
    #[serde(default)]
    pub scores: Option<Scores>,
    pub resampler: Resampler,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub evaluation: Option<Evaluation>,
    /// Few-shot image prototypes, scored like text prompts (format 2).
    #[serde(default)]
    pub prototypes: Option<Prototypes>,
    /// Directory holding the manifest; file paths are relative to it. Set by [`Manifest::load`].
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Scale so the shorter side fits, then crop (`crop = "center"`).
    ShortestEdge,
    /// Scale each axis to the model's size independently.
    Squash,
    /// Scale so the longer side fits (keeping the aspect ratio), then pad to the model's size with `pad`.
    Letterbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Bilinear,
    Bicubic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crop {
    Center,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    pub height: usize,
    pub width: usize,
    pub resize: ResizeMode,
    pub interpolation: Interpolation,
    pub crop: Crop,
    pub channel_order: ChannelOrder,
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The padding colour of `resize = "letterbox"` (RGB, u8 before rescale and normalisation).
    #[serde(default)]
    pub pad: [u8; 3],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Text {
    pub tokenizer: String,
    pub context_length: usize,
    pub pad_id: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    pub logit_scale: f32,
    #[serde(default)]
    pub logit_bias: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResamplerKind {
    Perceiver,
    Qformer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resampler {
    pub kind: ResamplerKind,
    pub num_latents: usize,
    pub latent_dim: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    Vision,
    Resampler,
    Text,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Fp32,
    Int8,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Fp32 => "fp32",
            Variant::Int8 => "int8",
        })
    }
}

impl std::fmt::Display for ModelRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelRole::Vision => "vision",
            ModelRole::Resampler => "resampler",
            ModelRole::Text => "text",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputParity {
    pub name: String,
    pub cosine: f64,
    pub max_abs: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parity {
    pub reference: String,
    pub outputs: Vec<OutputParity>,
}

/// An inference engine a file can be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    Tract,
    Onnxruntime,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Tract => "tract",
            EngineKind::Onnxruntime => "onnxruntime",
        })
    }
}

/// How an int8 file is quantized (docs/manifest.md: each engine has the form it runs best).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantFormat {
    /// QLinearMatMul/QLinearConv with int8 symmetric activations: tract's fast and correct form.
    Qoperator,
    /// QuantizeLinear/DequantizeLinear pairs: onnxruntime fuses them into int8 kernels.
    Qdq,
    /// Weights int8, activations quantized at run time (MatMulInteger).
    Dynamic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub role: ModelRole,
    pub variant: Variant,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub parity: Option<Parity>,
    /// The engines this file is for; `None`: every engine.
    #[serde(default)]
    pub engines: Option<Vec<EngineKind>>,
    /// The int8 form (int8 files only).
    #[serde(default)]
    pub quant: Option<QuantFormat>,
}

impl FileEntry {
    /// Whether `engine` should run this file.
    pub fn is_for(&self, engine: EngineKind) -> bool {
        self.engines.as_ref().is_none_or(|e| e.contains(&engine))
    }
}

/// `[prototypes]`: labelled image-embedding prototypes (means of a few images' embeddings), scored like text
/// prompts. Few-shot prototypes, not language.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prototypes {
    /// `.npy`, f32 [K, E], each row L2-normalised.
    pub file: String,
    /// K labels, row k is `labels[k]`.
    pub labels: Vec<String>,
    pub size: u64,
    pub sha256: String,
    /// How many images made each prototype.
    #[serde(default)]
    pub images: Vec<usize>,
    /// Which vision file computed them.
    #[serde(default)]
    pub variant: Option<Variant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalFigures {
    pub top1: f64,
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    pub median_rank: f64,
}

/// `deny_unknown_fields` cannot be combined with `flatten` in serde (it rejects every flattened key), so
/// this table accepts any other key as a variant's figures; each of those is still strict.
#[derive(Debug, Clone, Deserialize)]
pub struct Evaluation {
    pub scenes: usize,
    pub seed: u64,
    #[serde(flatten)]
    pub variants: BTreeMap<String, EvalFigures>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("model manifest {path} not found: run `ocellus-tools manifest` or set model.manifest in the config ({source})")]
    Missing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model manifest {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("model manifest {path} has format {found}; this ocellus reads formats 1 and {FORMAT}: re-run `ocellus-tools manifest` with matching tools")]
    Format { path: PathBuf, found: u32 },
}

impl Manifest {
    /// Reads and parses `path`; checks the format number. File contents are verified by `infer`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Missing {
            path: path.to_owned(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses `text` as the manifest at `path` (errors name it; file paths are relative to its directory), as
    /// [`Manifest::load`] does once it has read the file.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if !FORMATS.contains(&manifest.format) {
            return Err(ManifestError::Format {
                path: path.to_owned(),
                found: manifest.format,
            });
        }
        let invalid = |message: &str| ManifestError::Invalid {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        if manifest.format == 1 && manifest.text.is_none() {
            return Err(invalid(
                "format 1 requires [text]; a vision-only bundle is format 2",
            ));
        }
        if (manifest.text.is_some() || manifest.prototypes.is_some()) && manifest.scores.is_none() {
            return Err(invalid(
                "[scores] is missing: a bundle with [text] or [prototypes] needs logit_scale (and logit_bias)",
            ));
        }
        if manifest.preprocess.resize == ResizeMode::Letterbox
            && manifest.preprocess.crop != Crop::None
        {
            return Err(invalid(
                "[preprocess] resize = \"letterbox\" needs crop = \"none\"",
            ));
        }
        if let Some(message) = manifest.out_of_bounds() {
            return Err(invalid(&message));
        }
        manifest.dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(manifest)
    }

    /// The first size or dimension beyond what a model can have, if any: the memory plan multiplies and sums
    /// them before any file is read, so the manifest's numbers alone must not overflow it.
    fn out_of_bounds(&self) -> Option<String> {
        let dims = [
            ("embed_dim", self.embed_dim, MAX_DIM),
            ("[preprocess] height", self.preprocess.height, MAX_SIDE),
            ("[preprocess] width", self.preprocess.width, MAX_SIDE),
            (
                "[resampler] num_latents",
                self.resampler.num_latents,
                MAX_DIM,
            ),
            ("[resampler] latent_dim", self.resampler.latent_dim, MAX_DIM),
            (
                "[text] context_length",
                self.text.as_ref().map_or(0, |t| t.context_length),
                MAX_DIM,
            ),
        ];
        if let Some((key, value, max)) = dims.iter().find(|(_, v, max)| v > max) {
            return Some(format!("{key} = {value} is more than {max}"));
        }
        for f in &self.files {
            if f.size > MAX_FILE_BYTES {
                return Some(format!(
                    "file {} has size = {}, more than 1 TiB",
                    f.path, f.size
                ));
            }
            for t in f.inputs.iter().chain(&f.outputs) {
                let elements = t
                    .shape
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
                if elements.is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
                    return Some(format!(
                        "file {} tensor {} has shape {:?}: more than 2^32 elements",
                        f.path, t.name, t.shape
                    ));
                }
            }
        }
        None
    }

    /// The file entry for `role` and `variant` that tract runs, if the bundle has one.
    pub fn file(&self, role: ModelRole, variant: Variant) -> Option<&FileEntry> {
        self.file_for(role, variant, EngineKind::Tract)
    }

    /// The file entry for `role` and `variant` that `engine` runs: the first entry with that role and variant
    /// whose `engines` includes it (or that names none).
    pub fn file_for(
        &self,
        role: ModelRole,
        variant: Variant,
        engine: EngineKind,
    ) -> Option<&FileEntry> {
        self.files
            .iter()
            .find(|f| f.role == role && f.variant == variant && f.is_for(engine))
    }

    /// Whether the bundle has a text encoder (`[text]` and a text file of some variant).
    pub fn has_text(&self) -> bool {
        self.text.is_some() && self.files.iter().any(|f| f.role == ModelRole::Text)
    }

    /// Absolute (or manifest-relative) path of a file entry.
    pub fn path_of(&self, entry: &FileEntry) -> PathBuf {
        self.dir.join(&entry.path)
    }

    /// Path of the tokenizer file, if the bundle has a text encoder.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        self.text.as_ref().map(|t| self.dir.join(&t.tokenizer))
    }
}
