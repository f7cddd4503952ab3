//! Inference per frame (vision encoder + resampler) for the demo bundle in fp32 and int8, one thread, and
//! embedding of 16 prompts with the text encoder. `cargo bench --bench infer`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use ocellus::infer::Engine;
use ocellus::manifest::{Manifest, Variant};
use ocellus::prompts::TextEncoder;
use ocellus::scene::PROMPTS;

fn manifest() -> Manifest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/manifest.toml");
    Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn vision(c: &mut Criterion) {
    let manifest = manifest();
    let mut group = c.benchmark_group("vision+resampler");
    for variant in [Variant::Fp32, Variant::Int8] {
        let mut engine = Engine::load(&manifest, variant, 1).unwrap_or_else(|e| panic!("{e}"));
        let mut out = engine.new_output();
        let pixels: Vec<f32> = (0..engine.input_len())
            .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
            .collect();
        group.bench_function(format!("{} {variant}", manifest.name), |b| {
            b.iter(|| {
                engine
                    .run(std::hint::black_box(&pixels), &mut out)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    }
    group.finish();
}

fn text(c: &mut Criterion) {
    let manifest = manifest();
    let prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let mut group = c.benchmark_group("text");
    for variant in [Variant::Fp32, Variant::Int8] {
        let mut encoder = TextEncoder::load(&manifest, variant).unwrap_or_else(|e| panic!("{e}"));
        group.bench_function(format!("{} {variant} 16 prompts", manifest.name), |b| {
            b.iter(|| encoder.embed(&prompts).unwrap_or_else(|e| panic!("{e}")))
        });
    }
    group.finish();
}

criterion_group!(benches, vision, text);
criterion_main!(benches);
