//! The model bundle's manifest (`models/<name>/manifest.toml`), format 1: see `docs/manifest.md`.
//!
//! This module only parses and describes; `infer` verifies the files against it before loading them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The manifest format this runtime reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub tools_version: String,
    pub source: String,
    pub embed_dim: usize,
    pub preprocess: Preprocess,
    pub text: Text,
    pub scores: Scores,
    pub resampler: Resampler,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub evaluation: Option<Evaluation>,
    /// Directory holding the manifest; file paths are relative to it. Set by [`Manifest::load`].
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    ShortestEdge,
    Squash,
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
    #[error("model manifest {path} has format {found}; this ocellus reads format {FORMAT}: re-run `ocellus-tools manifest` with matching tools")]
    Format { path: PathBuf, found: u32 },
}

impl Manifest {
    /// Reads and parses `path`; checks the format number. File contents are verified by `infer`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Missing {
            path: path.to_owned(),
            source,
        })?;
        let mut manifest: Manifest = toml::from_str(&text).map_err(|e| ManifestError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if manifest.format != FORMAT {
            return Err(ManifestError::Format {
                path: path.to_owned(),
                found: manifest.format,
            });
        }
        manifest.dir = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(manifest)
    }

    /// The file entry for `role` and `variant`, if the bundle has one.
    pub fn file(&self, role: ModelRole, variant: Variant) -> Option<&FileEntry> {
        self.files
            .iter()
            .find(|f| f.role == role && f.variant == variant)
    }

    /// Absolute (or manifest-relative) path of a file entry.
    pub fn path_of(&self, entry: &FileEntry) -> PathBuf {
        self.dir.join(&entry.path)
    }

    /// Path of the tokenizer file.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(&self.text.tokenizer)
    }
}
