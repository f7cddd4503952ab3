//! The runtime's shared-memory sink: frame results and the status block reach a reader; and a writer process
//! killed with SIGKILL: the same reader reports it not alive once its heartbeat stops, and picks up the next
//! writer process (new generation) without being restarted. The writer runs in a child process (this test
//! binary, re-executed) through `ShmSink`, whose heartbeat thread beats the segment.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ocellus::shm::{
    Dims, LatentsDtype, ReadError, ReaderOptions, Sample, ShmReader, ShmWriter, WriterConfig,
};
use ocellus::sink::{ShmSink, ShmSinkConfig};

const CHILD_ENV: &str = "OCELLUS_SHM_KILL_CHILD";
const PERIOD: Duration = Duration::from_millis(50);

fn config(name: &str) -> WriterConfig {
    let dims = Dims {
        cameras: 1,
        embed_dim: 8,
        num_latents: 2,
        latent_dim: 4,
        max_prompts: 2,
        latents_dtype: LatentsDtype::F32,
    };
    let mut c = WriterConfig::new(name, dims);
    c.heartbeat_period = PERIOD;
    c
}

/// The writer process: publishes one sample whose sequence is its pid, then idles (at most a minute) while
/// the sink's heartbeat thread beats.
#[test]
fn writer_child() {
    let Ok(name) = std::env::var(CHILD_ENV) else {
        return; // only meaningful when re-executed by `kill_9_is_detected_and_the_restart_followed`
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let sink = loop {
        match ShmSink::create(&ShmSinkConfig::new(config(&name)), None) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("writer child: {e}; retrying");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("writer child: {e}"),
        }
    };
    publish_pid(sink);
}

/// Publishes one result through the sink (as the pipeline does), then idles while the heartbeat thread beats.
fn publish_pid(mut sink: ShmSink) {
    use ocellus::sink::{FrameResult, Sink};
    let d = sink.writer().layout().dims;
    let emb = vec![0.5f32; d.embed_dim];
    let lat = vec![0.25f32; d.num_latents * d.latent_dim];
    let labels: Vec<String> = Vec::new();
    let r = FrameResult {
        camera: 0,
        sequence: u64::from(std::process::id()),
        capture_ns: 0,
        publish_ns: 0,
        stage_ns: [0; 7],
        flags: 0,
        image_embeds: &emb,
        latents: &lat,
        latents_shape: (d.num_latents, d.latent_dim),
        scores: &[],
        labels: &labels,
        prompt_version: 0,
        ground_truth: None,
        ground_truth_label: None,
    };
    sink.publish(&r).expect("publish");
    std::thread::sleep(Duration::from_secs(60));
}

fn spawn_writer(name: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer process")
}

/// Polls `f` until it returns Some, failing (never hanging) after a generous watchdog.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_is_detected_and_the_restart_followed() {
    let name = format!("/ocellus-kill-{}", std::process::id());
    let mut first = Killed(spawn_writer(&name));
    let options = ReaderOptions {
        reopen_interval: Duration::from_millis(5),
        ..ReaderOptions::default()
    };
    let mut reader = eventually("the first writer's segment", || {
        ShmReader::open_with(&name, options.clone()).ok()
    });
    let mut sample: Sample = reader.new_sample();
    let info = eventually("the first writer's sample", || {
        reader.read_latest(0, &mut sample).ok()
    });
    assert_eq!(info.sequence, u64::from(first.0.id()));
    let first_generation = info.generation;

    first.0.kill().expect("SIGKILL the writer");
    let killed_at = Instant::now();
    first.0.wait().expect("reap the writer");
    let age = eventually(
        "the reader to report the killed writer not alive",
        || match reader.read_latest(0, &mut sample) {
            Err(ReadError::Stale { heartbeat_age, .. }) => Some(heartbeat_age),
            _ => None,
        },
    );
    println!(
        "killed writer reported not alive {:.1} ms after SIGKILL (heartbeat age {:.1} ms, period {:.0} ms)",
        killed_at.elapsed().as_secs_f64() * 1e3,
        age.as_secs_f64() * 1e3,
        PERIOD.as_secs_f64() * 1e3
    );
    assert!(age >= 2 * PERIOD, "stale means two periods without a beat");

    // A new writer process replaces the dead one's segment (its pid is gone); the same reader follows it.
    let second = Killed(spawn_writer(&name));
    let info = eventually("the reader to follow the restarted writer", || {
        reader.read_latest(0, &mut sample).ok()
    });
    assert_eq!(info.sequence, u64::from(second.0.id()));
    assert_ne!(info.generation, first_generation);
    assert_eq!(reader.remaps(), 1);
    drop(second);
    // Nothing of ours is left behind: a writer created here replaces the killed one's segment at once.
    let last = eventually("the segment to be replaceable", || {
        ShmWriter::create(&config(&name)).ok()
    });
    drop(last);
}

#[test]
fn sink_publishes_frame_results_and_keeps_the_status_block() {
    use ocellus::shm::{layout, ShmReader};
    use ocellus::sink::{FrameResult, ShmSink, ShmSinkConfig, Sink, FLAG_DEGRADED};
    use ocellus::stats::{Stage, Stats};
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    let name = format!("/ocellus-sink-test-{}", std::process::id());
    let mut c = config(&name);
    c.dims = Dims {
        cameras: 2,
        max_prompts: 4,
        latents_dtype: LatentsDtype::F16,
        ..c.dims
    };
    let d = c.dims;
    let mut cfg = ShmSinkConfig::new(c);
    cfg.stall_after = Duration::from_millis(60);
    let stats = Arc::new(Stats::new(2));
    stats.camera(1).counters.captured.store(12, Relaxed);
    stats.camera(1).counters.dropped.store(2, Relaxed);
    stats.camera(1).counters.late[Stage::Encoder.index()].store(1, Relaxed);
    stats.camera(1).counters.lost.store(true, Relaxed);
    let mut sink = ShmSink::create(&cfg, Some(stats.clone())).expect("create sink");

    let embedding: Vec<f32> = (0..d.embed_dim).map(|i| i as f32 * 0.125).collect();
    let latents: Vec<f32> = (0..d.num_latents * d.latent_dim)
        .map(|i| i as f32 * 0.5)
        .collect();
    let scores = [0.5f32, 0.25, 0.25];
    let labels = vec![
        "a cat".to_string(),
        "a dog".to_string(),
        "a car".to_string(),
    ];
    let mut stage_ns = [0u64; 7];
    stage_ns[Stage::Prepare.index()] = 1_000;
    let result = FrameResult {
        camera: 1,
        sequence: 5,
        capture_ns: 1,
        publish_ns: 2,
        stage_ns,
        flags: Stage::Encoder.late_bit(),
        image_embeds: &embedding,
        latents: &latents,
        latents_shape: (d.num_latents, d.latent_dim),
        scores: &scores,
        labels: &labels,
        prompt_version: 4,
        ground_truth: None,
        ground_truth_label: None,
    };
    sink.publish(&result).expect("publish");
    sink.publish(&result).expect("publish again");

    let mut r = ShmReader::open(&name).expect("open");
    let mut got = r.new_sample();
    let info = r.read_latest(1, &mut got).expect("read");
    assert_eq!(info.sequence, 5);
    assert_eq!(info.published, 2);
    assert_eq!(got.embedding, embedding);
    assert_eq!(
        got.latents, latents,
        "small multiples of 1/8 survive f16 exactly"
    );
    assert_eq!(got.scores(), &scores);
    assert_eq!(got.meta.deadline_misses, 2, "both frames were late");
    assert_eq!(got.meta.stages_ns[Stage::Prepare.index()], 1_000);
    assert_eq!(got.meta.flags & FLAG_DEGRADED as u64, 0);
    assert_eq!(r.prompts().expect("prompts").labels, labels);
    let counters = eventually(
        "the heartbeat thread to copy the counters and flag camera 0 stalled",
        || {
            let c0 = r.counters(0).ok()?;
            let c1 = r.counters(1).ok()?;
            (c1.captured == 12 && c0.flags & layout::FLAG_STALLED != 0).then_some(c1)
        },
    );
    assert_eq!(counters.dropped, 2);
    assert_eq!(counters.late[Stage::Encoder.index()], 1);
    assert_ne!(counters.flags & layout::FLAG_CAMERA_LOST, 0);
    assert!(r.memory_high_water() > 0);
    sink.stop();
    assert!(matches!(
        r.read_latest(1, &mut got),
        Err(ReadError::NotRunning { .. })
    ));
}
