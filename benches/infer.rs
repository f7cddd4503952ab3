//! Inference per frame for each bundle in models/ (the demo and the HF CLIP + Q-Former test bundle), each
//! variant (fp32, int8), one thread: the vision encoder and the resampler each by itself (timed inside
//! `Engine::run`, which times each model), and both together as the pipeline runs them; and the embedding of
//! 16 prompts with the text encoder. `cargo bench --bench infer`.
//!
//! `ocellus bench` measures the same models in the running pipeline and beside onnxruntime (docs/bench.md).

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use ocellus::infer::{InferenceEngine, TractEngine};
use ocellus::manifest::{Manifest, Variant};
use ocellus::prompts::TextEncoder;
use ocellus::scene::PROMPTS;

const BUNDLES: [&str; 2] = ["demo", "hf-clip-qformer"];
const VARIANTS: [Variant; 2] = [Variant::Fp32, Variant::Int8];

fn manifest(bundle: &str) -> Manifest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(bundle)
        .join("manifest.toml");
    Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn engine(manifest: &Manifest, variant: Variant) -> (TractEngine, Vec<f32>) {
    let engine = TractEngine::load(manifest, variant.into(), 1).unwrap_or_else(|e| panic!("{e}"));
    let pixels = (0..engine.input_len())
        .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
        .collect();
    (engine, pixels)
}

fn vision(c: &mut Criterion) {
    let mut group = c.benchmark_group("infer");
    // Flat sampling: the same number of runs per sample, so the 10-20x slower int8 runs on x86 without
    // VNNI finish in a bounded time.
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for bundle in BUNDLES {
        let manifest = manifest(bundle);
        for variant in VARIANTS {
            let (mut engine, pixels) = engine(&manifest, variant);
            let mut out = engine.new_output();
            let id = |model: &str| BenchmarkId::new(format!("{bundle}/{model}"), variant);
            // Each model alone: the engine times the encoder and the resampler of every run itself.
            for (model, pick) in [
                (
                    "encoder",
                    (|t: ocellus::infer::StageTimes| t.encoder) as fn(_) -> Duration,
                ),
                ("resampler", |t: ocellus::infer::StageTimes| t.resampler),
            ] {
                group.bench_function(id(model), |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| {
                                let t = engine
                                    .run(std::hint::black_box(&pixels), &mut out)
                                    .unwrap_or_else(|e| panic!("{e}"));
                                pick(t)
                            })
                            .sum()
                    })
                });
            }
            group.bench_function(id("encoder+resampler"), |b| {
                b.iter(|| {
                    engine
                        .run(std::hint::black_box(&pixels), &mut out)
                        .unwrap_or_else(|e| panic!("{e}"))
                })
            });
        }
    }
    group.finish();
}

fn text(c: &mut Criterion) {
    let manifest = manifest("demo");
    let prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let mut group = c.benchmark_group("text");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for variant in VARIANTS {
        let mut encoder = TextEncoder::load(&manifest, variant).unwrap_or_else(|e| panic!("{e}"));
        group.bench_function(format!("{} {variant} 16 prompts", manifest.name), |b| {
            b.iter(|| encoder.embed(&prompts).unwrap_or_else(|e| panic!("{e}")))
        });
    }
    group.finish();
}

criterion_group!(benches, vision, text);
criterion_main!(benches);
