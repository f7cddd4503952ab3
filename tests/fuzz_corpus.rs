//! The fuzz targets' corpora and crash reproducers as tests (docs/fuzzing.md): every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the target's own entry
//! (`fuzz/src/lib.rs`, included here), then a fixed set of mutations of them (fixed seed, fixed count), so
//! `make test` covers what the fuzzers found without building them (no nightly, no second tract build).
//! Each reproducer's documented outcome is asserted (`REPRODUCERS`).
//!
//! `cargo test --release --test fuzz_corpus -- --ignored write_seeds` rewrites the generated seeds
//! (`fuzz/corpus/<target>/seed-*`) from the project's own files and the synthetic camera.

use std::path::{Path, PathBuf};

use ocellus::source::write_raw_file;
use ocellus::PixelFormat;

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod entry;

#[path = "../fuzz/mutate.rs"]
#[allow(dead_code)]
mod mutate;

type Entry = fn(&[u8]) -> Result<String, String>;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every crash or hang found, with what the runtime must now make of it: `Ok(part of the description)` or
/// `Err(part of the error message)`. The two manifests were found while writing the `manifest` target, not by a
/// fuzzer run: sizes and shapes the memory plan summed and multiplied before any file was read (an overflow
/// panic with overflow checks, a wrapped total that could pass the budget check without).
const REPRODUCERS: &[(&str, &str, Result<&str, &str>)] = &[
    (
        "manifest",
        "file-size-overflows-plan.toml",
        Err("size = 9223372036854775807, more than 1 TiB"),
    ),
    (
        "manifest",
        "tensor-shape-overflows-plan.toml",
        Err("tensor pixel_values has shape [1, 4294967296, 4294967296]: more than 2^32 elements"),
    ),
    // Found by `make fuzz-mjpeg` and `make fuzz-replay` (2026-12-05): zune-jpeg's debug assertion in its bit
    // reader (fuzz/src/lib.rs, `KnownDecoderAssertion`); the release build refuses the frame as corrupt.
    (
        "mjpeg",
        "zune-jpeg-bits-left-debug-assert.jpg",
        Err("corrupt MJPEG frame: \"Marker DQT found where not expected\""),
    ),
    (
        "replay",
        "zune-jpeg-bits-left-debug-assert.jpg",
        Ok("2 mjpeg 16x12 frames"),
    ),
    // Found by the second runs of the same two targets: panics in zune-jpeg in release too (an unwrap on a
    // missing Huffman table; an assert_eq on a component's buffer sizes), now caught by the runtime.
    (
        "mjpeg",
        "zune-jpeg-huffman-table-unwrap.jpg",
        Err("corrupt MJPEG frame: the JPEG decoder (zune-jpeg) failed on it (a panic, caught)"),
    ),
    (
        "replay",
        "zune-jpeg-upsample-assert-eq.jpg",
        Err("b.jpg: JPEG data is corrupt: the decoder (zune-jpeg) failed on it (a panic, caught)"),
    ),
];

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let files = mutate::files(&fuzz_dir().join("corpus").join(target));
    assert!(
        !files.is_empty(),
        "the committed corpus of {target} is missing"
    );
    files
}

fn run_files(target: &str, entry: Entry) {
    for (path, bytes) in corpus(target) {
        let _ = entry(&bytes);
        let _ = path;
    }
    let regressions = mutate::files(&fuzz_dir().join("regressions").join(target));
    for (path, bytes) in &regressions {
        let name = path.file_name().and_then(|n| n.to_str()).expect("a name");
        let (_, _, expected) = REPRODUCERS
            .iter()
            .find(|(t, n, _)| *t == target && *n == name)
            .unwrap_or_else(|| panic!("{}: list it in REPRODUCERS", path.display()));
        let got = entry(bytes);
        match (expected, &got) {
            (Ok(want), Ok(have)) | (Err(want), Err(have)) => {
                assert!(
                    have.contains(want),
                    "{}: {got:?}, expected {expected:?}",
                    path.display()
                )
            }
            _ => panic!("{}: {got:?}, expected {expected:?}", path.display()),
        }
    }
    for (t, name, _) in REPRODUCERS.iter().filter(|(t, _, _)| *t == target) {
        assert!(
            regressions.iter().any(|(p, _)| p.ends_with(name)),
            "fuzz/regressions/{t}/{name} is missing"
        );
    }
    entry::remove_scratch();
}

/// `cases` mutations of the corpus and reproducers through `entry`; returns how many were accepted.
fn run_mutations(target: &str, entry: Entry, cases: usize, tokens: &[&[u8]]) -> usize {
    let mut all: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
    all.extend(
        mutate::files(&fuzz_dir().join("regressions").join(target))
            .into_iter()
            .map(|(_, b)| b),
    );
    let seed = target
        .bytes()
        .fold(0x0ce1_1055_u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut rng = mutate::Rng::new(seed);
    let mut accepted = 0;
    for _ in 0..cases {
        let base = &all[rng.below(all.len())];
        let input = mutate::mutate(&mut rng, base, &all, tokens);
        if entry(&input).is_ok() {
            accepted += 1;
        }
    }
    entry::remove_scratch();
    accepted
}

const CONFIG_TOKENS: &[&[u8]] = &[
    b"[[camera]]\n",
    b"[model]\n",
    b"[prompts]\n",
    b"[budgets]\n",
    b"[shm]\n",
    b"[memory]\n",
    b"[realtime]\n",
    b"[testing]\n",
    b"source = \"replay\"\n",
    b"source = \"v4l2\"\n",
    b"pixel-format = \"nv12\"\n",
    b"pixel-format = \"mjpeg\"\n",
    b"width = 16385\n",
    b"height = 1\n",
    b"fps = 0\n",
    b"memory-mib = 18446744073709551615\n",
    b"arena-mib = 1048577\n",
    b"max = 1024\n",
    b"labels = [\"a\", \"a\"]\n",
    b"threads = 0\n",
    b"inference-cpus = [0, 0]\n",
    b"capture-priority = 100\n",
    b"end-to-end-ms = 1e308\n",
    b"mode = \"0777\"\n",
    b"name = \"..\"\n",
    b"delay-stage = \"encoder\"\n",
    b"delay-ms = nan\n",
    b"= [[[[[[[[",
    b"\"\\u0000\"",
];

const MANIFEST_TOKENS: &[&[u8]] = &[
    b"format = 2\n",
    b"format = 1\n",
    b"embed_dim = 18446744073709551615\n",
    b"num_latents = 4294967296\n",
    b"latent_dim = 0\n",
    b"[text]\n",
    b"[scores]\nlogit_scale = 1.0\n",
    b"[prototypes]\n",
    b"resize = \"letterbox\"\n",
    b"crop = \"none\"\n",
    b"shape = [1, 4294967296, 4294967296]",
    b"shape = []",
    b"engines = [\"onnxruntime\"]",
    b"variant = \"int8\"",
    b"[[files]]\n",
];

#[test]
fn config_corpus() {
    run_files("config", entry::config);
}

#[test]
fn config_mutations() {
    let ok = run_mutations("config", entry::config, 4000, CONFIG_TOKENS);
    assert!(ok > 0, "no mutated config was valid");
}

#[test]
fn manifest_corpus() {
    run_files("manifest", entry::manifest);
}

#[test]
fn manifest_mutations() {
    let ok = run_mutations("manifest", entry::manifest, 2000, MANIFEST_TOKENS);
    assert!(ok > 0, "no mutated manifest parsed");
}

#[test]
fn replay_corpus() {
    run_files("replay", entry::replay);
}

#[test]
fn replay_mutations() {
    let ok = run_mutations(
        "replay",
        entry::replay,
        1500,
        &[b"OCFRAMES", b"\xff\xd8", b"\xff\xd9"],
    );
    assert!(ok > 0, "no mutated recording replayed");
}

#[test]
fn mjpeg_corpus() {
    run_files("mjpeg", entry::mjpeg);
}

#[test]
fn mjpeg_mutations() {
    let ok = run_mutations(
        "mjpeg",
        entry::mjpeg,
        800,
        &[b"\xff\xd9", b"\xff\xc0\x00\x11\x08"],
    );
    assert!(ok > 0, "no mutated frame prepared");
}

#[test]
fn prompts_corpus() {
    run_files("prompts", entry::prompts);
}

#[test]
fn prompts_mutations() {
    let tokens: &[&[u8]] = &[
        b"\n",
        b"#",
        b"\r\n",
        b"a red circle\n",
        b"\xc3\xa9",
        b"\xe2\x80\x94",
        b"\xff",
    ];
    let ok = run_mutations("prompts", entry::prompts, 1500, tokens);
    assert!(ok > 0, "no mutated prompts file kept the rules");
}

/// Writes the generated seeds: the project's config and manifest files, recordings and JPEG frames of the
/// synthetic camera, prompts files. The fuzzers' own finds are added with `cargo fuzz cmin` (docs/fuzzing.md).
#[test]
#[ignore = "rewrites fuzz/corpus/<target>/seed-*; run by hand"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seed_dir = |target: &str| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        dir
    };
    let copy = |target: &str, name: &str, from: &Path| {
        std::fs::copy(from, seed_dir(target).join(format!("seed-{name}")))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };

    copy("config", "default.toml", &root.join("src/default.toml"));
    copy(
        "config",
        "example.toml",
        &root.join("bsp/ocellus.example.toml"),
    );
    copy(
        "config",
        "jetson-orin.toml",
        &root.join("bsp/jetson-orin/ocellus.toml"),
    );
    copy(
        "config",
        "debian.toml",
        &root.join("bsp/debian/ocellus.toml"),
    );
    for e in std::fs::read_dir(root.join("tests/fixtures/config")).expect("fixtures") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "toml") {
            let name = format!("fixture-{}", p.file_name().unwrap().to_string_lossy());
            copy("config", &name, &p);
        }
    }

    for bundle in ["demo", "hf-clip-qformer", "vit-import"] {
        copy(
            "manifest",
            &format!("{bundle}.toml"),
            &root.join(format!("models/{bundle}/manifest.toml")),
        );
    }

    let replay = seed_dir("replay");
    for (format, w, h) in [
        (PixelFormat::Yuyv, 16, 12),
        (PixelFormat::Nv12, 16, 12),
        (PixelFormat::Grey, 15, 11),
        (PixelFormat::Rgb24, 12, 8),
        (PixelFormat::Bgr24, 9, 7),
        (PixelFormat::Mjpeg, 16, 12),
        (PixelFormat::Mjpeg, 33, 17),
    ] {
        let frames: Vec<Vec<u8>> = (0..3)
            .map(|n| entry::synthetic_frame(format, w, h, n))
            .collect();
        let labels = [Some(3), None, Some(15)];
        let path = replay.join(format!("seed-{format}-{w}x{h}.raw"));
        write_raw_file(
            &path,
            format,
            w,
            h,
            frames.iter().map(Vec::as_slice).zip(labels),
        )
        .expect("write a recording");
    }
    std::fs::write(
        replay.join("seed-image-16x12.jpg"),
        entry::synthetic_frame(PixelFormat::Mjpeg, 16, 12, 1),
    )
    .expect("write a jpeg");

    let mjpeg = seed_dir("mjpeg");
    for (w, h, n) in [(16, 12, 0), (64, 48, 1), (97, 61, 2), (160, 120, 3)] {
        std::fs::write(
            mjpeg.join(format!("seed-synthetic-{w}x{h}.jpg")),
            entry::synthetic_frame(PixelFormat::Mjpeg, w, h, n),
        )
        .expect("write a frame");
    }
    // Other encodings a UVC camera may send: 4:2:0, 4:4:4, greyscale, progressive, restart markers.
    let rgb = entry::synthetic_frame(PixelFormat::Rgb24, 40, 30, 4);
    let encodings: [(&str, jpeg_encoder::ColorType, u8, bool, Option<u16>); 5] = [
        ("420", jpeg_encoder::ColorType::Rgb, 0x22, false, None),
        ("444", jpeg_encoder::ColorType::Rgb, 0x11, false, None),
        ("grey", jpeg_encoder::ColorType::Luma, 0x11, false, None),
        (
            "progressive",
            jpeg_encoder::ColorType::Rgb,
            0x22,
            true,
            None,
        ),
        (
            "restart",
            jpeg_encoder::ColorType::Rgb,
            0x21,
            false,
            Some(2),
        ),
    ];
    for (name, color, factors, progressive, restart) in encodings {
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 80);
        if let Some(s) = jpeg_encoder::SamplingFactor::from_factors(factors >> 4, factors & 0xf) {
            enc.set_sampling_factor(s);
        }
        enc.set_progressive(progressive);
        if let Some(r) = restart {
            enc.set_restart_interval(r);
        }
        let data: Vec<u8> = if color == jpeg_encoder::ColorType::Luma {
            rgb.chunks_exact(3).map(|p| p[1]).collect()
        } else {
            rgb.clone()
        };
        enc.encode(&data, 40, 30, color).expect("encode");
        std::fs::write(mjpeg.join(format!("seed-40x30-{name}.jpg")), &out).expect("write");
    }

    let prompts = seed_dir("prompts");
    copy(
        "prompts",
        "fixture.txt",
        &root.join("tests/fixtures/config/prompts.txt"),
    );
    for (name, text) in [
        ("demo.txt", "a red circle\na blue square\n# comment\n\n  a green cross  \na yellow triangle\n"),
        ("crlf.txt", "a cup\r\na door\r\n"),
        ("unicode.txt", "une tasse à café\nein grünes Dreieck — 三角形\n🙂\n"),
        ("too-many.txt", "a\nb\nc\nd\ne\nf\ng\nh\ni\n"),
        ("duplicate.txt", "a cup\na cup\n"),
        ("label-again.txt", "a red circle\n"),
        ("long.txt", "a very long prompt that is longer than the sixty-four bytes a shared-memory label holds — é\n"),
        ("unknown.txt", "zzqx vvkw\n"),
        ("empty.txt", "# nothing\n\n"),
    ] {
        std::fs::write(prompts.join(format!("seed-{name}")), text).expect("write");
    }
}
