//! The `ocellus` binary end to end: `run` on the demo, `check` refusing each kind of bad input, corrupt
//! replay frames, `infer` on generated scenes.
//!
//! Every child process runs under a watchdog that kills it and fails the test instead of hanging CI.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ocellus::config::Config;
use ocellus::frame::{FrameBuf, PixelFormat};
use ocellus::scene::{class_prompt, render_into, Rng, SceneParams};
use ocellus::source::RawFrameWriter;

const WATCHDOG: Duration = Duration::from_secs(600);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn demo_manifest() -> PathBuf {
    root().join("models/demo/manifest.toml")
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `ocellus args...` in the crate root; kills it and panics if it outlives `WATCHDOG`.
fn ocellus(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocellus"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocellus");
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let until = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for ocellus") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "watchdog: `ocellus {}` still running after {WATCHDOG:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// A shared-memory name of this test process alone (tests run in parallel, each `run` publishes).
fn shm_name(test: &str) -> String {
    format!("ocellus-test-{}-{test}", std::process::id())
}

fn describe(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.code, o.stdout, o.stderr
    )
}

/// A config file in `dir` for the demo model at `manifest`, with `extra` appended (TOML).
fn write_config(dir: &Path, manifest: &Path, camera: &str, extra: &str) -> PathBuf {
    let text = format!(
        "{camera}\n[model]\nmanifest = {:?}\nvariant = \"fp32\"\nthreads = 1\n{extra}\n",
        manifest.display().to_string()
    );
    let path = dir.join("ocellus.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

const SYNTHETIC_CAMERA: &str = "[[camera]]\nname = \"cam\"\nsource = \"synthetic\"\npixel-format = \"yuyv\"\nwidth = 320\nheight = 240\nfps = 0\n";

const PROMPTS: &str = "[prompts]\nlabels = [\"a red circle\", \"a blue square\"]\n";

/// A copy of the demo bundle in a temporary directory (manifest, models, tokenizer; not the references).
fn copy_demo(dir: &Path) -> PathBuf {
    let src = demo_manifest().parent().expect("demo directory").to_owned();
    let dst = dir.join("demo");
    std::fs::create_dir_all(&dst).expect("create bundle copy");
    for entry in std::fs::read_dir(&src).expect("read models/demo") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy bundle file");
        }
    }
    dst.join("manifest.toml")
}

/// The manifest's `[[files]]` entry of `role` and `variant`, as a mutable TOML table.
fn files_entry<'a>(doc: &'a mut toml::Table, role: &str, variant: &str) -> &'a mut toml::Table {
    doc.get_mut("files")
        .and_then(|f| f.as_array_mut())
        .expect("manifest has [[files]]")
        .iter_mut()
        .filter_map(|f| f.as_table_mut())
        .find(|f| {
            f.get("role").and_then(|r| r.as_str()) == Some(role)
                && f.get("variant").and_then(|v| v.as_str()) == Some(variant)
        })
        .expect("manifest entry")
}

#[derive(serde::Deserialize)]
struct SummaryJson {
    frames: u64,
    labelled: u64,
    correct: u64,
    accuracy: Option<f64>,
    corrupt: u64,
    captured: u64,
    dropped: u64,
    stages: Vec<serde_json::Value>,
}

fn read_summary(path: &Path) -> SummaryJson {
    let text = std::fs::read_to_string(path).expect("summary json written");
    serde_json::from_str(&text).expect("summary json parses")
}

#[test]
fn run_without_config_scores_the_demo_scenes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let json = tmp.path().join("summary.json");
    let json_arg = json.display().to_string();
    let shm = shm_name("run");
    let out = ocellus(&[
        "run",
        "--frames",
        "300",
        "--summary-json",
        &json_arg,
        "--status-interval",
        "0.5",
        "--shm",
        &shm,
    ]);
    assert_eq!(out.code, Some(0), "{}", describe(&out));
    let s = read_summary(&json);
    assert_eq!(s.frames, 300, "{}", describe(&out));
    assert_eq!(s.labelled, 300, "every synthetic frame carries its class");
    let accuracy = s.accuracy.expect("accuracy of labelled frames");
    assert!(
        accuracy >= 0.9,
        "top prompt = ground truth in {}/{} frames ({:.1} %), want >= 90 %\n{}",
        s.correct,
        s.labelled,
        accuracy * 100.0,
        describe(&out)
    );
    assert_eq!(s.stages.len(), 7, "one entry per stage");
    assert!(
        out.stdout.contains("top prompt = ground truth"),
        "{}",
        describe(&out)
    );
    assert!(
        out.stderr.contains("fps "),
        "no live status line\n{}",
        describe(&out)
    );
    assert!(
        out.stderr.contains("publishing into shared memory"),
        "{}",
        describe(&out)
    );
    assert!(
        !Path::new("/dev/shm").join(&shm).exists(),
        "the segment outlived a clean stop"
    );
}

#[test]
fn check_accepts_the_default_and_a_valid_file() {
    let out = ocellus(&["check"]);
    assert_eq!(out.code, Some(0), "{}", describe(&out));
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(tmp.path(), &demo_manifest(), SYNTHETIC_CAMERA, PROMPTS);
    let out = ocellus(&["check", "--config", &config.display().to_string()]);
    assert_eq!(out.code, Some(0), "{}", describe(&out));
    assert!(out.stdout.contains("verified"), "{}", describe(&out));
}

/// Runs `ocellus check --config` on a config and asserts exit code 2 and every `needles` in stderr.
fn assert_check_rejects(config: &Path, needles: &[&str]) {
    let out = ocellus(&["check", "--config", &config.display().to_string()]);
    assert_eq!(out.code, Some(2), "{}", describe(&out));
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr does not name {needle:?}\n{}",
            describe(&out)
        );
    }
}

#[test]
fn check_rejects_a_missing_manifest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nowhere/manifest.toml");
    let config = write_config(tmp.path(), &missing, SYNTHETIC_CAMERA, PROMPTS);
    assert_check_rejects(&config, &["nowhere/manifest.toml", "not found"]);
}

#[test]
fn check_rejects_a_sha256_mismatch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest = copy_demo(tmp.path());
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    let mut doc: toml::Table = text.parse().expect("manifest parses");
    let path = files_entry(&mut doc, "vision", "fp32")
        .get("path")
        .and_then(|p| p.as_str())
        .expect("vision path")
        .to_owned();
    let model = manifest.with_file_name(&path);
    let mut bytes = std::fs::read(&model).expect("read vision model");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(&model, bytes).expect("write tampered model");
    let config = write_config(tmp.path(), &manifest, SYNTHETIC_CAMERA, PROMPTS);
    assert_check_rejects(&config, &["sha256", &path]);
}

#[test]
fn check_rejects_an_encoder_resampler_shape_mismatch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest = copy_demo(tmp.path());
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    let mut doc: toml::Table = text.parse().expect("manifest parses");
    let input = files_entry(&mut doc, "resampler", "fp32")
        .get_mut("inputs")
        .and_then(|i| i.as_array_mut())
        .and_then(|i| i.first_mut())
        .and_then(|i| i.as_table_mut())
        .expect("resampler input");
    let shape = input
        .get_mut("shape")
        .and_then(|s| s.as_array_mut())
        .expect("shape");
    let n = shape[1].as_integer().expect("N");
    shape[1] = toml::Value::Integer(n + 1);
    std::fs::write(&manifest, toml::to_string(&doc).expect("serialise")).expect("write manifest");
    let config = write_config(tmp.path(), &manifest, SYNTHETIC_CAMERA, PROMPTS);
    assert_check_rejects(&config, &["patch_tokens", "resampler"]);
}

#[test]
fn check_rejects_an_unknown_config_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        tmp.path(),
        &demo_manifest(),
        SYNTHETIC_CAMERA,
        "[prompts]\nlabels = [\"a red circle\"]\nmaximum = 3\n",
    );
    assert_check_rejects(&config, &["maximum", "ocellus.toml"]);
}

#[test]
fn check_rejects_an_empty_prompt_list() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        tmp.path(),
        &demo_manifest(),
        SYNTHETIC_CAMERA,
        "[prompts]\nlabels = []\n",
    );
    assert_check_rejects(&config, &["prompt", "empty"]);
}

#[test]
fn check_rejects_a_format_the_source_cannot_deliver() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).expect("images dir");
    write_scene_png(&images.join("a.png"), 7, 64, 64);
    // A directory of PNG images delivers rgb24 (decoded), never yuyv.
    let camera = format!(
        "[[camera]]\nname = \"files\"\nsource = \"replay\"\npath = {:?}\npixel-format = \"yuyv\"\nwidth = 64\nheight = 64\n",
        images.display().to_string()
    );
    let config = write_config(tmp.path(), &demo_manifest(), &camera, PROMPTS);
    assert_check_rejects(&config, &["camera[0]", "cannot deliver yuyv"]);
}

/// Renders the scene drawn from `seed` as a `w` x `h` RGB PNG at `path`; returns its class index.
fn write_scene_png(path: &Path, seed: u64, w: u32, h: u32) -> u16 {
    let scene = SceneParams::sample(&mut Rng::new(seed));
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    render_into(&scene, w, h, &mut rgb).expect("render scene");
    let file = std::fs::File::create(path).expect("create png");
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .and_then(|mut w| w.write_image_data(&rgb))
        .expect("write png");
    scene.label()
}

#[test]
fn infer_prints_the_class_of_generated_scenes_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["infer".to_string(), "--top".into(), "3".into()];
    let mut expected = Vec::new();
    for seed in [11u64, 12, 13] {
        let path = tmp.path().join(format!("scene{seed}.png"));
        let label = write_scene_png(&path, seed, 224, 160);
        expected.push((
            path.display().to_string(),
            class_prompt(label).expect("class"),
        ));
        args.push(path.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ocellus(&args);
    assert_eq!(out.code, Some(0), "{}", describe(&out));
    let lines: Vec<&str> = out.stdout.lines().collect();
    for (path, class) in expected {
        // `<path>  prepare x ms  encoder y ms  resampler z ms`, then the ranked prompts.
        let at = lines
            .iter()
            .position(|l| {
                l.strip_prefix(path.as_str()).is_some_and(|rest| {
                    rest.starts_with("  prepare ")
                        && rest.contains(" ms  encoder ")
                        && rest.ends_with(" ms")
                })
            })
            .unwrap_or_else(|| panic!("no output for {path}\n{}", describe(&out)));
        let first = lines.get(at + 1).copied().unwrap_or_default();
        let (score, label) = first
            .trim()
            .split_once("  ")
            .unwrap_or_else(|| panic!("bad result line {first:?}"));
        assert_eq!(label, class, "{}", describe(&out));
        let score: f32 = score.parse().expect("score");
        assert!((0.0..=1.0).contains(&score));
    }
}

/// `ocellus infer` opens no camera (a configuration without `[[camera]]` is fine) and `--dump` writes every
/// tensor it computed as .npy, the published embedding L2-normalised.
#[test]
fn infer_needs_no_camera_and_dumps_its_tensors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = tmp.path().join("scene.png");
    write_scene_png(&image, 21, 120, 90);
    let config = tmp.path().join("ocellus.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nmanifest = \"{}\"\nvariant = \"fp32\"\n",
            root().join("models/demo/manifest.toml").display()
        ),
    )
    .expect("config");
    let dump = tmp.path().join("dump");
    let out = ocellus(&[
        "infer",
        "--config",
        &config.display().to_string(),
        "--dump",
        &dump.display().to_string(),
        &image.display().to_string(),
    ]);
    assert_eq!(out.code, Some(0), "{}", describe(&out));
    let dir = dump.join("0-scene");
    let read = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(dir.join(format!("{name}.npy")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        (a.shape().to_vec(), a.iter().copied().collect())
    };
    assert_eq!(read("pixel_values").0, [1, 3, 64, 64]);
    assert_eq!(read("patch_tokens").0, [1, 65, 96]);
    assert_eq!(read("latents").0, [1, 16, 96]);
    assert_eq!(read("scores").0, [16]);
    let (shape, embeds) = read("image_embeds");
    assert_eq!(shape, [1, 64]);
    let norm = embeds.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    let scores = read("scores").1;
    assert!((scores.iter().sum::<f32>() - 1.0).abs() < 1e-3);
}

#[test]
fn infer_reports_an_unreadable_image_and_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bogus = tmp.path().join("not-an-image.png");
    std::fs::write(&bogus, b"hello").expect("write");
    let out = ocellus(&["infer", &bogus.display().to_string()]);
    assert_eq!(out.code, Some(1), "{}", describe(&out));
    assert!(
        out.stderr.contains("not-an-image.png"),
        "{}",
        describe(&out)
    );
}

/// Records `frames` MJPEG frames of the synthetic camera into a raw replay file, truncating every
/// `corrupt_every`-th frame to half its bytes. Returns the number of truncated frames.
fn record_mjpeg(path: &Path, frames: usize, corrupt_every: usize) -> usize {
    let toml = "[[camera]]\nname = \"rec\"\nsource = \"synthetic\"\npixel-format = \"mjpeg\"\nwidth = 96\nheight = 96\nfps = 0\n";
    let config = Config::parse(toml, ocellus::config::Origin::Embedded).expect("recording config");
    let cam = &config.cameras[0];
    let mut source = ocellus::source::open(0, cam).expect("synthetic source");
    source.start().expect("start synthetic source");
    let mut buf = FrameBuf::new(source.max_frame_bytes());
    let file = std::fs::File::create(path).expect("create raw file");
    let mut writer = RawFrameWriter::new(std::io::BufWriter::new(file), PixelFormat::Mjpeg, 96, 96)
        .expect("raw writer");
    let mut truncated = 0;
    for i in 0..frames {
        source.next_frame(&mut buf).expect("synthetic frame");
        let mut data = buf.bytes();
        if (i + 1) % corrupt_every == 0 {
            data = &data[..data.len() / 2];
            truncated += 1;
        }
        writer
            .write_frame(data, buf.meta.label)
            .expect("write frame");
    }
    writer.finish().expect("finish raw file");
    source.stop();
    truncated
}

#[test]
fn corrupt_replay_frames_are_counted_and_skipped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let raw = tmp.path().join("frames.ocf");
    let truncated = record_mjpeg(&raw, 40, 4);
    assert_eq!(truncated, 10);
    let camera = format!(
        "[[camera]]\nname = \"replay\"\nsource = \"replay\"\npath = {:?}\npixel-format = \"mjpeg\"\nwidth = 96\nheight = 96\nfps = 10\nloop = false\n",
        raw.display().to_string()
    );
    let config = write_config(tmp.path(), &demo_manifest(), &camera, "");
    let json = tmp.path().join("summary.json");
    let out = ocellus(&[
        "run",
        "--config",
        &config.display().to_string(),
        "--summary-json",
        &json.display().to_string(),
        "--status-interval",
        "0",
        "--shm",
        &shm_name("replay"),
    ]);
    assert_eq!(out.code, Some(0), "{}", describe(&out));
    let s = read_summary(&json);
    // Every frame is accounted for once: published, skipped as corrupt, or (on a machine too busy for
    // 10 fps) displaced in the handoff. Corrupt frames are never published.
    assert_eq!(s.captured, 40, "{}", describe(&out));
    assert_eq!(s.frames + s.corrupt + s.dropped, 40, "{}", describe(&out));
    assert!(
        s.corrupt >= 1 && s.corrupt <= truncated as u64,
        "{}",
        describe(&out)
    );
    assert!(s.frames <= 40 - truncated as u64, "{}", describe(&out));
    assert!(
        out.stderr.contains("corrupt frame skipped"),
        "{}",
        describe(&out)
    );
}

#[test]
fn sigterm_stops_a_run_cleanly_with_a_summary() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let json = tmp.path().join("summary.json");
    let err_path = tmp.path().join("stderr.txt");
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ocellus"))
        .args([
            "run",
            "--status-interval",
            "0.2",
            "--shm",
            &shm_name("term"),
            "--summary-json",
        ])
        .arg(&json)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err_file))
        .spawn()
        .expect("spawn ocellus run");
    let until = Instant::now() + WATCHDOG;
    // Wait until frames flow (the status line counts them), then ask it to stop.
    loop {
        let text = std::fs::read_to_string(&err_path).unwrap_or_default();
        let published = |l: &str| {
            l.split_once("| frames ")
                .and_then(|(_, rest)| rest.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        };
        if text.lines().any(|l| l.starts_with("fps ") && published(l)) {
            break;
        }
        if Instant::now() > until || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("watchdog: no frames from `ocellus run`\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) with a valid signal on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("watchdog: `ocellus run` ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let s = read_summary(&json);
    assert!(s.frames >= 1, "{stderr}");
}

/// `model.variant = "auto"` picks by the CPU features tract uses, which `ocellus check` prints with the choice:
/// int8 only with int8 dot products (VNNI, AVX-VNNI, AMX), fp32 otherwise. `model.cpu-isa` removes the
/// features, so the AVX2-only answer is shown on any x86 machine.
#[cfg(target_arch = "x86_64")]
#[test]
fn check_prints_the_cpu_features_and_the_variant_auto_picks_for_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let manifest = root().join("models/demo/manifest.toml");
    let camera = "[[camera]]\nsource = \"synthetic\"\n";
    let run = |extra: &str| {
        let text = format!(
            "{camera}\n[model]\nmanifest = {:?}\nvariant = \"auto\"\n{extra}\n",
            manifest.display().to_string()
        );
        let path = tmp.path().join("auto.toml");
        std::fs::write(&path, text).expect("config");
        let out = ocellus(&["check", "-c", &path.display().to_string()]);
        assert_eq!(out.code, Some(0), "{}", describe(&out));
        out.stdout
    };
    let native = run("");
    let features = native
        .lines()
        .find_map(|l| l.trim().strip_prefix("ok: CPU features tract uses: "))
        .unwrap_or_else(|| panic!("no CPU features line:\n{native}"))
        .to_owned();
    let int8_fast = features
        .split(',')
        .any(|f| matches!(f, "avx512vnni" | "avxvnni" | "amx-int8"));
    // With int8 dot products the demo's int8 and fp32 are measured and the faster kept (the tiny demo runs
    // faster in fp32 on such machines too: nothing but a measurement can tell); without them, fp32 at once.
    let want = if int8_fast {
        "variant auto: measures int8 and fp32 on this machine"
    } else {
        "variant fp32 (this CPU has no int8 dot product"
    };
    assert!(native.contains(want), "features {features}:\n{native}");
    assert!(
        native.contains("measured here") || !int8_fast,
        "the candidates' times are reported:\n{native}"
    );

    let avx2 = run("cpu-isa = \"-avx512vnni,-avxvnni,-amx-int8\"");
    assert!(
        avx2.contains("variant fp32 (this CPU has no int8 dot product"),
        "{avx2}"
    );
    assert!(!avx2.contains("avx512vnni"), "{avx2}");
}
