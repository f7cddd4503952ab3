//! Deadlines under an artificially slow stage (`[testing] delay-stage` / `delay-ms`, a test aid): late frames
//! are flagged and counted per stage with their overrun, inference that cannot keep up drops the older frames
//! (newest wins, every drop counted) and nothing grows: every captured frame is accounted for and the resident
//! set stays flat.
//!
//! Counts and content only; the one comparison with a duration is the delay itself (a sleep lasts at least as
//! long as asked). Every wait has a limit that fails the test instead of hanging.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ocellus::config::{Config, Origin};
use ocellus::infer::{InferenceEngine, RunVariant, TractEngine};
use ocellus::manifest::{Manifest, Variant};
use ocellus::pipeline::{CameraSpec, Deadlines, Pipeline, PipelineSettings, TestHooks};
use ocellus::prompts::{PromptSet, TextEncoder};
use ocellus::scene::PROMPTS;
use ocellus::shm::{
    format_top, CameraCounters, Dims, LatentsDtype, ShmReader, TopSnapshot, WriterConfig,
};
use ocellus::sink::FrameResult;
use ocellus::sink::{ShmSink, ShmSinkConfig};
use ocellus::sink::{Sink, SinkError};
use ocellus::stats::{Stage, Stats};

const LIMIT: Duration = Duration::from_secs(300);

fn demo() -> (Manifest, Box<dyn InferenceEngine>, Arc<ArcSwap<PromptSet>>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/manifest.toml");
    let manifest = Manifest::load(&path).expect("demo manifest");
    let engine: Box<dyn InferenceEngine> =
        Box::new(TractEngine::load(&manifest, RunVariant::Fp32, 1).expect("load demo engine"));
    let labels: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let set = TextEncoder::load(&manifest, Variant::Fp32)
        .and_then(|mut t| t.embed(&labels))
        .expect("embed demo prompts");
    (manifest, engine, Arc::new(ArcSwap::from_pointee(set)))
}

/// The config of a synthetic 30 fps camera plus `extra`, parsed as a user's file would be.
fn config(extra: &str) -> Config {
    Config::parse(
        &format!(
            "[[camera]]\nname = \"cam\"\nsource = \"synthetic\"\npixel-format = \"yuyv\"\nwidth = 160\n\
             height = 120\nfps = 30\npool-size = 4\n\n{extra}\n"
        ),
        Origin::Embedded,
    )
    .expect("valid config")
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    sequence: u64,
    flags: u32,
    stage_ns: [u64; ocellus::stats::STAGE_COUNT],
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Seen>>>);

impl Sink for Collect {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        self.0
            .lock()
            .map_err(|_| SinkError::Closed { sink: "collect" })?
            .push(Seen {
                sequence: r.sequence,
                flags: r.flags,
                stage_ns: r.stage_ns,
            });
        Ok(())
    }
}

/// Resident set size of this process in bytes (/proc/self/statm).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn wait_for(what: &str, stats: &Stats, mut done: impl FnMut(&Stats) -> bool) {
    let until = Instant::now() + LIMIT;
    while !done(stats) {
        assert!(
            Instant::now() < until,
            "watchdog: no {what} within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one run left behind.
struct Run {
    stats: Arc<Stats>,
    seen: Vec<Seen>,
    /// Resident set after `frames / 4` and after `frames` frames.
    rss_warm: u64,
    rss_end: u64,
    /// The shared-memory status block's counters of camera 0, read after the last frame.
    shm: CameraCounters,
    /// What `ocellus top` showed then.
    top: String,
}

/// Runs the pipeline built from `cfg` (its budgets and test hooks) for `frames` published frames, publishing
/// into a shared-memory segment of its own too.
fn run(cfg: &Config, frames: u64, tag: &str) -> Run {
    let (manifest, engine, prompts) = demo();
    let cam = &cfg.cameras[0];
    let source = ocellus::source::open(0, cam).expect("synthetic source");
    let b = &cfg.budgets;
    let settings = PipelineSettings {
        deadlines: Deadlines::default()
            .with(Stage::Dequeue, b.dequeue)
            .with(Stage::Prepare, b.prepare)
            .with(Stage::Encoder, b.encoder)
            .with(Stage::Resampler, b.resampler)
            .with(Stage::Publish, b.publish)
            .with(Stage::EndToEnd, b.end_to_end),
        test_hooks: cfg.testing,
        // The inference thread ends by itself after `frames`: no delay is cut short by a stop.
        max_frames: Some(frames),
        ..PipelineSettings::default()
    };
    let sink = Collect::default();
    let mut p = Pipeline::new(
        settings,
        vec![CameraSpec {
            name: cam.name.clone(),
            source,
            format: cam.format,
            width: cam.width,
            height: cam.height,
            pool_size: cam.pool_size,
        }],
        engine,
        &manifest.preprocess,
        prompts,
        vec![Box::new(sink.clone())],
    )
    .expect("pipeline");
    let name = format!("/ocellus-test-{}-deadlines-{tag}", std::process::id());
    let dims = Dims {
        cameras: 1,
        embed_dim: manifest.embed_dim,
        num_latents: manifest.resampler.num_latents,
        latent_dim: manifest.resampler.latent_dim,
        max_prompts: 64,
        latents_dtype: LatentsDtype::F32,
    };
    let mut writer = WriterConfig::new(name.clone(), dims);
    writer.heartbeat_period = Duration::from_millis(10);
    let shm = ShmSink::create(&ShmSinkConfig::new(writer), Some(Arc::clone(p.stats())))
        .expect("shared-memory segment");
    p.add_sink(Box::new(shm)).expect("add the shm sink");
    let mut reader = ShmReader::open(&name).expect("open the segment");
    p.start().expect("start");
    let stats = Arc::clone(p.stats());
    let processed = |s: &Stats| s.total(|c| &c.processed);
    wait_for("warm-up frames", &stats, |s| processed(s) >= frames / 4);
    let rss_warm = rss_bytes();
    // What `ocellus top` shows while it runs, once the heartbeat has copied a late frame's overrun.
    let until = Instant::now() + LIMIT;
    while reader.counters(0).map_or(0, |c| c.last_overrun_ns) == 0
        && p.is_running()
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut sample = reader.new_sample();
    let top = TopSnapshot::take(&mut reader, &mut sample)
        .map(|snapshot| format_top(None, &snapshot))
        .unwrap_or_else(|e| format!("(no top: {e})"));
    wait_for("the last frame", &stats, |_| !p.is_running());
    let rss_end = rss_bytes();
    // The heartbeat copies the counters into the status block every 10 ms while the sink runs.
    let mut shm = reader.counters(0).expect("status block");
    let until = Instant::now() + LIMIT;
    while shm.processed < processed(&stats) && Instant::now() < until && p.is_running() {
        std::thread::sleep(Duration::from_millis(5));
        shm = reader.counters(0).expect("status block");
    }
    p.stop();
    let seen = sink.0.lock().expect("seen").clone();
    Run {
        stats,
        seen,
        rss_warm,
        rss_end,
        shm,
        top,
    }
}

const DELAY_MS: u64 = 40;

#[test]
fn a_slow_encoder_is_flagged_counted_and_drops_frames_without_growing_anything() {
    // Encoder budget 20 ms, the test aid adds 40 ms to every encoder run; the 30 fps camera delivers a frame
    // every 33 ms, so inference (over 40 ms a frame) cannot keep up. The other budgets are loose.
    let cfg = config(&format!(
        "[budgets]\ndequeue-ms = 60000\nprepare-ms = 60000\nencoder-ms = 20\nresampler-ms = 60000\n\
         publish-ms = 60000\nend-to-end-ms = 60000\n\n[testing]\ndelay-stage = \"encoder\"\n\
         delay-ms = {DELAY_MS}\n"
    ));
    assert_eq!(
        cfg.testing,
        TestHooks {
            delay: Some((Stage::Encoder, Duration::from_millis(DELAY_MS))),
            delay_after_frames: None,
            stall_after_frames: None,
        }
    );
    let frames = 120;
    let Run {
        stats,
        seen,
        rss_warm,
        rss_end,
        shm,
        top,
    } = run(&cfg, frames, "enc");
    let c = &stats.camera(0).counters;
    let processed = c.processed.load(Relaxed);
    let late_enc = c.late[Stage::Encoder.index()].load(Relaxed);

    // Every frame was late in the encoder and only there; each says so in its flags.
    assert_eq!(processed, frames);
    assert_eq!(late_enc, processed, "every frame's encoder is over budget");
    assert_eq!(c.late_frames.load(Relaxed), processed);
    for stage in [
        Stage::Dequeue,
        Stage::Prepare,
        Stage::Resampler,
        Stage::Publish,
        Stage::EndToEnd,
    ] {
        assert_eq!(c.late[stage.index()].load(Relaxed), 0, "{stage:?}");
    }
    assert_eq!(seen.len() as u64, processed);
    for s in &seen {
        assert_eq!(s.flags & 0x7f, Stage::Encoder.late_bit(), "{s:?}");
        assert!(
            s.stage_ns[Stage::Encoder.index()] >= DELAY_MS * 1_000_000,
            "{s:?}"
        );
    }
    // The last overrun: the encoder's time minus its 20 ms budget, so at least the 40 ms delay minus 20 ms.
    let overrun = c.last_overrun_ns[Stage::Encoder.index()].load(Relaxed);
    assert!(overrun >= (DELAY_MS - 20) * 1_000_000, "{overrun}");
    assert_eq!(stats.last_overrun_ns(Stage::Encoder), overrun);
    assert_eq!(
        c.last_late_stages.load(Relaxed),
        u64::from(Stage::Encoder.late_bit())
    );
    assert!(c.last_late_overrun_ns.load(Relaxed) >= (DELAY_MS - 20) * 1_000_000);
    // The shared-memory status block says the same to a control loop (copied by the heartbeat: the counts
    // may trail the run by the frames of one heartbeat period).
    assert!(
        shm.late[Stage::Encoder.index()] >= 1 && shm.late[Stage::Encoder.index()] <= processed,
        "{shm:?}"
    );
    assert_eq!(shm.late[Stage::Prepare.index()], 0, "{shm:?}");
    assert_eq!(
        shm.last_late_stages,
        u64::from(Stage::Encoder.late_bit()),
        "{shm:?}"
    );
    assert!(
        shm.last_overrun_ns >= (DELAY_MS - 20) * 1_000_000,
        "{shm:?}"
    );
    assert!(
        top.contains("last late +") && top.contains(" late(encoder)\n"),
        "{top}"
    );
    let summary = stats.summary();
    let enc = &summary.stages[Stage::Encoder.index()];
    assert_eq!(enc.late, processed);
    assert!(enc.last_overrun_ms >= (DELAY_MS - 20) as f64);
    let mut line = ocellus::stats::StatusLine::new(&stats);
    let text = line.render(&stats, Instant::now()).to_owned();
    assert!(
        text.contains(&format!("late {processed} (enc {processed} +")),
        "{text}"
    );

    // Inference could not keep up: frames were dropped, newest first, and every one is accounted for.
    let captured = c.captured.load(Relaxed);
    let dropped = c.dropped.load(Relaxed);
    assert!(
        dropped > 0,
        "no drops although inference is slower than the camera"
    );
    let unaccounted = captured - processed - dropped;
    assert!(
        unaccounted <= 2,
        "captured {captured} = processed {processed} + dropped {dropped} + {unaccounted} in flight: \
         at most the handoff slot and the frame being processed"
    );
    // Published frames are in capture order; the frames skipped between them are the dropped ones.
    let skipped: u64 = seen
        .windows(2)
        .map(|w| {
            assert!(w[1].sequence > w[0].sequence, "{w:?}");
            w[1].sequence - w[0].sequence - 1
        })
        .sum();
    // The synthetic camera numbers its frames from 0: frames before the first published one were dropped
    // too, and up to 2 more after the last one (while the pipeline stopped).
    let before_first = seen[0].sequence;
    assert!(
        skipped + before_first <= dropped && dropped - skipped - before_first <= 2,
        "skipped {skipped} + {before_first} before the first, dropped {dropped}"
    );

    // Nothing grows: the resident set after 120 frames is within 8 MiB of the one after 30.
    let growth = rss_end.saturating_sub(rss_warm);
    assert!(
        growth < 8 << 20,
        "resident set grew by {growth} bytes from frame {} to {frames}",
        frames / 4
    );
    eprintln!(
        "slow encoder: {processed} frames, {late_enc} late (last overrun {:.1} ms), captured {captured}, \
         dropped {dropped}, rss {} -> {} KiB",
        overrun as f64 / 1e6,
        rss_warm / 1024,
        rss_end / 1024
    );
}

#[test]
fn each_delayable_stage_is_charged_to_its_own_deadline() {
    // One stage at a time: the delayed stage has a 25 ms budget, every other stage 60 s; only the delayed
    // stage's counter moves (on any machine: the others could only miss by a minute).
    for (name, stage) in [
        ("dequeue", Stage::Dequeue),
        ("prepare", Stage::Prepare),
        ("resampler", Stage::Resampler),
        ("publish", Stage::Publish),
    ] {
        let budget = |key: &str| if key == name { 25 } else { 60_000 };
        let cfg = config(&format!(
            "[budgets]\ndequeue-ms = {}\nprepare-ms = {}\nencoder-ms = 60000\nresampler-ms = {}\n\
             publish-ms = {}\nend-to-end-ms = 60000\n\n[testing]\ndelay-stage = \"{name}\"\n\
             delay-ms = {DELAY_MS}\n",
            budget("dequeue"),
            budget("prepare"),
            budget("resampler"),
            budget("publish"),
        ));
        let Run { stats, seen, .. } = run(&cfg, 8, name);
        let c = &stats.camera(0).counters;
        let processed = c.processed.load(Relaxed);
        assert_eq!(
            c.late[stage.index()].load(Relaxed),
            processed,
            "{name}: every frame late in {stage:?}"
        );
        assert!(
            stats.last_overrun_ns(stage) >= (DELAY_MS - 25) * 1_000_000,
            "{name}"
        );
        for other in Stage::ALL {
            if other != stage {
                assert_eq!(c.late[other.index()].load(Relaxed), 0, "{name}: {other:?}");
            }
        }
        // The published flags carry the stage's bit (publish is still under way when a sink sees the frame).
        if stage != Stage::Publish {
            assert!(
                seen.iter().all(|s| s.flags & stage.late_bit() != 0),
                "{name}: {seen:?}"
            );
        }
    }
}

#[test]
fn testing_keys_are_validated_with_the_key_named() {
    for (text, key, needle) in [
        (
            "[testing]\ndelay-stage = \"encoder\"\n",
            "testing.delay-ms",
            "without it",
        ),
        (
            "[testing]\ndelay-ms = 10\n",
            "testing.delay-stage",
            "without it",
        ),
        (
            "[testing]\ndelay-stage = \"score\"\ndelay-ms = 10\n",
            "testing.delay-stage",
            "unknown stage 'score'",
        ),
        (
            "[testing]\ndelay-stage = \"encoder\"\ndelay-ms = -1\n",
            "testing.delay-ms",
            "above 0",
        ),
        (
            "[testing]\nstall-after-frames = 0\n",
            "testing.stall-after-frames",
            "at least 1",
        ),
        ("[testing]\nslow = true\n", "testing", "slow"),
    ] {
        let err = Config::parse(
            &format!("[[camera]]\nsource = \"synthetic\"\n{text}"),
            Origin::Embedded,
        )
        .expect_err(text)
        .to_string();
        assert!(err.contains(key) && err.contains(needle), "{text}: {err}");
    }
    let off = config("");
    assert!(!off.testing.is_active());
}
