//! The runtime assembled from a configuration (`Runtime::build`), on bundles other than the demo: a vision-only
//! bundle publishes embeddings and latents without scores, or scores its few-shot prototypes; named prompts
//! with a vision-only bundle are refused, naming the key.
//!
//! The vision-only bundles are made here from the committed tiny Hugging Face CLIP + Q-Former bundle
//! (models/hf-clip-qformer): its vision and resampler files with a format 2 manifest that has no `[text]`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ocellus::config::{Config, Origin};
use ocellus::runtime::{Runtime, RuntimeOptions, ShmTarget};
use ocellus::shm::{layout, ShmReader};
use sha2::Digest;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The manifest of models/hf-clip-qformer without its text encoder: format 2, no `[text]`, no text files, and
/// `extra` appended (e.g. a `[prototypes]` table); the vision and resampler fp32 files copied into `dir`.
fn vision_only_bundle(dir: &Path, extra: &str) -> PathBuf {
    let src = root().join("models/hf-clip-qformer");
    let text = std::fs::read_to_string(src.join("manifest.toml")).expect("manifest");
    let mut out = String::new();
    for block in text.split("\n[") {
        let header = block.lines().next().unwrap_or_default();
        let keep = !(header.starts_with("text]")
            || (header.starts_with("[files]]") && block.contains("role = \"text\""))
            || (header.starts_with("[files]]") && block.contains("variant = \"int8\""))
            || (header.starts_with("scores]") && !extra.contains("[prototypes]")));
        if keep {
            if !out.is_empty() {
                out.push_str("\n[");
            }
            out.push_str(block);
        }
    }
    let out = out.replace("format = 1", "format = 2");
    for f in ["vision.fp32.onnx", "resampler.fp32.onnx"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy model file");
    }
    let path = dir.join("manifest.toml");
    std::fs::write(&path, format!("{out}\n{extra}")).expect("write manifest");
    path
}

/// Two prototypes (unit rows of width 32, the bundle's embed_dim) as an .npy, and their `[prototypes]` table.
fn prototypes(dir: &Path) -> String {
    let mut a = ndarray::Array2::<f32>::zeros((2, 32));
    a[[0, 0]] = 1.0;
    a[[1, 1]] = 1.0;
    let path = dir.join("prototypes.npy");
    ndarray_npy::write_npy(&path, &a).expect("write npy");
    let bytes = std::fs::read(&path).expect("read npy");
    let sha = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    format!(
        "[prototypes]\nfile = \"prototypes.npy\"\nlabels = [\"door\", \"cup\"]\nsize = {}\nsha256 = \"{sha}\"\nimages = [3, 4]\nvariant = \"fp32\"\n",
        bytes.len()
    )
}

fn config(manifest: &Path, extra: &str) -> Config {
    let text = format!(
        "[[camera]]\nsource = \"synthetic\"\nwidth = 160\nheight = 120\nfps = 0\n\n[model]\nmanifest = \"{}\"\nvariant = \"fp32\"\n\n[memory]\nlock = false\n{extra}",
        manifest.display()
    );
    Config::parse(&text, Origin::Embedded).unwrap_or_else(|e| panic!("{e}"))
}

/// Builds and runs `config` for at least 10 frames publishing into a segment; returns what a reader sees of
/// camera 0's last sample and the prompt table.
fn run_and_read(config: &Config, tag: &str) -> (ocellus::shm::Sample, Vec<String>) {
    let name = format!("ocellus-test-runtime-{tag}-{}", std::process::id());
    let mut runtime = Runtime::build(
        config,
        RuntimeOptions {
            shm: ShmTarget::Named(name.clone()),
            take_memory: false,
            ..RuntimeOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    runtime.start().unwrap_or_else(|e| panic!("{e}"));
    let mut reader = ShmReader::open(&name).expect("open the segment");
    let mut sample = reader.new_sample();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(info) = reader.read_latest(0, &mut sample) {
            if info.sequence >= 10 {
                break;
            }
        }
        assert!(Instant::now() < until, "watchdog: fewer than 10 frames");
        std::thread::sleep(Duration::from_millis(10));
    }
    let labels = reader.prompts().expect("prompt table").labels;
    runtime.stop();
    (sample, labels)
}

#[test]
fn a_vision_only_bundle_publishes_embeddings_and_latents_without_scores() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = vision_only_bundle(dir.path(), "");
    let (sample, labels) = run_and_read(&config(&manifest, ""), "vision-only");
    assert_eq!(sample.num_scores, 0);
    assert!(labels.is_empty());
    assert_eq!(
        sample.meta.flags & layout::FLAG_DEGRADED,
        0,
        "no scores by design is not degraded"
    );
    let norm = sample.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "embedding norm {norm}");
    assert!(sample.latents.iter().any(|&x| x != 0.0));
}

#[test]
fn a_vision_only_bundle_scores_its_prototypes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = prototypes(dir.path());
    let manifest = vision_only_bundle(dir.path(), &table);
    let (sample, labels) = run_and_read(&config(&manifest, ""), "prototypes");
    assert_eq!(labels, ["door", "cup"]);
    assert_eq!(sample.num_scores, 2);
    let sum: f32 = sample.scores().iter().sum();
    assert!(
        (sum - 1.0).abs() < 1e-4,
        "softmax over the prototypes: {sum}"
    );
    assert_eq!(sample.meta.flags & layout::FLAG_DEGRADED, 0);
}

#[test]
fn named_prompts_with_a_vision_only_bundle_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = vision_only_bundle(dir.path(), "");
    let config = config(&manifest, "\n[prompts]\nlabels = [\"a person\"]\n");
    let err = Runtime::build(
        &config,
        RuntimeOptions {
            shm: ShmTarget::Off,
            take_memory: false,
            ..RuntimeOptions::default()
        },
    )
    .expect_err("text prompts without a text encoder");
    assert!(err.message.contains("prompts.labels"), "{err}");
    assert!(err.message.contains("vision-only"), "{err}");
    assert_eq!(err.kind.exit_code(), 2);
    let report = ocellus::runtime::check(&config);
    assert!(
        report.problems.iter().any(|p| p.contains("prompts.labels")),
        "{:?}",
        report.problems
    );
}
