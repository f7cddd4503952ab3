//! Verification of a model bundle against its manifest, before tract sees any file.
//!
//! Three layers, cheapest first, so the first error is the most direct one:
//! 1. the manifest against itself (fixed tensor names, shapes against `[preprocess]`, `embed_dim`, `[resampler]`,
//!    `[text]`, and the vision encoder's `patch_tokens` against the resampler's input);
//! 2. each file against its manifest entry (exists, size, sha256);
//! 3. each ONNX file's declared inputs and outputs against the entry (names, shapes, dtypes).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tract_onnx::pb;
use tract_onnx::prelude::Framework as _;

use crate::manifest::{
    EngineKind, FileEntry, Manifest, ManifestError, ModelRole, TensorSpec, Variant,
};

/// Why a model bundle could not be verified or loaded. Every message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("model bundle {dir} lists no {role} file for variant {variant} that {engine} runs: re-run `ocellus-tools manifest`, or choose a variant the bundle has")]
    MissingEntry {
        dir: PathBuf,
        role: ModelRole,
        variant: Variant,
        engine: EngineKind,
    },
    #[error("model bundle {dir} is inconsistent: {problem}; re-export the bundle with `ocellus-tools export` so its manifest and files belong together")]
    Inconsistent { dir: PathBuf, problem: String },
    #[error("{what} {path} cannot be read ({source}): re-export the bundle or point model.manifest at a complete one")]
    MissingFile {
        /// What the file is: "vision model", "prototypes", ...
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {actual} bytes but the manifest says {expected}: the file changed after the manifest was written; re-export it or re-run `ocellus-tools manifest`")]
    Size {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path} has sha256 {actual} but the manifest says {expected}: the file is corrupt or was replaced; re-export it or re-run `ocellus-tools manifest`")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path} is not a readable ONNX model ({message}): re-export it")]
    Onnx { path: PathBuf, message: String },
    #[error("{path} does not match its manifest entry: {problem}; re-run `ocellus-tools manifest` (or re-export) so the manifest describes this file")]
    Signature { path: PathBuf, problem: String },
    #[error("tract could not {stage} {path}: {message}; re-export it with opset 17, static shapes and an int8 format tract runs (docs/manifest.md)")]
    Tract {
        path: PathBuf,
        stage: &'static str,
        message: String,
    },
    #[error("cannot use {threads} inference threads: {message}; set model.threads to at least 1")]
    Threads { threads: usize, message: String },
    #[error("model.engine = \"{engine}\" is not available: {hint}")]
    EngineUnavailable {
        engine: crate::manifest::EngineKind,
        hint: &'static str,
    },
    #[error("model.variant {variant}: {problem}")]
    Variant {
        variant: super::RunVariant,
        problem: String,
    },
    #[error("onnxruntime library{}: {problem}; {fix}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    OrtLibrary {
        /// The library, once there is a path to name.
        path: Option<PathBuf>,
        problem: String,
        fix: String,
    },
    #[error("onnxruntime could not {stage} {path}: {message}; re-export it, or run it with model.engine = \"tract\"")]
    Onnxruntime {
        path: PathBuf,
        stage: &'static str,
        message: String,
    },
}

/// Size of one verified model file, for the memory budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSize {
    pub role: ModelRole,
    pub variant: Variant,
    pub path: PathBuf,
    /// Bytes on disk.
    pub file_bytes: u64,
    /// Bytes of the weights the file holds (initializers and constant tensors).
    pub weight_bytes: u64,
}

/// A file that passed all three layers; the parsed protobuf is kept so loading does not read it again.
pub(crate) struct Verified {
    pub entry: FileEntry,
    pub path: PathBuf,
    pub proto: pb::ModelProto,
    pub size: FileSize,
}

/// Verifies the files of `variant` (vision, resampler and, unless the bundle is vision-only, text): manifest
/// consistency, sizes, sha256 and the ONNX signatures. Reads every file once; runs nothing. For `ocellus check`.
pub fn verify(manifest: &Manifest, variant: Variant) -> Result<(), LoadError> {
    file_sizes(manifest, variant).map(|_| ())
}

/// [`Manifest::load`] then [`verify`]: a missing or unreadable manifest is reported as a [`LoadError`] too.
pub fn verify_path(manifest: &Path, variant: Variant) -> Result<Manifest, LoadError> {
    let m = Manifest::load(manifest)?;
    verify(&m, variant)?;
    Ok(m)
}

/// Verifies like [`verify`] and returns the size of each file (vision, resampler, and text unless the bundle
/// is vision-only).
pub fn file_sizes(manifest: &Manifest, variant: Variant) -> Result<Vec<FileSize>, LoadError> {
    file_sizes_for(manifest, variant, EngineKind::Tract)
}

/// [`verify`] of the vision and resampler files `engine` runs (the text encoder always runs in tract).
pub fn verify_for(
    manifest: &Manifest,
    variant: Variant,
    engine: EngineKind,
) -> Result<(), LoadError> {
    file_sizes_for(manifest, variant, engine).map(|_| ())
}

/// [`file_sizes`] of the vision and resampler files `engine` runs, and the text file tract runs.
pub fn file_sizes_for(
    manifest: &Manifest,
    variant: Variant,
    engine: EngineKind,
) -> Result<Vec<FileSize>, LoadError> {
    let vision = [ModelRole::Vision, ModelRole::Resampler];
    check_manifest_for(manifest, variant, &vision, engine)?;
    let mut sizes = vision
        .iter()
        .map(|&role| read_verified_for(manifest, role, variant, engine).map(|v| v.size))
        .collect::<Result<Vec<_>, _>>()?;
    if manifest.text.is_some() {
        check_manifest(manifest, variant, &[ModelRole::Text])?;
        sizes.push(read_verified(manifest, ModelRole::Text, variant)?.size);
    }
    Ok(sizes)
}

/// Layer 1 alone: the entries of `variant` (vision, resampler and, unless the bundle is vision-only, text) against
/// the fixed tensor names and each other, reading no file. Returns the roles checked.
pub fn check_consistency(
    manifest: &Manifest,
    variant: Variant,
) -> Result<Vec<ModelRole>, LoadError> {
    let mut roles = vec![ModelRole::Vision, ModelRole::Resampler];
    if manifest.text.is_some() {
        roles.push(ModelRole::Text);
    }
    check_manifest(manifest, variant, &roles)?;
    Ok(roles)
}

pub(crate) fn entry(
    manifest: &Manifest,
    role: ModelRole,
    variant: Variant,
    engine: EngineKind,
) -> Result<&FileEntry, LoadError> {
    manifest
        .file_for(role, variant, engine)
        .ok_or_else(|| LoadError::MissingEntry {
            dir: manifest.dir.clone(),
            role,
            variant,
            engine,
        })
}

/// Layer 1: the manifest's entries for `roles` against the fixed tensor names and against each other.
pub(crate) fn check_manifest(
    manifest: &Manifest,
    variant: Variant,
    roles: &[ModelRole],
) -> Result<(), LoadError> {
    check_manifest_for(manifest, variant, roles, EngineKind::Tract)
}

/// [`check_manifest`] of the entries `engine` runs.
pub(crate) fn check_manifest_for(
    manifest: &Manifest,
    variant: Variant,
    roles: &[ModelRole],
    engine: EngineKind,
) -> Result<(), LoadError> {
    let bad = |problem: String| LoadError::Inconsistent {
        dir: manifest.dir.clone(),
        problem,
    };
    let e = manifest.embed_dim;
    let pre = &manifest.preprocess;
    for &role in roles {
        let entry = entry(manifest, role, variant, engine)?;
        let file = &entry.path;
        match role {
            ModelRole::Vision => {
                expect_io(file, "input", &entry.inputs, &["pixel_values"], &[]).map_err(bad)?;
                expect_io(
                    file,
                    "output",
                    &entry.outputs,
                    &["patch_tokens", "image_embeds"],
                    &[],
                )
                .map_err(bad)?;
                expect_spec(
                    file,
                    spec(&entry.inputs, "pixel_values"),
                    &[1, 3, pre.height, pre.width],
                    "float32",
                    "[preprocess] height and width",
                )
                .map_err(bad)?;
                let patch = spec(&entry.outputs, "patch_tokens");
                if let Some(p) = patch {
                    if p.shape.len() != 3 || p.shape[0] != 1 || p.dtype != "float32" {
                        return Err(bad(format!(
                            "{file}: patch_tokens is {} {}, expected float32 [1, N, D]",
                            p.dtype,
                            shape_str(&p.shape)
                        )));
                    }
                }
                expect_spec(
                    file,
                    spec(&entry.outputs, "image_embeds"),
                    &[1, e],
                    "float32",
                    "embed_dim",
                )
                .map_err(bad)?;
            }
            ModelRole::Resampler => {
                expect_io(file, "input", &entry.inputs, &["patch_tokens"], &[]).map_err(bad)?;
                expect_io(file, "output", &entry.outputs, &["latents"], &[]).map_err(bad)?;
                let r = &manifest.resampler;
                expect_spec(
                    file,
                    spec(&entry.outputs, "latents"),
                    &[1, r.num_latents, r.latent_dim],
                    "float32",
                    "[resampler] num_latents and latent_dim",
                )
                .map_err(bad)?;
                if let Some(vision) = manifest.file_for(ModelRole::Vision, variant, engine) {
                    let produced = spec(&vision.outputs, "patch_tokens");
                    let consumed = spec(&entry.inputs, "patch_tokens");
                    if let (Some(p), Some(c)) = (produced, consumed) {
                        if p.shape != c.shape || p.dtype != c.dtype {
                            return Err(bad(format!(
                                "the vision encoder {} outputs patch_tokens {} {} but the resampler {} takes {} {}",
                                vision.path,
                                p.dtype,
                                shape_str(&p.shape),
                                file,
                                c.dtype,
                                shape_str(&c.shape)
                            )));
                        }
                    }
                }
            }
            ModelRole::Text => {
                expect_io(
                    file,
                    "input",
                    &entry.inputs,
                    &["input_ids"],
                    &["attention_mask"],
                )
                .map_err(bad)?;
                expect_io(file, "output", &entry.outputs, &["text_embeds"], &[]).map_err(bad)?;
                let t = manifest
                    .text
                    .as_ref()
                    .ok_or_else(|| {
                        bad(format!(
                            "{file} is a text encoder but the manifest has no [text] (tokenizer, context_length)"
                        ))
                    })?
                    .context_length;
                for name in ["input_ids", "attention_mask"] {
                    if let Some(s) = spec(&entry.inputs, name) {
                        expect_spec(file, Some(s), &[1, t], "int64", "[text] context_length")
                            .map_err(bad)?;
                    }
                }
                expect_spec(
                    file,
                    spec(&entry.outputs, "text_embeds"),
                    &[1, e],
                    "float32",
                    "embed_dim",
                )
                .map_err(bad)?;
            }
        }
    }
    Ok(())
}

fn spec<'a>(specs: &'a [TensorSpec], name: &str) -> Option<&'a TensorSpec> {
    specs.iter().find(|s| s.name == name)
}

/// The entry's tensors are exactly `required` plus any of `optional`.
fn expect_io(
    file: &str,
    kind: &str,
    specs: &[TensorSpec],
    required: &[&str],
    optional: &[&str],
) -> Result<(), String> {
    for name in required {
        if spec(specs, name).is_none() {
            let listed: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "{file}: the manifest lists no {kind} named {name} (it lists: {})",
                listed.join(", ")
            ));
        }
    }
    for s in specs {
        if !required.contains(&s.name.as_str()) && !optional.contains(&s.name.as_str()) {
            return Err(format!(
                "{file}: unexpected {kind} {} (allowed: {})",
                s.name,
                required
                    .iter()
                    .chain(optional)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

fn expect_spec(
    file: &str,
    spec: Option<&TensorSpec>,
    shape: &[usize],
    dtype: &str,
    from: &str,
) -> Result<(), String> {
    let Some(s) = spec else { return Ok(()) };
    if s.shape != shape || s.dtype != dtype {
        return Err(format!(
            "{file}: {} is {} {} but {from} require {dtype} {}",
            s.name,
            s.dtype,
            shape_str(&s.shape),
            shape_str(shape)
        ));
    }
    Ok(())
}

pub(crate) fn shape_str(shape: &[usize]) -> String {
    let mut s = String::from("[");
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{d}");
    }
    s.push(']');
    s
}

/// Layers 2 and 3 for one file: size and sha256 (streamed), then the ONNX graph's declared signature.
pub(crate) fn read_verified(
    manifest: &Manifest,
    role: ModelRole,
    variant: Variant,
) -> Result<Verified, LoadError> {
    read_verified_for(manifest, role, variant, EngineKind::Tract)
}

/// [`read_verified`] of the file `engine` runs.
pub(crate) fn read_verified_for(
    manifest: &Manifest,
    role: ModelRole,
    variant: Variant,
    engine: EngineKind,
) -> Result<Verified, LoadError> {
    let entry = entry(manifest, role, variant, engine)?;
    let path = manifest.path_of(entry);
    let file_bytes = check_file(&format!("{role} model"), &path, entry.size, &entry.sha256)?;
    let proto = tract_onnx::onnx()
        .proto_model_for_path(&path)
        .map_err(|e| LoadError::Onnx {
            path: path.clone(),
            message: format!("{e:#}"),
        })?;
    let graph = proto.graph.as_ref().ok_or_else(|| LoadError::Onnx {
        path: path.clone(),
        message: "the model has no graph".into(),
    })?;
    check_signature(graph, entry).map_err(|problem| LoadError::Signature {
        path: path.clone(),
        problem,
    })?;
    let weight_bytes = weight_bytes(graph);
    Ok(Verified {
        entry: entry.clone(),
        size: FileSize {
            role,
            variant,
            path: path.clone(),
            file_bytes,
            weight_bytes,
        },
        path,
        proto,
    })
}

/// Checks a bundle file's size and sha256 against its manifest entry (streamed); returns its size.
pub(crate) fn check_file(
    what: &str,
    path: &Path,
    size: u64,
    sha256: &str,
) -> Result<u64, LoadError> {
    let missing = |source| LoadError::MissingFile {
        what: what.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(missing)?;
    let actual = file.metadata().map_err(missing)?.len();
    if actual != size {
        return Err(LoadError::Size {
            path: path.to_owned(),
            expected: size,
            actual,
        });
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(missing)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    let mut actual_hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(actual_hex, "{b:02x}");
    }
    if !actual_hex.eq_ignore_ascii_case(sha256) {
        return Err(LoadError::Checksum {
            path: path.to_owned(),
            expected: sha256.to_owned(),
            actual: actual_hex,
        });
    }
    Ok(actual)
}

/// numpy's name for an ONNX element type.
fn dtype_name(elem_type: i32) -> String {
    use pb::tensor_proto::DataType;
    match DataType::try_from(elem_type) {
        Ok(DataType::Float) => "float32".into(),
        Ok(DataType::Double) => "float64".into(),
        Ok(DataType::Float16) => "float16".into(),
        Ok(DataType::Int64) => "int64".into(),
        Ok(DataType::Int32) => "int32".into(),
        Ok(DataType::Int8) => "int8".into(),
        Ok(DataType::Uint8) => "uint8".into(),
        Ok(DataType::Bool) => "bool".into(),
        Ok(other) => format!("{other:?}").to_lowercase(),
        Err(_) => format!("element type {elem_type}"),
    }
}

fn dtype_bytes(data_type: i32) -> u64 {
    use pb::tensor_proto::DataType;
    match DataType::try_from(data_type) {
        Ok(DataType::Double | DataType::Int64 | DataType::Uint64 | DataType::Complex64) => 8,
        Ok(DataType::Float | DataType::Int32 | DataType::Uint32) => 4,
        Ok(DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16) => 2,
        Ok(DataType::Complex128) => 16,
        _ => 1,
    }
}

/// A declared ONNX dimension: `Some(n)` when static, `None` when symbolic or absent.
fn declared_dims(v: &pb::ValueInfoProto) -> Option<(i32, Option<Vec<Option<i64>>>)> {
    use pb::tensor_shape_proto::dimension::Value;
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    let dims = t.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(n)) => Some(n),
                _ => None,
            })
            .collect()
    });
    Some((t.elem_type, dims))
}

/// Layer 3: the graph's inputs (initializers excluded) and outputs against the manifest entry. A symbolic
/// dimension in the file is accepted here (the input facts are fixed from the manifest at load and the
/// optimised output facts are checked again then).
fn check_signature(graph: &pb::GraphProto, entry: &FileEntry) -> Result<(), String> {
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let outputs: Vec<&pb::ValueInfoProto> = graph.output.iter().collect();
    for (kind, declared, specs) in [
        ("input", &inputs, &entry.inputs),
        ("output", &outputs, &entry.outputs),
    ] {
        for s in specs.iter() {
            if !declared.iter().any(|d| d.name == s.name) {
                return Err(format!(
                    "the manifest lists {kind} {} but the ONNX file has {kind}s {}",
                    s.name,
                    names(declared)
                ));
            }
        }
        for d in declared.iter() {
            let Some(s) = specs.iter().find(|s| s.name == d.name) else {
                return Err(format!(
                    "the ONNX file has {kind} {} which the manifest does not list (manifest: {})",
                    d.name,
                    specs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            let Some((elem, dims)) = declared_dims(d) else {
                return Err(format!(
                    "{kind} {} has no tensor type in the ONNX file",
                    d.name
                ));
            };
            let dtype = dtype_name(elem);
            if dtype != s.dtype {
                return Err(format!(
                    "{kind} {} is {dtype} in the ONNX file but {} in the manifest",
                    d.name, s.dtype
                ));
            }
            if let Some(dims) = dims {
                let matches = dims.len() == s.shape.len()
                    && dims
                        .iter()
                        .zip(&s.shape)
                        .all(|(d, &m)| d.is_none_or(|d| d == m as i64));
                if !matches {
                    let file_shape: Vec<String> = dims
                        .iter()
                        .map(|d| d.map_or_else(|| "?".to_string(), |d| d.to_string()))
                        .collect();
                    return Err(format!(
                        "{kind} {} has shape [{}] in the ONNX file but {} in the manifest",
                        d.name,
                        file_shape.join(", "),
                        shape_str(&s.shape)
                    ));
                }
            }
        }
    }
    Ok(())
}

fn names(values: &[&pb::ValueInfoProto]) -> String {
    if values.is_empty() {
        return "(none)".into();
    }
    values
        .iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn tensor_bytes(t: &pb::TensorProto) -> u64 {
    let elements: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
    elements * dtype_bytes(t.data_type)
}

/// Bytes of the initializers and of the tensors held by `Constant` nodes.
fn weight_bytes(graph: &pb::GraphProto) -> u64 {
    let init: u64 = graph.initializer.iter().map(tensor_bytes).sum();
    let consts: u64 = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Constant")
        .flat_map(|n| n.attribute.iter())
        .filter_map(|a| a.t.as_ref())
        .map(tensor_bytes)
        .sum();
    init + consts
}
