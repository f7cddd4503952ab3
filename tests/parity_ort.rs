//! The onnxruntime engine (feature `onnxruntime`) against the bundles' reference data (docs/manifest.md,
//! `reference/`: onnxruntime's own outputs for the same files and inputs, from Python): the same library
//! version from Rust through `OrtEngine`'s bound tensors must give the same numbers. Also: the engine
//! allocates nothing on the Rust side per frame, and the library errors name the problem and the fix.
//!
//! The library comes from `ORT_DYLIB_PATH` (`make test-ort` sets it to the tools' venv's); without it these
//! tests fail with the engine's own message saying how to set it. Run with `--nocapture` for the figures.
#![cfg(feature = "onnxruntime")]

use std::path::{Path, PathBuf};

use ocellus::infer::{
    EngineSettings, InferenceEngine, OnnxruntimeSettings, OrtEngine, Provider, RunVariant,
};
use ocellus::manifest::{EngineKind, Manifest};
use ocellus::thread::ThreadRole;

/// The same engine on the same file and input.
const MIN_COSINE: f64 = 0.9999;
/// Largest absolute difference allowed against the reference, relative to the reference's largest
/// magnitude (onnxruntime in Python and from Rust; thread count and kernel choice may reorder sums).
const MAX_ABS_REL: f64 = 1e-5;

#[path = "common/reference.rs"]
mod reference;
use reference::{load_index, normalised, npy_f32};

// ocellus's own allocator counts the allocations of threads registered with a frame-path role; without a
// region reserved, each is a system allocation.
#[global_allocator]
static ALLOC: ocellus::alloc::Allocator = ocellus::alloc::Allocator;

fn bundle(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

fn settings(variant: RunVariant) -> EngineSettings {
    EngineSettings {
        onnxruntime: OnnxruntimeSettings::default(),
        ..EngineSettings::new(EngineKind::Onnxruntime, variant, 1)
    }
}

fn load(dir: &Path, variant: RunVariant) -> OrtEngine {
    let manifest = Manifest::load(&dir.join("manifest.toml")).expect("manifest");
    OrtEngine::load(&manifest, &settings(variant)).unwrap_or_else(|e| panic!("{e}"))
}

/// (min cosine, max |a - b| / max |b|) over one output.
fn compare(ours: &[f32], reference: &[f32]) -> (f64, f64) {
    assert_eq!(
        ours.len(),
        reference.len(),
        "length differs from the reference"
    );
    let (mut dot, mut na, mut nb, mut max_abs, mut max_ref) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in ours.iter().zip(reference) {
        let (a, b) = (f64::from(a), f64::from(b));
        dot += a * b;
        na += a * a;
        nb += b * b;
        max_abs = max_abs.max((a - b).abs());
        max_ref = max_ref.max(b.abs());
    }
    (
        dot / (na.sqrt() * nb.sqrt()).max(f64::MIN_POSITIVE),
        max_abs / max_ref.max(f64::MIN_POSITIVE),
    )
}

fn check(name: &str, variant: RunVariant) {
    let dir = bundle(name);
    let index = load_index(&dir);
    let mut engine = load(&dir, variant);
    assert_eq!(engine.info().engine, EngineKind::Onnxruntime);
    // A bundle with int8 files for onnxruntime (`<role>.int8-ort.onnx`, manifest `engines = ["onnxruntime"]`)
    // has their reference outputs under `int8-ort`; the engine must have loaded those files, not tract's.
    let key = match variant {
        RunVariant::Int8 if index.images[0].outputs.contains_key("int8-ort") => {
            for file in &engine.info().files {
                let name = file.file_name().unwrap().to_string_lossy();
                assert!(
                    name.ends_with(".int8-ort.onnx"),
                    "{name}: the onnxruntime engine loaded a file made for tract"
                );
            }
            "int8-ort".to_owned()
        }
        _ => variant.to_string(),
    };
    let mut out = engine.new_output();
    let mut worst = [(1.0f64, 0.0f64); 3];
    for image in &index.images {
        let pixels = npy_f32(&dir, &image.pixel_values);
        let refs = &image.outputs[&key];
        engine
            .run(pixels.as_slice().expect("C order"), &mut out)
            .unwrap_or_else(|e| panic!("{}: {e}", image.id));
        let embeds = npy_f32(&dir, &refs.image_embeds);
        let got = [
            compare(
                &out.patch_tokens,
                npy_f32(&dir, &refs.patch_tokens).as_slice().unwrap(),
            ),
            compare(&out.image_embeds, &normalised(embeds.as_slice().unwrap())),
            compare(
                &out.latents,
                npy_f32(&dir, &refs.latents).as_slice().unwrap(),
            ),
        ];
        for (w, g) in worst.iter_mut().zip(got) {
            *w = (w.0.min(g.0), w.1.max(g.1));
        }
        let norm = out.image_embeds.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "image_embeds not L2-normalised: {norm}"
        );
    }
    println!(
        "{name} {key} onnxruntime (Rust, OrtEngine) vs {}: patch_tokens cos {:.7} max_abs/max {:.1e}; image_embeds cos {:.7} max_abs/max {:.1e}; latents cos {:.7} max_abs/max {:.1e}",
        index.engine, worst[0].0, worst[0].1, worst[1].0, worst[1].1, worst[2].0, worst[2].1
    );
    for (output, (cos, rel)) in ["patch_tokens", "image_embeds", "latents"]
        .iter()
        .zip(worst)
    {
        assert!(
            cos >= MIN_COSINE,
            "{name} {variant} {output}: cosine {cos} < {MIN_COSINE}"
        );
        assert!(
            rel <= MAX_ABS_REL,
            "{name} {variant} {output}: max_abs/max {rel} > {MAX_ABS_REL}"
        );
    }
}

#[test]
fn demo_fp32_matches_the_reference() {
    check("demo", RunVariant::Fp32);
}

#[test]
fn demo_int8_matches_the_reference() {
    check("demo", RunVariant::Int8);
}

#[test]
fn hf_clip_qformer_fp32_matches_the_reference() {
    check("hf-clip-qformer", RunVariant::Fp32);
}

#[test]
fn hf_clip_qformer_int8_runs_the_files_made_for_onnxruntime() {
    check("hf-clip-qformer", RunVariant::Int8);
}

#[test]
fn a_frame_allocates_nothing_on_the_rust_side() {
    let mut engine = load(&bundle("demo"), RunVariant::Fp32);
    let mut out = engine.new_output();
    let pixels: Vec<f32> = (0..engine.input_len())
        .map(|i| (i % 7) as f32 / 7.0)
        .collect();
    engine.run(&pixels, &mut out).expect("warm-up run");
    let first = out.clone();
    // Counted as the inference thread's (other tests' threads are not registered).
    ocellus::alloc::register_thread(ThreadRole::Inference);
    let before = ocellus::alloc::stats();
    for _ in 0..20 {
        engine.run(&pixels, &mut out).expect("run");
    }
    let made = ocellus::alloc::stats().since(&before);
    ocellus::alloc::unregister_thread();
    assert!(
        made.installed,
        "the test's global allocator is ocellus::alloc::Allocator"
    );
    let n = made.inference.system + made.inference.region;
    assert_eq!(n, 0, "20 runs made {n} Rust allocations");
    assert_eq!(out, first, "the same input gave other outputs");
}

#[test]
fn memory_is_measured_at_start_up() {
    let engine = load(&bundle("demo"), RunVariant::Fp32);
    let m = engine.memory();
    let measured = m.measured.expect("onnxruntime's memory is measured");
    assert!(m.weight_bytes() > 0);
    assert!(
        measured.counted_bytes <= measured.rss_bytes.max(measured.heap_bytes),
        "{measured:?}"
    );
    assert_eq!(m.files.len(), 2);
}

#[test]
fn a_wrong_input_length_is_refused() {
    let mut engine = load(&bundle("demo"), RunVariant::Fp32);
    let mut out = engine.new_output();
    let e = engine.run(&[0.0; 5], &mut out).unwrap_err().to_string();
    assert!(e.contains("pixel_values has 5 values"), "{e}");
}

fn load_error(library: PathBuf) -> String {
    let manifest = Manifest::load(&bundle("demo").join("manifest.toml")).expect("manifest");
    let mut s = settings(RunVariant::Fp32);
    s.onnxruntime = OnnxruntimeSettings {
        library: Some(library),
        providers: vec![Provider::Cpu],
    };
    OrtEngine::load(&manifest, &s).unwrap_err().to_string()
}

#[test]
fn a_missing_library_names_the_problem_and_the_fix() {
    let e = load_error(PathBuf::from("/nonexistent/libonnxruntime.so.1.32.0"));
    assert!(e.contains("/nonexistent/libonnxruntime.so.1.32.0"), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    assert!(e.contains("[onnxruntime] library"), "{e}");
    assert!(e.contains("venv"), "{e}");
}

#[test]
fn a_directory_is_not_a_library() {
    let e = load_error(std::env::temp_dir());
    assert!(e.contains("is not a file"), "{e}");
}
