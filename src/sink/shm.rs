//! The pipeline's shared-memory sink: publishes every [`FrameResult`] into the camera's slot, and runs a
//! heartbeat thread that also copies the runtime's counters into the status block.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{FrameResult, Sink, SinkError};
use crate::shm::layout;
use crate::shm::{
    CameraCounters, CreateError, Heartbeat, PublishError, RecorderCounts, SampleMeta, SampleRef,
    ShmWriter, WriterConfig,
};
use crate::stats::{Stage, Stats, STAGE_COUNT};

const SINK: &str = "shm";

/// How to run the shared-memory sink.
#[derive(Debug, Clone)]
pub struct ShmSinkConfig {
    pub writer: WriterConfig,
    /// A camera that has published nothing for this long is flagged `stalled` in the status block.
    pub stall_after: Duration,
}

impl ShmSinkConfig {
    pub fn new(writer: WriterConfig) -> Self {
        ShmSinkConfig {
            writer,
            stall_after: Duration::from_secs(1),
        }
    }
}

/// Publishes results into shared memory. `publish` is wait-free and allocates only when the prompt set changes
/// (to store the new labels); a heartbeat thread (`ocellus-shm-hb`) beats every heartbeat period.
pub struct ShmSink {
    writer: ShmWriter,
    deadline_misses: Vec<u64>,
    prompt_version: Option<u64>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ShmSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmSink")
            .field("name", &self.writer.name())
            .finish_non_exhaustive()
    }
}

/// The runtime's counters of one camera, as the status block holds them.
fn counters_of(stats: &Stats, camera: usize) -> CameraCounters {
    let c = &stats.camera(camera).counters;
    let mut late = [0u64; layout::STAGES];
    for (s, v) in late.iter_mut().enumerate() {
        *v = c.late.get(s).map_or(0, |a| a.load(Relaxed));
    }
    CameraCounters {
        captured: c.captured.load(Relaxed),
        dropped: c.dropped.load(Relaxed),
        late,
        reconnects: c.restarts.load(Relaxed),
        processed: c.processed.load(Relaxed),
        corrupt: c.corrupt.load(Relaxed),
        errors: c.infer_errors.load(Relaxed)
            + c.publish_errors.load(Relaxed)
            + c.source_errors.load(Relaxed),
        flags: if c.lost.load(Relaxed) {
            layout::FLAG_CAMERA_LOST
        } else {
            0
        } | if c.stalled.load(Relaxed) {
            layout::FLAG_STALLED
        } else {
            0
        },
        last_overrun_ns: c.last_late_overrun_ns.load(Relaxed),
        last_late_stages: c.last_late_stages.load(Relaxed),
    }
}

/// The process's peak resident set (VmHWM) in bytes, if /proc says.
fn memory_high_water() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn heartbeat_loop(
    hb: Heartbeat,
    stats: Option<Arc<Stats>>,
    period: Duration,
    stall_after: Duration,
    cameras: usize,
    stop: mpsc::Receiver<()>,
) {
    let mut last_count = vec![0u64; cameras];
    let mut unchanged_for = vec![Duration::ZERO; cameras];
    loop {
        hb.beat();
        for (camera, (last, idle)) in last_count
            .iter_mut()
            .zip(unchanged_for.iter_mut())
            .enumerate()
        {
            let n = hb.published(camera);
            if n != *last {
                *last = n;
                *idle = Duration::ZERO;
            } else {
                *idle = idle.saturating_add(period);
            }
            let stalled = if *idle >= stall_after {
                layout::FLAG_STALLED
            } else {
                0
            };
            match &stats {
                Some(stats) if camera < stats.cameras() => {
                    let mut c = counters_of(stats, camera);
                    c.flags |= stalled;
                    hb.set_counters(camera, &c);
                }
                _ => hb.set_camera_flags(camera, stalled),
            }
        }
        if let Some(bytes) = memory_high_water() {
            hb.set_memory_high_water(bytes);
        }
        if let Some(stats) = &stats {
            let r = &stats.recorder;
            hb.set_recordings(&RecorderCounts {
                made: r.made.load(Relaxed),
                dropped: r.dropped.load(Relaxed),
                errors: r.errors.load(Relaxed),
            });
        }
        match stop.recv_timeout(period) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
}

impl ShmSink {
    /// Creates the segment and starts the heartbeat thread. `stats`, when given, feeds the status block.
    pub fn create(
        config: &ShmSinkConfig,
        stats: Option<Arc<Stats>>,
    ) -> Result<ShmSink, CreateError> {
        let writer = ShmWriter::create(&config.writer)?;
        if writer.replaced_stale() {
            tracing::warn!(name = %config.writer.name, "replaced a stale shared-memory segment left by a writer that is gone");
        }
        let cameras = writer.layout().dims.cameras;
        let hb = writer.heartbeat_handle();
        let (tx, rx) = mpsc::channel();
        let period = config.writer.heartbeat_period;
        let stall_after = config.stall_after;
        let thread = std::thread::Builder::new()
            .name("ocellus-shm-hb".into())
            .spawn(move || heartbeat_loop(hb, stats, period, stall_after, cameras, rx))
            .map_err(|source| CreateError::Io {
                name: config.writer.name.clone(),
                what: "start the heartbeat thread",
                source,
            })?;
        Ok(ShmSink {
            writer,
            deadline_misses: vec![0; cameras],
            prompt_version: None,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn writer(&self) -> &ShmWriter {
        &self.writer
    }

    fn stop_thread(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("the shared-memory heartbeat thread panicked");
            }
        }
    }
}

fn rejected(e: PublishError) -> SinkError {
    SinkError::Rejected {
        sink: SINK,
        reason: match e {
            PublishError::NoSuchCamera { .. } => "camera index outside the segment",
            PublishError::Shape {
                what: "embedding", ..
            } => "embedding length differs from the segment's E",
            PublishError::Shape {
                what: "latents", ..
            } => "latents differ from the segment's L x D",
            PublishError::Shape { .. } => "result shape differs from the segment",
            PublishError::TooManyPrompts { .. } => "more prompts than the segment's K",
        },
    }
}

impl Sink for ShmSink {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        let k = self.writer.layout().dims.max_prompts;
        if self.prompt_version != Some(r.prompt_version) && r.labels.len() <= k {
            self.writer
                .set_prompts(r.prompt_version, r.labels)
                .map_err(rejected)?;
            self.prompt_version = Some(r.prompt_version);
        }
        let mut flags = u64::from(r.flags);
        let scores = if r.scores.len() > k {
            flags |= layout::FLAG_DEGRADED;
            &r.scores[..0]
        } else {
            r.scores
        };
        if let Some(misses) = self.deadline_misses.get_mut(r.camera) {
            if r.is_late() {
                *misses += 1;
            }
        }
        let mut stages_ns = [0u64; layout::STAGES];
        for (dst, src) in stages_ns.iter_mut().zip(r.stage_ns.iter()) {
            *dst = *src;
        }
        let sample = SampleRef {
            meta: SampleMeta {
                sequence: r.sequence,
                capture_ns: r.capture_ns,
                publish_ns: r.publish_ns,
                stages_ns,
                flags,
                deadline_misses: self.deadline_misses.get(r.camera).copied().unwrap_or(0),
                prompt_version: r.prompt_version,
            },
            embedding: r.image_embeds,
            latents: r.latents,
            scores,
        };
        self.writer.publish(r.camera, &sample).map_err(rejected)?;
        Ok(())
    }

    fn stop(&mut self) {
        self.stop_thread();
        self.writer.mark_stopped();
    }
}

impl Drop for ShmSink {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

// The segment carries the runtime's stage order and flag bits verbatim.
const _: () = {
    assert!(STAGE_COUNT == layout::STAGES);
    assert!(Stage::Dequeue.index() == layout::STAGE_DEQUEUE);
    assert!(Stage::Prepare.index() == layout::STAGE_PREPARE);
    assert!(Stage::Encoder.index() == layout::STAGE_ENCODER);
    assert!(Stage::Resampler.index() == layout::STAGE_RESAMPLER);
    assert!(Stage::Score.index() == layout::STAGE_SCORE);
    assert!(Stage::Publish.index() == layout::STAGE_PUBLISH);
    assert!(Stage::EndToEnd.index() == layout::STAGE_END_TO_END);
    assert!(super::FLAG_CAMERA_LOST as u64 == layout::FLAG_CAMERA_LOST);
    assert!(super::FLAG_CAMERA_RESTARTED as u64 == layout::FLAG_CAMERA_RESTARTED);
    assert!(super::FLAG_DEGRADED as u64 == layout::FLAG_DEGRADED);
    assert!(super::FLAG_LATE_MASK as u64 == layout::FLAG_LATE_MASK);
};
