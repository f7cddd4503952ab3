//! `verify`, `Engine::load` and `TextEncoder::load` refuse a broken bundle, each with a message that names
//! the problem and the fix. Each test copies the demo bundle to a temporary directory and breaks one thing.

use std::path::{Path, PathBuf};

use ocellus::infer::{verify, verify_path, InferenceEngine, LoadError, TractEngine};
use ocellus::manifest::{Manifest, Variant};
use ocellus::prompts::{PromptError, TextEncoder};

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

/// The bundle without its reference data.
fn copy_bundle() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(source()).expect("models/demo exists") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).expect("copy");
        }
    }
    tmp
}

fn manifest(dir: &Path) -> Manifest {
    Manifest::load(&dir.join("manifest.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// Rewrites manifest.toml through `edit`.
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let path = dir.join("manifest.toml");
    let mut table: toml::Table = std::fs::read_to_string(&path)
        .expect("read manifest")
        .parse()
        .expect("manifest is TOML");
    edit(&mut table);
    std::fs::write(&path, toml::to_string(&table).expect("serialise")).expect("write manifest");
}

fn file_entry<'a>(table: &'a mut toml::Table, role: &str, variant: &str) -> &'a mut toml::Table {
    table["files"]
        .as_array_mut()
        .expect("files array")
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|f| f["role"].as_str() == Some(role) && f["variant"].as_str() == Some(variant))
        .expect("file entry")
}

fn tensor<'a>(entry: &'a mut toml::Table, kind: &str, name: &str) -> &'a mut toml::Table {
    entry[kind]
        .as_array_mut()
        .expect("tensor list")
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|t| t["name"].as_str() == Some(name))
        .expect("tensor spec")
}

fn engine_error(dir: &Path, variant: Variant) -> LoadError {
    match TractEngine::load(&manifest(dir), variant.into(), 1) {
        Ok(_) => panic!("Engine::load accepted a broken bundle"),
        Err(e) => e,
    }
}

#[test]
fn intact_copy_verifies_and_loads() {
    let dir = copy_bundle();
    let m = manifest(dir.path());
    for variant in [Variant::Fp32, Variant::Int8] {
        verify(&m, variant).unwrap_or_else(|e| panic!("{e}"));
        let engine = TractEngine::load(&m, variant.into(), 1).unwrap_or_else(|e| panic!("{e}"));
        let memory = engine.memory();
        assert_eq!(memory.files.len(), 2);
        assert!(memory
            .files
            .iter()
            .all(|f| f.weight_bytes > 0 && f.weight_bytes <= f.file_bytes));
        assert!(memory.encoder.tensor_bytes >= memory.encoder.peak_live_bytes);
        assert!(memory.encoder.peak_live_bytes > 0 && memory.resampler.peak_live_bytes > 0);
        assert_eq!(memory.encoder.input_bytes, 4 * engine.input_len() as u64);
    }
    let sizes = ocellus::infer::file_sizes(&m, Variant::Int8).unwrap_or_else(|e| panic!("{e}"));
    let fp32 = ocellus::infer::file_sizes(&m, Variant::Fp32).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sizes.len(), 3);
    let total = |s: &[ocellus::infer::FileSize]| s.iter().map(|f| f.weight_bytes).sum::<u64>();
    assert!(
        total(&sizes) < total(&fp32),
        "int8 weights should be smaller than fp32"
    );
}

#[test]
fn missing_manifest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("manifest.toml");
    let err = verify_path(&path, Variant::Fp32).expect_err("no manifest");
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Manifest(_)), "{msg}");
    assert!(
        msg.contains("not found") && msg.contains("manifest.toml"),
        "{msg}"
    );
    assert!(msg.contains("ocellus-tools manifest"), "{msg}");
}

#[test]
fn flipped_byte_fails_the_checksum() {
    let dir = copy_bundle();
    let path = dir.path().join("vision.fp32.onnx");
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let err = verify(&manifest(dir.path()), Variant::Fp32).expect_err("corrupt file");
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Checksum { .. }), "{msg}");
    assert!(
        msg.contains("vision.fp32.onnx") && msg.contains("sha256"),
        "{msg}"
    );
    assert!(
        msg.contains("re-export") || msg.contains("ocellus-tools manifest"),
        "{msg}"
    );
    assert!(matches!(
        engine_error(dir.path(), Variant::Fp32),
        LoadError::Checksum { .. }
    ));
    // The other variant is untouched.
    TractEngine::load(&manifest(dir.path()), Variant::Int8.into(), 1)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn truncated_file_fails_the_size() {
    let dir = copy_bundle();
    let path = dir.path().join("resampler.int8.onnx");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() - 10]).expect("write");
    let err = engine_error(dir.path(), Variant::Int8);
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Size { .. }), "{msg}");
    assert!(
        msg.contains("resampler.int8.onnx") && msg.contains("bytes"),
        "{msg}"
    );
}

#[test]
fn missing_file() {
    let dir = copy_bundle();
    std::fs::remove_file(dir.path().join("text.int8.onnx")).expect("remove");
    let err = verify(&manifest(dir.path()), Variant::Int8).expect_err("missing file");
    let msg = err.to_string();
    assert!(matches!(err, LoadError::MissingFile { .. }), "{msg}");
    assert!(msg.contains("text.int8.onnx"), "{msg}");
    match TextEncoder::load(&manifest(dir.path()), Variant::Int8) {
        Err(PromptError::Load(LoadError::MissingFile { .. })) => {}
        other => panic!("expected a missing-file error, got {other:?}"),
    }
}

#[test]
fn encoder_resampler_shape_mismatch() {
    let dir = copy_bundle();
    edit_manifest(dir.path(), |t| {
        let spec = tensor(file_entry(t, "resampler", "fp32"), "inputs", "patch_tokens");
        let shape = spec["shape"].as_array_mut().expect("shape");
        let n = shape[1].as_integer().expect("N");
        shape[1] = toml::Value::Integer(n + 1);
    });
    let err = engine_error(dir.path(), Variant::Fp32);
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Inconsistent { .. }), "{msg}");
    assert!(
        msg.contains("patch_tokens") && msg.contains("resampler"),
        "{msg}"
    );
    assert!(
        msg.contains("vision.fp32.onnx") && msg.contains("resampler.fp32.onnx"),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_in_manifest() {
    let dir = copy_bundle();
    edit_manifest(dir.path(), |t| {
        tensor(file_entry(t, "vision", "int8"), "outputs", "image_embeds")["dtype"] =
            toml::Value::String("float16".into());
    });
    let err = engine_error(dir.path(), Variant::Int8);
    let msg = err.to_string();
    assert!(
        msg.contains("image_embeds") && msg.contains("float16") && msg.contains("float32"),
        "{msg}"
    );
}

#[test]
fn unknown_tensor_name_in_manifest() {
    let dir = copy_bundle();
    edit_manifest(dir.path(), |t| {
        tensor(file_entry(t, "resampler", "int8"), "outputs", "latents")["name"] =
            toml::Value::String("queries".into());
    });
    let err = engine_error(dir.path(), Variant::Int8);
    let msg = err.to_string();
    assert!(msg.contains("latents") && msg.contains("queries"), "{msg}");
}

/// The manifest is self-consistent but describes another file: the ONNX file's own signature is checked.
#[test]
fn onnx_file_that_does_not_match_its_entry() {
    let dir = copy_bundle();
    // The text model where the vision encoder should be, with size and sha256 updated to match.
    let text = dir.path().join("text.fp32.onnx");
    std::fs::copy(&text, dir.path().join("vision.fp32.onnx")).expect("copy");
    let m = manifest(dir.path());
    let t = m
        .file(ocellus::manifest::ModelRole::Text, Variant::Fp32)
        .expect("text entry");
    let (size, sha) = (t.size, t.sha256.clone());
    edit_manifest(dir.path(), |tab| {
        let e = file_entry(tab, "vision", "fp32");
        e["size"] = toml::Value::Integer(size as i64);
        e["sha256"] = toml::Value::String(sha);
    });
    let err = engine_error(dir.path(), Variant::Fp32);
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Signature { .. }), "{msg}");
    assert!(
        msg.contains("pixel_values") && msg.contains("input_ids"),
        "{msg}"
    );
}

/// A manifest whose input size disagrees with the ONNX file (both edited consistently in the manifest).
#[test]
fn input_shape_differs_from_the_onnx_file() {
    let dir = copy_bundle();
    let m = manifest(dir.path());
    let h = m.preprocess.height as i64;
    edit_manifest(dir.path(), |t| {
        let pre = t["preprocess"].as_table_mut().expect("preprocess");
        pre["height"] = toml::Value::Integer(h * 2);
        let spec = tensor(file_entry(t, "vision", "fp32"), "inputs", "pixel_values");
        spec["shape"].as_array_mut().expect("shape")[2] = toml::Value::Integer(h * 2);
    });
    let err = engine_error(dir.path(), Variant::Fp32);
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Signature { .. }), "{msg}");
    assert!(
        msg.contains("pixel_values") && msg.contains("shape"),
        "{msg}"
    );
}

#[test]
fn missing_variant() {
    let dir = copy_bundle();
    edit_manifest(dir.path(), |t| {
        t["files"]
            .as_array_mut()
            .expect("files")
            .retain(|f| f.get("variant").and_then(toml::Value::as_str) != Some("int8"));
    });
    let err = engine_error(dir.path(), Variant::Int8);
    let msg = err.to_string();
    assert!(matches!(err, LoadError::MissingEntry { .. }), "{msg}");
    assert!(msg.contains("int8") && msg.contains("vision"), "{msg}");
}

#[test]
fn zero_threads_is_refused() {
    let dir = copy_bundle();
    let err = TractEngine::load(&manifest(dir.path()), Variant::Fp32.into(), 0)
        .expect_err("zero threads");
    assert!(err.to_string().contains("model.threads"), "{err}");
}

#[test]
fn tokenizer_without_fixed_padding_is_refused() {
    let dir = copy_bundle();
    let path = dir.path().join("tokenizer.json");
    let mut tokenizer = tokenizers::Tokenizer::from_file(&path).expect("tokenizer");
    tokenizer.with_padding(None);
    tokenizer.save(&path, false).expect("save tokenizer");
    let err = TextEncoder::load(&manifest(dir.path()), Variant::Fp32).expect_err("no padding");
    let msg = err.to_string();
    assert!(matches!(err, PromptError::TokenCount { .. }), "{msg}");
    assert!(
        msg.contains("tokenizer.json") && msg.contains("context_length"),
        "{msg}"
    );
}
