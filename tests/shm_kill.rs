//! A writer process killed with SIGKILL: the same reader reports it not alive once its heartbeat stops, and
//! picks up the next writer process (new generation) without being restarted. The writer runs in a child
//! process (this test binary, re-executed) through `ShmSink`, whose heartbeat thread beats the segment.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ocellus::shm::{
    Dims, LatentsDtype, ReadError, ReaderOptions, Sample, ShmReader, ShmSink, ShmSinkConfig,
    ShmWriter, WriterConfig,
};

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
    use ocellus::pipeline::FrameResult;
    use ocellus::sink::Sink;
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
