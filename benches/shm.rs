//! Shared-memory publish and read_latest for the demo payload (E=64, L=16, D=96, K=16), each beside a plain
//! memcpy of the same number of payload bytes in the same run, for f32 and f16 latents.
//!
//! `cargo bench --bench shm`; the ratios to memcpy are what to compare across machines.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ocellus::shm::{Dims, LatentsDtype, Sample, SampleMeta, ShmReader, ShmWriter, WriterConfig};

const E: usize = 64;
const L: usize = 16;
const D: usize = 96;
const K: usize = 16;

fn bench_dtype(c: &mut Criterion, dtype: LatentsDtype) {
    let dims = Dims {
        cameras: 1,
        embed_dim: E,
        num_latents: L,
        latent_dim: D,
        max_prompts: K,
        latents_dtype: dtype,
    };
    let name = format!("/ocellus-bench-{}-{dtype}", std::process::id());
    let mut config = WriterConfig::new(&name, dims);
    config.heartbeat_period = Duration::from_secs(3600);
    let mut writer = match ShmWriter::create(&config) {
        Ok(w) => w,
        Err(e) => panic!("create the bench segment: {e}"),
    };
    let mut sample = Sample::new(&dims);
    sample.meta = SampleMeta {
        sequence: 1,
        ..SampleMeta::default()
    };
    for (i, x) in sample.embedding.iter_mut().enumerate() {
        *x = i as f32 * 0.01;
    }
    for (i, x) in sample.latents.iter_mut().enumerate() {
        *x = (i % 97) as f32 * 0.1;
    }
    sample.num_scores = K;
    for (i, x) in sample.scores.iter_mut().enumerate() {
        *x = 1.0 / (i + 1) as f32;
    }
    if let Err(e) = writer.publish(0, &sample.view()) {
        panic!("publish: {e}");
    }
    let mut reader = match ShmReader::open(&name) {
        Ok(r) => r,
        Err(e) => panic!("open: {e}"),
    };
    let mut out = reader.new_sample();

    // The payload as it lies in the segment (latents at their stored width), copied by memcpy.
    let payload_bytes = (E + K) * 4 + L * D * if dtype == LatentsDtype::F32 { 4 } else { 2 };
    let src = vec![0x5au8; payload_bytes];
    let mut dst = vec![0u8; payload_bytes];

    let mut g = c.benchmark_group(format!("shm/{dtype}"));
    g.throughput(Throughput::Bytes(payload_bytes as u64));
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    g.bench_function("publish", |b| {
        b.iter(|| {
            sample.meta.sequence += 1;
            black_box(writer.publish(0, black_box(&sample.view())).is_ok())
        })
    });
    g.bench_function("read_latest", |b| {
        b.iter(|| black_box(reader.read_latest(0, &mut out).is_ok()))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_dtype(c, LatentsDtype::F32);
    bench_dtype(c, LatentsDtype::F16);
}

criterion_group!(shm, benches);
criterion_main!(shm);
