//! The `segment` fuzz target's corpus and crash reproducers as a test (docs/fuzzing.md): every file of
//! `fuzz/corpus/segment/` and `fuzz/regressions/segment/`, then a fixed set of mutations of them, through the
//! target's own entry (`fuzz/src/lib.rs`): the Rust reader and the C header's reader (built here with the
//! system C compiler) must not fail on any of them and must agree.
//!
//! `cargo test -p ocellus-shm --test fuzz_corpus -- --ignored write_seeds` rewrites the seed segments from the
//! real writer (`fuzz/corpus/segment/seed-*`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ocellus_shm::{
    layout, CameraCounters, Dims, LatentsDtype, SampleMeta, SampleRef, ShmWriter, WriterConfig,
};

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod entry;

#[path = "../../../fuzz/mutate.rs"]
#[allow(dead_code)]
mod mutate;

/// Mutated inputs checked per run (each through both readers).
const MUTATIONS: usize = 6000;
const SEED: u64 = 0x0ce1_1055_eed5;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The C report program (`fuzz/c/report.c` with its `main`), compiled once.
fn c_program(dir: &Path) -> PathBuf {
    let exe = dir.join("report");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new("cc")
        .args([
            "-std=c99",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-DOCELLUS_REPORT_MAIN",
            "-I",
        ])
        .arg(root.join("include"))
        .arg(fuzz_dir().join("c/report.c"))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed on fuzz/c/report.c");
    exe
}

fn c_reports(exe: &Path, names: &[&str]) -> Vec<String> {
    let out = Command::new(exe)
        .args(names)
        .output()
        .expect("run the C report");
    assert!(out.status.success(), "the C report failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("ASCII");
    text.split_terminator("end\n").map(str::to_owned).collect()
}

fn inputs() -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = mutate::files(&fuzz_dir().join("corpus/segment"));
    assert!(!all.is_empty(), "the committed corpus is missing");
    all.extend(mutate::files(&fuzz_dir().join("regressions/segment")));
    all
}

#[test]
fn corpus_and_reproducers_through_both_readers() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = c_program(tmp.path());
    let all = inputs();
    for chunk in all.chunks(64) {
        let bytes: Vec<&[u8]> = chunk.iter().map(|(_, b)| b.as_slice()).collect();
        let reports = entry::check_many(&bytes, |names| c_reports(&exe, names));
        for ((path, _), report) in chunk.iter().zip(&reports) {
            // A reproducer's name says what the readers must make of it: `open-<code>-...`.
            if let Some(code) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("open"))
                .and_then(|n| n.split('_').next())
            {
                assert!(
                    report.starts_with(&format!("open {code}\n")),
                    "{}: {report}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn mutated_corpus_through_both_readers() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = c_program(tmp.path());
    let all: Vec<Vec<u8>> = inputs().into_iter().map(|(_, b)| b).collect();
    let mut rng = mutate::Rng::new(SEED);
    let mut opened = 0;
    let mut batch = Vec::new();
    for _ in 0..MUTATIONS {
        let base = &all[rng.below(all.len())];
        // Half keep the length and the header (so the readers go on to the samples), half change anything.
        batch.push(if rng.below(2) == 0 {
            mutate::mutate_in_place(&mut rng, base, layout::HEADER_SIZE as usize)
        } else {
            mutate::mutate(&mut rng, base, &all, &[])
        });
        if batch.len() == 100 {
            let bytes: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let reports = entry::check_many(&bytes, |names| c_reports(&exe, names));
            opened += reports.iter().filter(|r| r.starts_with("open 0\n")).count();
            batch.clear();
        }
    }
    // Half the mutations leave the header valid: the readers went past it to the samples.
    assert!(
        opened > MUTATIONS / 3,
        "only {opened} mutated segments opened"
    );
}

/// Writes the seed corpus: segments as the real writer leaves them, in the states a reader meets.
#[test]
#[ignore = "rewrites fuzz/corpus/segment/seed-*; run by hand"]
fn write_seeds() {
    let dir = fuzz_dir().join("corpus/segment");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let small = |cameras, dtype| Dims {
        cameras,
        embed_dim: 5,
        num_latents: 2,
        latent_dim: 3,
        max_prompts: 3,
        latents_dtype: dtype,
    };
    let cases: [(&str, Dims, usize, bool, bool); 7] = [
        ("fresh-f16", small(1, LatentsDtype::F16), 0, false, false),
        ("one-f16", small(1, LatentsDtype::F16), 1, true, false),
        ("wrapped-f32", small(1, LatentsDtype::F32), 5, true, false),
        (
            "two-cameras-f16",
            small(2, LatentsDtype::F16),
            4,
            true,
            false,
        ),
        ("stopped-f32", small(1, LatentsDtype::F32), 2, true, true),
        (
            "odd-sizes-f16",
            Dims {
                embed_dim: 7,
                num_latents: 3,
                latent_dim: 5,
                max_prompts: 5,
                ..small(1, LatentsDtype::F16)
            },
            3,
            true,
            false,
        ),
        (
            "demo-f16",
            Dims {
                cameras: 1,
                embed_dim: 64,
                num_latents: 16,
                latent_dim: 96,
                max_prompts: 16,
                latents_dtype: LatentsDtype::F16,
            },
            2,
            true,
            false,
        ),
    ];
    for (name, dims, publishes, prompts, stop) in cases {
        let shm_name = format!("/ocellus-seed-{}-{name}", std::process::id());
        let mut config = WriterConfig::new(&shm_name, dims);
        config.model_id = "demo fp32".into();
        config.model_sha256 = "0123456789abcdef0123".into();
        config.heartbeat_period = Duration::from_millis(100);
        let mut w = ShmWriter::create(&config).expect("create");
        if prompts {
            let labels = [
                "a red circle",
                "ein grünes Dreieck — 三角形",
                "a blue square",
            ];
            w.set_prompts(7, &labels[..dims.max_prompts.min(3)])
                .expect("prompts");
        }
        let ld = dims.num_latents * dims.latent_dim;
        for cam in 0..dims.cameras {
            for n in 0..publishes {
                let f = |i: usize| (n * 100 + i) as f32 * 0.25 - 3.0;
                let emb: Vec<f32> = (0..dims.embed_dim).map(f).collect();
                let lat: Vec<f32> = (0..ld).map(|i| f(i) * 1e-3).collect();
                let mut sc: Vec<f32> = (0..dims.max_prompts.min(3)).map(|i| f(i) / 100.0).collect();
                if n == 2 {
                    sc[0] = f32::NAN;
                }
                let mut stages_ns = [0u64; layout::STAGES];
                stages_ns[layout::STAGE_ENCODER] = 4_000_000 + n as u64;
                let sample = SampleRef {
                    meta: SampleMeta {
                        sequence: 10 + n as u64,
                        capture_ns: 1_000_000 * n as u64,
                        publish_ns: 0,
                        stages_ns,
                        flags: if n == 1 {
                            layout::FLAG_DEGRADED | 0b100
                        } else {
                            0
                        },
                        deadline_misses: n as u64,
                        prompt_version: 7,
                    },
                    embedding: &emb,
                    latents: &lat,
                    scores: &sc,
                };
                w.publish(cam, &sample).expect("publish");
            }
            let mut c = CameraCounters {
                captured: 30 + cam as u64,
                dropped: 2,
                processed: publishes as u64,
                ..CameraCounters::default()
            };
            c.late[layout::STAGE_ENCODER] = 1;
            w.set_counters(cam, &c);
        }
        w.set_memory_high_water(74 << 20);
        w.heartbeat();
        if stop {
            w.mark_stopped();
        }
        let bytes = std::fs::read(format!("/dev/shm{shm_name}")).expect("read the segment");
        std::fs::write(dir.join(format!("seed-{name}")), &bytes).expect("write seed");
        drop(w);
    }
}
