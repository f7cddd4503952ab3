//! The flight recorder (docs/recorder.md), in the library: a deadline miss triggers a recording that holds
//! the frames around the miss with their results, and replaying it reproduces those results bit for bit;
//! the disk quota removes the oldest recordings first; a directory that cannot be written is a counted error
//! while frames keep flowing; bad recordings and configurations are refused with the problem and the fix.
//!
//! Counts and content only, no wall-clock assertion; every wait has a watchdog that fails the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocellus::config::{Config, Origin};
use ocellus::recorder::{recordings_in, External, Outcome, Recording};
use ocellus::runtime::{Runtime, RuntimeOptions, ShmTarget};
use ocellus::sink::{FrameResult, Sink, SinkError};
use ocellus::stats::Stage;

const WATCHDOG: Duration = Duration::from_secs(300);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One synthetic 160x120 YUYV camera at `fps`, the demo model (fp32, one thread), and `extra`.
fn config(fps: u32, extra: &str) -> Config {
    let text = format!(
        "[[camera]]\nname = \"front\"\nsource = \"synthetic\"\npixel-format = \"yuyv\"\nwidth = 160\nheight = 120\n\
         fps = {fps}\n\n[model]\nmanifest = \"{}\"\nvariant = \"fp32\"\nthreads = 1\n\n[memory]\nlock = false\n\n{extra}\n",
        root().join("models/demo/manifest.toml").display()
    );
    Config::parse(&text, Origin::File(root().join("test.toml")))
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// What the sinks saw of one frame.
#[derive(Debug, Clone)]
struct Seen {
    flags: u32,
    embeds: Vec<f32>,
    latents: Vec<f32>,
    scores: Vec<f32>,
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<HashMap<u64, Seen>>>);

impl Sink for Collect {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        self.0
            .lock()
            .map_err(|_| SinkError::Closed { sink: "collect" })?
            .insert(
                r.sequence,
                Seen {
                    flags: r.flags,
                    embeds: r.image_embeds.to_vec(),
                    latents: r.latents.to_vec(),
                    scores: r.scores.to_vec(),
                },
            );
        Ok(())
    }
}

fn build(config: &Config, sink: Option<Collect>) -> Runtime {
    let mut extra_sinks: Vec<ocellus::runtime::SinkFactory> = Vec::new();
    if let Some(s) = sink {
        extra_sinks.push(Box::new(move |_| Box::new(s) as Box<dyn Sink>));
    }
    Runtime::build(
        config,
        RuntimeOptions {
            shm: ShmTarget::Off,
            take_memory: false,
            extra_sinks,
            ..RuntimeOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + WATCHDOG;
    while !done() {
        assert!(
            Instant::now() < until,
            "watchdog: no {what} within {WATCHDOG:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn a_late_frame_triggers_a_recording_of_the_frames_around_it_that_replays_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Frames 0..29 are on time; from the 30th published frame on, the encoder sleeps 600 ms, twice its
    // 300 ms deadline (which an undelayed encoder run never comes near). The window holds 40 frames, a
    // quarter of them recorded after the trigger.
    let cfg = config(
        30,
        &format!(
            "[budgets]\ndequeue-ms = 60000\nprepare-ms = 60000\nencoder-ms = 300\nresampler-ms = 60000\n\
             publish-ms = 60000\nend-to-end-ms = 60000\n\n[testing]\ndelay-stage = \"encoder\"\ndelay-ms = 600\n\
             delay-after-frames = 30\n\n[recorder]\nenabled = true\nframes = 40\nafter = 0.25\non-late = [\"encoder\"]\n\
             on-camera-fault = false\ndir = \"{}\"\n",
            dir.path().join("rec").display()
        ),
    );
    let seen = Collect::default();
    let mut runtime = build(&cfg, Some(seen.clone()));
    let stats = Arc::clone(runtime.stats());
    runtime.start().expect("start");
    wait_until("recording", || stats.recorder.made.load(Relaxed) >= 1);
    runtime.stop();
    let r = &stats.recorder;
    assert_eq!(r.errors.load(Relaxed), 0);

    let recordings = recordings_in(&dir.path().join("rec"));
    assert!(!recordings.is_empty());
    let (path, bytes) = &recordings[0];
    let recording = Recording::open(path).unwrap_or_else(|e| panic!("{e}"));
    let h = &recording.header;
    let trigger = h.trigger.as_ref().expect("a triggered recording says why");
    assert_eq!(
        (
            trigger.kind.as_str(),
            trigger.stage.as_deref(),
            trigger.camera
        ),
        ("late", Some("encoder"), Some(0))
    );
    let json = std::fs::metadata(path.join("recording.json"))
        .expect("json")
        .len();
    assert_eq!(
        *bytes,
        h.bytes + json,
        "recording.json's bytes: its frame and results files"
    );
    let results = recording.results(0).expect("results");
    assert_eq!(results.len(), 40, "the whole window");
    let late = Stage::Encoder.late_bit();
    let trigger_seq = trigger.sequence.expect("the late frame's sequence");
    let at = results
        .iter()
        .position(|f| f.sequence == trigger_seq)
        .expect("the late frame is in the recording");
    // Around the miss: on-time frames before it, the late frame, then the window's after-part (10 frames).
    assert_eq!(at, 29, "29 frames before the trigger, itself, 10 after");
    assert!(results[..at].iter().all(|f| f.flags & late == 0));
    assert!(results[at..].iter().all(|f| f.flags & late != 0));
    assert!(results[at].stage_ns[Stage::Encoder.index()] >= 600_000_000);
    assert!(results.windows(2).all(|w| w[0].sequence < w[1].sequence));
    // Each recorded frame's results are what the sinks were given for it.
    let seen = seen.0.lock().expect("seen");
    for f in &results {
        let s = &seen[&f.sequence];
        assert_eq!(bits(&f.image_embeds), bits(&s.embeds), "seq {}", f.sequence);
        assert_eq!(bits(&f.latents), bits(&s.latents), "seq {}", f.sequence);
        assert_eq!(bits(&f.scores), bits(&s.scores), "seq {}", f.sequence);
        assert_eq!(f.flags & !late & 0xffff, s.flags & !late & 0xffff);
        // One prompt set the whole run; its version comes from a process-wide counter that the other tests
        // of this binary, running in parallel, advance too, so it is the header's table, not a fixed number.
        assert_eq!(f.prompt_version, h.prompts[0].version);
        assert!(
            f.label.is_some(),
            "the synthetic camera's ground truth is kept"
        );
    }
    assert_eq!(h.prompts.len(), 1);
    assert_eq!(h.prompts[0].labels.len(), 16);
    drop(seen);

    // Replaying the frames through the same model on the same machine gives the same results, bit for bit.
    let c = ocellus::runtime::replay(&recording, &cfg, true, &AtomicBool::new(false))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.same_model, "{:?}", c.model_differences);
    assert_eq!(c.frames, 40);
    assert!(c.identical, "{:?}", c.why_not_identical);
    assert_eq!(c.top1_agreement, Some(1.0));
    assert!(c.changed.is_empty());
    eprintln!(
        "recording {}: {} frames, {:.1} KiB, written in {:.1} ms; replay identical",
        path.display(),
        results.len(),
        h.bytes as f64 / 1024.0,
        h.write_ms
    );
}

#[test]
fn the_disk_quota_keeps_the_newest_recordings_and_removes_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("rec");
    // 10 frames of 160x120 YUYV: about 0.4 MiB a recording; a 1 MiB quota holds two.
    let cfg = config(
        0,
        &format!(
            "[recorder]\nenabled = true\nframes = 10\nafter = 0\non-late = []\non-camera-fault = false\n\
             quota-mib = 1\ndir = \"{}\"\n",
            rec.display()
        ),
    );
    let mut runtime = build(&cfg, None);
    runtime.start().expect("start");
    let stats = Arc::clone(runtime.stats());
    wait_until("a full window", || {
        stats.camera(0).counters.processed.load(Relaxed) >= 12
    });
    let trigger = runtime.recorder().expect("recorder").trigger();
    let mut written = Vec::new();
    for _ in 0..5 {
        let seq = trigger.request(External::Command);
        let n = match trigger.outcome(seq, WATCHDOG) {
            Some(Outcome::Accepted(n)) => n,
            other => panic!("trigger not accepted: {other:?}"),
        };
        let path = trigger
            .written(n, WATCHDOG)
            .expect("written in time")
            .unwrap_or_else(|e| panic!("{e}"));
        written.push(path);
        // The next window fills before the next trigger.
        let at = stats.camera(0).counters.processed.load(Relaxed);
        wait_until("a new window", || {
            stats.camera(0).counters.processed.load(Relaxed) >= at + 12
        });
    }
    runtime.stop();
    let r = &stats.recorder;
    assert_eq!((r.made.load(Relaxed), r.errors.load(Relaxed)), (5, 0));
    let left = recordings_in(&rec);
    let total: u64 = left.iter().map(|(_, b)| b).sum();
    assert!(total <= 1 << 20, "{total} bytes in {left:?}");
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(r.removed.load(Relaxed), 3);
    let names: Vec<&PathBuf> = left.iter().map(|(p, _)| p).collect();
    assert_eq!(names, [&written[3], &written[4]], "the newest are kept");
    assert!(written[..3].iter().all(|p| !p.exists()));
}

#[test]
fn a_recording_directory_that_cannot_be_written_is_a_counted_error_and_frames_keep_flowing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let cfg = config(
        0,
        &format!(
            "[recorder]\nenabled = true\nframes = 8\nafter = 0\non-late = []\non-camera-fault = false\n\
             dir = \"{}\"\nsocket = \"{}\"\n",
            file.join("recordings").display(),
            dir.path().join("trigger.sock").display()
        ),
    );
    let mut runtime = build(&cfg, None);
    runtime
        .start()
        .expect("a recorder problem does not stop perception");
    let stats = Arc::clone(runtime.stats());
    let processed = || stats.camera(0).counters.processed.load(Relaxed);
    wait_until("frames", || processed() >= 10);
    let trigger = runtime.recorder().expect("recorder").trigger();
    let seq = trigger.request(External::Command);
    let Some(Outcome::Accepted(n)) = trigger.outcome(seq, WATCHDOG) else {
        panic!("trigger not taken")
    };
    let err = trigger
        .written(n, WATCHDOG)
        .expect("the writer answers")
        .expect_err("nothing can be written there");
    assert!(
        err.contains("recorder.dir") && err.contains("a-file"),
        "{err}"
    );
    assert_eq!(stats.recorder.errors.load(Relaxed), 1);
    assert_eq!(stats.recorder.made.load(Relaxed), 0);
    // The frame path did not wait: frames keep being processed, and the next trigger is taken.
    let at = processed();
    wait_until("frames after the failed write", || processed() >= at + 10);
    let seq = trigger.request(External::Command);
    assert!(matches!(
        trigger.outcome(seq, WATCHDOG),
        Some(Outcome::Accepted(_))
    ));
    runtime.stop();
    assert_eq!(stats.recorder.errors.load(Relaxed), 2);
}

/// A copy of the committed version-1 recording (tests/fixtures/recording-v1) in `dir/name`.
fn fixture(dir: &Path, name: &str) -> PathBuf {
    let src = root().join("tests/fixtures/recording-v1");
    let dst = dir.join(name);
    std::fs::create_dir_all(&dst).expect("mkdir");
    for entry in std::fs::read_dir(&src).expect("fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy");
    }
    dst
}

#[test]
fn the_committed_version_1_recording_still_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = Recording::open(&fixture(dir.path(), "v1")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rec.header.version, 1);
    assert_eq!(rec.header.cameras.len(), 1);
    let results = rec.results(0).expect("results");
    assert_eq!(results.len(), rec.header.cameras[0].frames);
    assert!(!results.is_empty());
    for f in &results {
        assert_eq!(f.image_embeds.len(), rec.header.embed_dim);
        let norm: f32 = f.image_embeds.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-3, "embeddings are L2-normalised");
        let sum: f32 = f.scores.iter().sum();
        assert!((sum - 1.0).abs() < 1e-3, "scores are a softmax");
    }
}

#[test]
fn bad_recordings_are_refused_with_the_problem_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open_err = |p: &Path| Recording::open(p).expect_err("refused").to_string();

    let newer = fixture(dir.path(), "newer");
    let header = newer.join("recording.json");
    let text = std::fs::read_to_string(&header).expect("read");
    std::fs::write(
        &header,
        text.replacen("\"version\": 1", "\"version\": 2", 1),
    )
    .expect("write");
    let e = open_err(&newer);
    assert!(
        e.contains("version 2") && e.contains("reads version 1") && e.contains("newer one"),
        "{e}"
    );

    for file in ["cam0.raw", "cam0.results"] {
        let cut = fixture(dir.path(), file);
        let path = cut.join(file);
        let len = std::fs::metadata(&path).expect("stat").len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(len - 100).expect("truncate");
        let e = open_err(&cut);
        assert!(
            e.contains(file) && e.contains("truncated") && e.contains("copy the recording again"),
            "{e}"
        );
    }

    let partial = fixture(dir.path(), "partial");
    std::fs::remove_file(partial.join("recording.json")).expect("rm");
    let e = open_err(&partial);
    assert!(e.contains("incomplete"), "{e}");

    // A configuration whose camera does not match the recording's.
    let rec = Recording::open(&fixture(dir.path(), "ok")).expect("open");
    let cam = &rec.header.cameras[0];
    let other = Config::parse(
        &format!(
            "[[camera]]\nname = \"front\"\nsource = \"synthetic\"\npixel-format = \"mjpeg\"\nwidth = {}\nheight = {}\n",
            cam.width, cam.height
        ),
        Origin::Embedded,
    )
    .expect("config");
    let e = ocellus::runtime::replay_config(&rec, &other, true)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("holds yuyv")
            && e.contains("camera[0]")
            && e.contains("is mjpeg")
            && e.contains("pixel-format = \"yuyv\""),
        "{e}"
    );
    // Without a configuration of its own the recording's cameras are used.
    let ok = ocellus::runtime::replay_config(&rec, &other, false).expect("the recording's cameras");
    assert_eq!(ok.cameras[0].format.name(), "yuyv");
}

#[test]
fn recorder_keys_are_validated_and_a_ring_over_the_budget_is_refused_naming_the_keys() {
    for (extra, key, needle) in [
        (
            "seconds = 2\nframes = 10\n",
            "recorder.frames",
            "seconds is set too",
        ),
        ("seconds = 0\n", "recorder.seconds", "above 0"),
        ("after = 1.5\n", "recorder.after", "0..=0.9"),
        ("quota-mib = 0\n", "recorder.quota-mib", "at least 1"),
        (
            "on-late = [\"score\"]\n",
            "recorder.on-late",
            "unknown stage 'score'",
        ),
        ("dir = \"\"\n", "recorder.dir", "is empty"),
        ("colour = 1\n", "recorder", "colour"),
    ] {
        let e = Config::parse(
            &format!("[[camera]]\nsource = \"synthetic\"\n\n[recorder]\nenabled = true\n{extra}"),
            Origin::Embedded,
        )
        .expect_err(extra)
        .to_string();
        assert!(e.contains(key) && e.contains(needle), "{extra}: {e}");
    }
    let e = Config::parse(
        "[[camera]]\nsource = \"synthetic\"\nfps = 0\n\n[recorder]\nenabled = true\n",
        Origin::Embedded,
    )
    .expect_err("seconds without fps")
    .to_string();
    assert!(
        e.contains("recorder.seconds")
            && e.contains("recorder.frames")
            && e.contains("camera[0].fps"),
        "{e}"
    );
    // Off by default.
    assert!(!config(30, "").recorder.enabled);
    // Building the runtime (no memory taken, no segment) must fail; its message.
    let refusal = |cfg: &Config, why: &str| {
        Runtime::build(
            cfg,
            RuntimeOptions {
                take_memory: false,
                shm: ShmTarget::Off,
                ..Default::default()
            },
        )
        .expect_err(why)
        .to_string()
    };

    // A window that does not fit the disk quota.
    let cfg = config(
        30,
        "[recorder]\nenabled = true\nseconds = 120\nquota-mib = 100\n",
    );
    let e = refusal(&cfg, "over the quota");
    assert!(
        e.contains("recorder.quota-mib") && e.contains("recorder.seconds"),
        "{e}"
    );

    // A ring that does not fit the memory budget: refused before the models load, naming the keys.
    let cfg = config(
        30,
        "[budgets]\nmemory-mib = 256\n\n[recorder]\nenabled = true\nseconds = 300\nquota-mib = 100000\n",
    );
    let e = refusal(&cfg, "over the budget");
    assert!(
        e.contains("budget exceeded") && e.contains("flight recorder rings of the last frames: front 9000 frames (recorder.seconds 300 x 30 fps)")
            && e.contains("lower recorder.seconds or recorder.frames"),
        "{e}"
    );

    // A ring that fits is in the plan `ocellus check` prints, at its exact size.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        30,
        &format!(
            "[recorder]\nenabled = true\nseconds = 2\ndir = \"{}\"\n",
            dir.path().display()
        ),
    );
    let report = ocellus::runtime::check(&cfg);
    let plan = report.plan.expect("a plan");
    let part = plan.part("flight recorder").expect("the ring is counted");
    let manifest =
        ocellus::Manifest::load(&root().join("models/demo/manifest.toml")).expect("manifest");
    let shape = ocellus::recorder::ResultsShape {
        embed_dim: manifest.embed_dim,
        num_latents: manifest.resampler.num_latents,
        latent_dim: manifest.resampler.latent_dim,
        max_scores: cfg.prompts.max,
    };
    assert_eq!(
        part.bytes,
        ocellus::recorder::ring_bytes(60, 160 * 120 * 2, &shape)
    );
    assert!(
        part.detail
            .contains("front 60 frames (recorder.seconds 2 x 30 fps)"),
        "{}",
        part.detail
    );
    assert!(
        report
            .ok
            .iter()
            .any(|l| l.starts_with("flight recorder: 60 frames")),
        "{:?}",
        report.ok
    );
}
