//! Configuration: the embedded default and the documented example load; every bad case is rejected with a
//! message naming the file and the key. Fixtures are in tests/fixtures/config/.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ocellus::config::{Config, ConfigError, LogFormat, Origin};
use ocellus::frame::PixelFormat;
use ocellus::infer::{RunVariant, VariantChoice};
use ocellus::source::write_raw_file;
use ocellus::source::{SourceKind, SourceSettings};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

#[test]
fn embedded_default_loads() {
    let config = Config::embedded().expect("the embedded default is valid");
    assert_eq!(config.origin, Origin::Embedded);
    assert_eq!(config.cameras.len(), 1);
    let cam = &config.cameras[0];
    assert_eq!(cam.kind(), SourceKind::Synthetic);
    assert_eq!(
        (cam.format, cam.width, cam.height, cam.fps),
        (PixelFormat::Yuyv, 640, 480, 30)
    );
    assert_eq!(cam.max_frame_bytes(), 640 * 480 * 2);
    assert_eq!(config.model.variant, VariantChoice::Auto);
    assert!(config.model.manifest.ends_with("models/demo/manifest.toml"));
    assert_eq!(config.prompts.labels.len(), 16);
    assert_eq!(config.prompts.labels[0], "a red circle");
    assert_eq!(config.prompts.current().unwrap().len(), 16);
    assert_eq!(config.budgets.prepare, None, "measured at start-up");
    assert_eq!(config.shm.mode, 0o640);
    assert_eq!(
        config.logging.format,
        LogFormat::Auto,
        "journald under systemd, text elsewhere"
    );
    assert_eq!(Config::load_or_default(None).unwrap(), config);
}

#[test]
fn every_logging_format_parses_and_an_unknown_one_names_the_choices() {
    for (text, format) in [
        ("auto", LogFormat::Auto),
        ("text", LogFormat::Text),
        ("json", LogFormat::Json),
        ("journald", LogFormat::Journald),
    ] {
        let config = Config::parse(
            &format!("[logging]\nformat = \"{text}\"\n"),
            Origin::Embedded,
        )
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(config.logging.format, format);
    }
    let err =
        Config::parse("[logging]\nformat = \"syslog\"\n", Origin::Embedded).expect_err("syslog");
    assert_eq!(err.key(), Some("logging.format"));
    assert!(
        err.to_string()
            .contains("unknown format 'syslog' (expected auto, text, json or journald)"),
        "{err}"
    );
}

#[test]
fn documented_example_loads_with_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bsp/ocellus.example.toml");
    let example = Config::load(&path).expect("the example config is valid");
    let default = Config::embedded().unwrap();
    // Everything is commented out in the example, so it equals the defaults (bar names and paths).
    assert_eq!(example.cameras[0].format, default.cameras[0].format);
    assert_eq!(example.cameras[0].source, default.cameras[0].source);
    assert_eq!(example.budgets, default.budgets);
    assert_eq!(example.prompts.labels, default.prompts.labels);
    assert_eq!(example.shm, default.shm);
    assert_eq!(example.logging, default.logging);
    assert_eq!(
        example.model.manifest,
        path.parent().unwrap().join("models/demo/manifest.toml")
    );
    let (e, d) = (&example.recorder, &default.recorder);
    assert!(!e.enabled);
    assert_eq!(
        (
            e.window,
            e.after,
            e.quota_bytes,
            &e.on_late,
            e.on_camera_fault
        ),
        (
            d.window,
            d.after,
            d.quota_bytes,
            &d.on_late,
            d.on_camera_fault
        )
    );
    assert_eq!(e.dir, path.parent().unwrap().join("recordings"));
    assert_eq!(e.socket, e.dir.join("trigger.sock"));
}

#[test]
fn every_key_of_a_full_config_is_read() {
    let path = fixture("good_full.toml");
    let config = Config::load(&path).expect("valid");
    let dir = path.parent().unwrap();
    assert_eq!(config.cameras.len(), 2);
    let front = &config.cameras[0];
    assert_eq!(front.name, "front");
    assert_eq!(
        front.source,
        SourceSettings::Synthetic {
            seed: 42,
            hold_frames: 5
        }
    );
    assert_eq!(
        (
            front.format,
            front.width,
            front.height,
            front.fps,
            front.pool_size
        ),
        (PixelFormat::Nv12, 320, 240, 0, 3)
    );
    assert_eq!(front.frame_period(), None);
    let rear = &config.cameras[1];
    assert_eq!(
        rear.source,
        SourceSettings::V4l2 {
            device: "/dev/video2".into(),
            buffers: 4,
            stall: ocellus::source::StallTimeout::Periods(10),
        }
    );
    assert_eq!(rear.pool_size, 4);
    assert_eq!(config.model.manifest, dir.join("bundle/manifest.toml"));
    assert_eq!(
        (config.model.variant, config.model.threads),
        (VariantChoice::Fixed(RunVariant::Int8), 2)
    );
    assert_eq!(
        config.prompts.file.as_deref(),
        Some(dir.join("prompts.txt").as_path())
    );
    assert_eq!(
        config.prompts.current().unwrap(),
        ["a red circle", "a blue square", "a green cross"]
    );
    assert_eq!(config.budgets.memory_mib, 256);
    assert_eq!(
        config.budgets.dequeue,
        Some(Duration::from_secs_f64(0.0333))
    );
    assert_eq!(config.budgets.end_to_end, Some(Duration::from_millis(80)));
    assert_eq!(config.budgets.encoder, None);
    assert_eq!(config.shm.name, "ocellus-test");
    assert_eq!(
        (config.shm.mode, config.shm.group.as_deref()),
        (0o660, Some("robot"))
    );
    assert_eq!(config.shm.latents, ocellus::shm::LatentsDtype::F16);
    assert_eq!(config.logging.level, tracing::Level::DEBUG);
    assert_eq!(config.logging.format, LogFormat::Json);
    let r = &config.recorder;
    assert!(r.enabled);
    assert_eq!(r.window, ocellus::recorder::Window::Frames(90));
    assert_eq!((r.after, r.quota_bytes), (0.5, 200 << 20));
    assert_eq!(r.dir, dir.join("rec"));
    assert_eq!(r.socket, std::path::Path::new("/run/ocellus/trigger.sock"));
    assert_eq!(
        r.on_late,
        [
            ocellus::stats::Stage::Encoder,
            ocellus::stats::Stage::EndToEnd
        ]
    );
    assert!(!r.on_camera_fault);
    assert_eq!(r.slots(0), 90);
}

/// (fixture, key the error must name, words the message must hold)
const BAD: &[(&str, &str, &str)] = &[
    ("unknown_key.toml", "camera[0]", "pixel_fromat"),
    (
        "unknown_format.toml",
        "camera[0].pixel-format",
        "unknown format 'yuv2' (expected one of yuyv, nv12",
    ),
    ("unknown_section.toml", "", "modle"),
    ("empty_prompts.toml", "prompts", "prompt list is empty"),
    ("odd_width_yuyv.toml", "camera[0].width", "even width"),
    (
        "wrong_type.toml",
        "camera[0].width",
        "expected a whole number",
    ),
    ("bad_variant.toml", "model.variant", "'fp16'"),
    ("bad_shm_mode.toml", "shm.mode", "octal"),
    ("bad_shm_latents.toml", "shm.latents", "'bf16'"),
    (
        "seed_on_replay.toml",
        "camera[0].seed",
        "only applies to source = \"synthetic\"",
    ),
    ("zero_deadline.toml", "budgets.prepare-ms", "above 0"),
    ("duplicate_camera.toml", "camera[1].name", "used twice"),
    (
        "v4l2_without_device.toml",
        "camera[0].device",
        "/dev/video0",
    ),
];

/// A configuration without cameras parses (`ocellus infer` runs none) but the runtime refuses it, naming the
/// key.
#[test]
fn no_camera_is_refused_by_what_runs_cameras() {
    let path = fixture("no_camera.toml");
    let config = Config::load(&path).expect("no camera parses");
    assert!(config.cameras.is_empty());
    let err = config.require_cameras().expect_err("no camera");
    assert_eq!(err.key(), Some("camera"));
    assert!(err.to_string().contains("[[camera]]"), "{err}");
    let report = ocellus::runtime::check(&config);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("no [[camera]] table")),
        "{:?}",
        report.problems
    );
}

/// Parsing reads no other file: a replay path that does not exist is found when the runtime is built
/// (`ocellus check`, `ocellus run`), and that error names the key too.
#[test]
fn a_missing_replay_path_is_found_at_start_up_naming_the_key() {
    let path = fixture("missing_replay_path.toml");
    let config = Config::load(&path).expect("parsing does not look at the path");
    let err = ocellus::runtime::probe_camera(&config, 0).expect_err("missing recording");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("config {}: camera[0].path: ", path.display())),
        "{message}"
    );
    assert!(message.contains("no/such/recording.raw"), "{message}");
    assert_eq!(err.kind.exit_code(), 2);
}

#[test]
fn bad_configs_name_the_file_and_the_key() {
    for &(name, key, words) in BAD {
        let path = fixture(name);
        let err = Config::load(&path).expect_err(name);
        let message = err.to_string();
        eprintln!("{message}");
        assert!(
            message.starts_with(&format!("config {}: ", path.display())),
            "{name}: {message}"
        );
        assert!(
            matches!(err, ConfigError::Invalid { .. }),
            "{name}: {err:?}"
        );
        assert!(
            err.key().unwrap().contains(key),
            "{name}: key {:?} in {message}",
            err.key()
        );
        assert!(
            message.contains(words),
            "{name}: '{words}' not in {message}"
        );
    }
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let path = fixture("bad_syntax.toml");
    let err = Config::load(&path).expect_err("bad syntax");
    let message = err.to_string();
    assert!(
        matches!(err, ConfigError::Syntax { line: Some(1), .. }),
        "{err:?}"
    );
    assert!(message.contains("bad_syntax.toml line 1"), "{message}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = Config::load(Path::new("/no/such/ocellus.toml")).expect_err("missing");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/no/such/ocellus.toml"), "{err}");
}

/// A replay camera must ask for what its recording holds (format and size); an image directory delivers rgb24
/// or mjpeg. Checked at start-up (the runtime's camera probe), naming the key.
#[test]
fn replay_cameras_must_match_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("rec.raw");
    let frame = vec![16u8; PixelFormat::Nv12.frame_bytes(32, 16).unwrap()];
    write_raw_file(
        &raw,
        PixelFormat::Nv12,
        32,
        16,
        [(frame.as_slice(), Some(3))],
    )
    .unwrap();
    let write = |text: &str| {
        let path = dir.path().join("ocellus.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let probe = |path: &Path| {
        let config = Config::load(path).expect("parses");
        ocellus::runtime::probe_camera(&config, 0).map_err(|e| e.to_string())
    };
    let ok = write("[[camera]]\nsource = \"replay\"\npath = \"rec.raw\"\npixel-format = \"nv12\"\nwidth = 32\nheight = 16\n");
    probe(&ok).expect("matching replay camera");
    let config = Config::load(&ok).expect("matching replay camera");
    assert_eq!(
        config.cameras[0].source,
        SourceSettings::Replay {
            path: raw.clone(),
            looping: true
        }
    );

    let wrong_format = write("[[camera]]\nsource = \"replay\"\npath = \"rec.raw\"\npixel-format = \"yuyv\"\nwidth = 32\nheight = 16\n");
    let err = probe(&wrong_format).expect_err("format the recording does not hold");
    assert!(err.contains("camera[0].pixel-format: "), "{err}");
    assert!(
        err.contains("cannot deliver yuyv") && err.contains("nv12"),
        "{err}"
    );

    let wrong_size = write("[[camera]]\nsource = \"replay\"\npath = \"rec.raw\"\npixel-format = \"nv12\"\nwidth = 64\nheight = 16\n");
    let err = probe(&wrong_size).expect_err("size the recording does not hold");
    assert!(err.contains("camera[0].width: "), "{err}");

    // A directory of PNGs delivers rgb24, not mjpeg.
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let png = images.join("a.png");
    let file = std::io::BufWriter::new(std::fs::File::create(&png).unwrap());
    let mut enc = png::Encoder::new(file, 4, 2);
    enc.set_color(png::ColorType::Rgb);
    enc.write_header()
        .unwrap()
        .write_image_data(&[7u8; 24])
        .unwrap();
    let mjpeg = write("[[camera]]\nsource = \"replay\"\npath = \"images\"\npixel-format = \"mjpeg\"\nwidth = 4\nheight = 2\n");
    let err = probe(&mjpeg).expect_err("png directory as mjpeg");
    assert!(err.contains("rgb24"), "{err}");
    let rgb = write("[[camera]]\nsource = \"replay\"\npath = \"images\"\npixel-format = \"rgb24\"\nwidth = 4\nheight = 2\n");
    probe(&rgb).expect("png directory as rgb24");
}

#[test]
fn prompts_file_alone_replaces_the_demo_prompts_and_must_not_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.txt"), "# nothing yet\n\n").unwrap();
    let path = dir.path().join("ocellus.toml");
    std::fs::write(&path, "[[camera]]\n[prompts]\nfile = \"p.txt\"\n").unwrap();
    let config = Config::load(&path).expect("parsing does not read the prompts file");
    let err = config.prompts.current().expect_err("empty prompts file");
    assert!(err.to_string().contains("prompt list is empty"), "{err}");
    std::fs::write(dir.path().join("p.txt"), "a person\na door\n").unwrap();
    let config = Config::load(&path).unwrap();
    assert!(config.prompts.labels.is_empty());
    assert_eq!(config.prompts.current().unwrap(), ["a person", "a door"]);
}

// ---- [realtime] (moved from src/rt: the config sits above rt, so its parsing is tested here) ----

const RT_CAMERA: &str = "[[camera]]\nsource = \"synthetic\"\n";

fn parse_realtime(realtime: &str) -> Result<ocellus::rt::RealtimeSettings, String> {
    Config::parse(
        &format!("{RT_CAMERA}\n[realtime]\n{realtime}\n"),
        Origin::Embedded,
    )
    .map(|c| c.realtime)
    .map_err(|e| e.to_string())
}

#[test]
fn realtime_section_parses_into_policies() {
    let rt = parse_realtime(
        "capture-cpus = [1, 0]\ninference-cpus = [1]\ncapture-priority = 50\n\
         inference-priority = 40\nstrict = true",
    )
    .expect("valid [realtime]");
    assert_eq!(rt.capture.cpus, vec![0, 1]);
    assert_eq!(rt.capture.fifo_priority, Some(50));
    assert_eq!(rt.inference.cpus, vec![1]);
    assert_eq!(rt.inference.fifo_priority, Some(40));
    assert!(rt.strict);
    let none = parse_realtime("").expect("empty [realtime]");
    assert_eq!(none, ocellus::rt::RealtimeSettings::default());
    assert!(none.capture.is_default() && !none.strict);
}

#[test]
fn inference_threads_default_to_the_cpus_the_inference_role_is_given() {
    use ocellus::config::ThreadsOrigin;
    let threads = |text: &str| {
        let c = Config::parse(&format!("{RT_CAMERA}\n{text}\n"), Origin::Embedded)
            .expect("valid config");
        (c.model.threads, c.model.threads_origin)
    };
    // Not pinned: one thread, so ocellus does not take a core the control loop may run on.
    assert_eq!(threads(""), (1, ThreadsOrigin::Default));
    // Pinned to two CPUs: one matrix-product thread on each.
    assert_eq!(
        threads("[realtime]\ninference-cpus = [2, 3]"),
        (2, ThreadsOrigin::InferenceCpus)
    );
    // Said in the file: that, whatever the pinning.
    assert_eq!(
        threads("[model]\nthreads = 1\n[realtime]\ninference-cpus = [2, 3]"),
        (1, ThreadsOrigin::Configured)
    );
}

#[test]
fn bad_realtime_values_name_the_key() {
    for (text, key, needle) in [
        ("capture-cpus = []", "realtime.capture-cpus", "is empty"),
        (
            "inference-cpus = [0, 0]",
            "realtime.inference-cpus",
            "listed twice",
        ),
        (
            "inference-cpus = [4096]",
            "realtime.inference-cpus",
            "out of range",
        ),
        (
            "capture-priority = 0",
            "realtime.capture-priority",
            "outside 1..=99",
        ),
        (
            "inference-priority = 100",
            "realtime.inference-priority",
            "outside 1..=99",
        ),
        ("capture-cpu = [0]", "realtime", "capture-cpu"),
    ] {
        let err = parse_realtime(text).expect_err(text);
        assert!(err.contains(key) && err.contains(needle), "{text}: {err}");
    }
}
