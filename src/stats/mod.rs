//! Fixed-size latency histograms, per-camera counters and the one-line status.
//!
//! Everything here is allocated once, in [`Stats::new`]; recording a latency or bumping a counter is a handful
//! of relaxed atomic operations and never allocates, locks or blocks. The counters are written by the capture
//! and inference threads and read at any time by the status reporter (and later the shared-memory status block),
//! so a reader sees each value whole but not necessarily a consistent set: that is enough for a status display.
//!
//! Parts: [`Stage`] (what is measured), [`LatencyHistogram`] (how), the counters below, the run's
//! [`Summary`] and the live [`StatusLine`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

mod histogram;
mod stage;
mod status;
mod summary;

pub use histogram::{HistogramSnapshot, LatencyHistogram, BUCKETS};
pub use stage::{Stage, STAGE_COUNT};
pub use status::StatusLine;
pub use summary::{CameraSummary, RecorderSummary, StageSummary, Summary};

use summary::{ms, ratio};

/// Counters of one camera. Each is written by one thread (capture or inference) and read by any.
#[derive(Default)]
pub struct CameraCounters {
    /// Frames the source delivered.
    pub captured: AtomicU64,
    /// Frames displaced in the latest-wins handoff before the inference thread took them.
    pub dropped: AtomicU64,
    /// Frames the preparation step rejected (wrong size, undecodable MJPEG).
    pub corrupt: AtomicU64,
    /// Frames taken through the whole frame path (published).
    pub processed: AtomicU64,
    /// Frames whose encoder or resampler run failed.
    pub infer_errors: AtomicU64,
    /// Frames for which at least one sink failed.
    pub publish_errors: AtomicU64,
    /// Errors returned by the source's `next_frame` / `start`.
    pub source_errors: AtomicU64,
    /// Times the source was stopped and started again after an error.
    pub restarts: AtomicU64,
    /// Frames that were late in each stage ([`Stage::index`]); `EndToEnd` counts end-to-end misses.
    pub late: [AtomicU64; STAGE_COUNT],
    /// Frames late in any stage (each frame counted once).
    pub late_frames: AtomicU64,
    /// By how much the last late frame overran each stage's deadline, in nanoseconds.
    pub last_overrun_ns: [AtomicU64; STAGE_COUNT],
    /// The late bits ([`Stage::late_bit`]) of the camera's most recent late frame.
    pub last_late_stages: AtomicU64,
    /// The largest stage overrun of the camera's most recent late frame, in nanoseconds.
    pub last_late_overrun_ns: AtomicU64,
    /// Processed frames carrying a ground-truth label (synthetic source).
    pub labelled: AtomicU64,
    /// Labelled frames whose top prompt equals the ground truth.
    pub correct: AtomicU64,
    /// Frames with a ground truth that the prompt set does not name (or without scores): not judged.
    pub unjudged: AtomicU64,
    /// Sequence number of the last processed frame.
    pub last_sequence: AtomicU64,
    /// The source is failing and being restarted.
    pub lost: AtomicBool,
    /// Times no frame came within the source's stall timeout (V4L2: `stall-periods` / `stall-timeout-ms`).
    pub stalls: AtomicU64,
    /// Times the device went away (unplugged, ENODEV).
    pub disconnects: AtomicU64,
    /// Times the source was reopened after a stall or a disconnect.
    pub reconnects: AtomicU64,
    /// Frames the source's sequence numbers skipped (V4L2: frames the driver dropped or marked corrupt).
    pub driver_dropped: AtomicU64,
    /// The camera is stalled now (set at a stall, cleared by its next frame).
    pub stalled: AtomicBool,
}

/// Counters of the flight recorder and of a capture (`recorder`), written by the inference thread (triggers)
/// and the recorder's writer thread (recordings), read by anyone.
#[derive(Default)]
pub struct RecorderCounters {
    /// Triggers that started a recording.
    pub triggers: AtomicU64,
    /// Recordings written.
    pub made: AtomicU64,
    /// Triggers that came while the writer was still writing the previous recording: not recorded.
    pub dropped: AtomicU64,
    /// Recordings that could not be written (disk full, directory not writable, over the quota).
    pub errors: AtomicU64,
    /// Old recordings removed to stay within the disk quota.
    pub removed: AtomicU64,
    /// Processed frames a capture could not keep (its writer was behind).
    pub frames_not_recorded: AtomicU64,
    /// Bytes of recordings written.
    pub bytes: AtomicU64,
}

/// Counters and one histogram per stage for one camera.
pub struct CameraStats {
    pub counters: CameraCounters,
    pub stages: [LatencyHistogram; STAGE_COUNT],
}

impl CameraStats {
    fn new() -> Self {
        CameraStats {
            counters: CameraCounters::default(),
            stages: std::array::from_fn(|_| LatencyHistogram::new()),
        }
    }

    /// Records one stage's duration in nanoseconds.
    pub fn record(&self, stage: Stage, ns: u64) {
        self.stages[stage.index()].record(ns);
    }

    /// Counts a frame that missed the deadlines of `late_stages` (late bits), the worst by `overrun_ns`.
    pub fn count_late_frame(&self, late_stages: u32, overrun_ns: u64) {
        self.counters.late_frames.fetch_add(1, Relaxed);
        self.counters
            .last_late_stages
            .store(u64::from(late_stages), Relaxed);
        self.counters
            .last_late_overrun_ns
            .store(overrun_ns, Relaxed);
    }

    /// Counts a deadline miss of `stage`, overrunning it by `overrun_ns`.
    pub fn count_late(&self, stage: Stage, overrun_ns: u64) {
        self.counters.late[stage.index()].fetch_add(1, Relaxed);
        self.counters.last_overrun_ns[stage.index()].store(overrun_ns, Relaxed);
    }
}

/// All of the runtime's statistics, shared between threads behind an `Arc`.
pub struct Stats {
    cameras: Box<[CameraStats]>,
    started: Instant,
    /// The recorder's counters (all zero without a recorder).
    pub recorder: RecorderCounters,
}

impl Stats {
    /// Allocates the counters and histograms of `cameras` cameras.
    pub fn new(cameras: usize) -> Self {
        Stats {
            cameras: (0..cameras).map(|_| CameraStats::new()).collect(),
            started: Instant::now(),
            recorder: RecorderCounters::default(),
        }
    }

    /// Number of cameras.
    pub fn cameras(&self) -> usize {
        self.cameras.len()
    }

    /// Statistics of camera `index`. Panics if out of range (a programming error: indices come from the config).
    pub fn camera(&self, index: usize) -> &CameraStats {
        &self.cameras[index]
    }

    /// All cameras.
    pub fn iter(&self) -> impl Iterator<Item = &CameraStats> {
        self.cameras.iter()
    }

    /// When the statistics were created.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Sum of one counter over all cameras.
    pub fn total(&self, f: impl Fn(&CameraCounters) -> &AtomicU64) -> u64 {
        self.cameras
            .iter()
            .map(|c| f(&c.counters).load(Relaxed))
            .sum()
    }

    /// Sum of the late counts of `stage` over all cameras.
    pub fn total_late(&self, stage: Stage) -> u64 {
        self.cameras
            .iter()
            .map(|c| c.counters.late[stage.index()].load(Relaxed))
            .sum()
    }

    /// By how much the last late frame overran `stage`'s deadline, in ns: the largest of the cameras' last
    /// overruns (exact with one camera); 0 when the stage was never late.
    pub fn last_overrun_ns(&self, stage: Stage) -> u64 {
        self.cameras
            .iter()
            .map(|c| c.counters.last_overrun_ns[stage.index()].load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// The histogram of `stage` merged over all cameras, into `out` (and `scratch`). Never allocates.
    pub fn stage_snapshot(
        &self,
        stage: Stage,
        out: &mut HistogramSnapshot,
        scratch: &mut HistogramSnapshot,
    ) {
        out.clear();
        for cam in self.cameras.iter() {
            cam.stages[stage.index()].snapshot_into(scratch);
            out.merge(scratch);
        }
    }

    /// The summary of the whole run so far (allocates: for the end of a run, not the frame path).
    pub fn summary(&self) -> Summary {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut merged = HistogramSnapshot::default();
        let mut scratch = HistogramSnapshot::default();
        let stages = Stage::ALL
            .iter()
            .map(|&stage| {
                self.stage_snapshot(stage, &mut merged, &mut scratch);
                let mut s = StageSummary::from_snapshot(stage, &merged, self.total_late(stage));
                s.last_overrun_ms = ms(self.last_overrun_ns(stage));
                s
            })
            .collect();
        let cameras = self
            .cameras
            .iter()
            .enumerate()
            .map(|(index, cam)| {
                let c = &cam.counters;
                let processed = c.processed.load(Relaxed);
                let labelled = c.labelled.load(Relaxed);
                let correct = c.correct.load(Relaxed);
                CameraSummary {
                    camera: index,
                    captured: c.captured.load(Relaxed),
                    processed,
                    dropped: c.dropped.load(Relaxed),
                    corrupt: c.corrupt.load(Relaxed),
                    infer_errors: c.infer_errors.load(Relaxed),
                    publish_errors: c.publish_errors.load(Relaxed),
                    source_errors: c.source_errors.load(Relaxed),
                    restarts: c.restarts.load(Relaxed),
                    stalls: c.stalls.load(Relaxed),
                    disconnects: c.disconnects.load(Relaxed),
                    reconnects: c.reconnects.load(Relaxed),
                    driver_dropped: c.driver_dropped.load(Relaxed),
                    late_frames: c.late_frames.load(Relaxed),
                    fps: if elapsed > 0.0 {
                        processed as f64 / elapsed
                    } else {
                        0.0
                    },
                    labelled,
                    correct,
                    unjudged: c.unjudged.load(Relaxed),
                    accuracy: ratio(correct, labelled),
                }
            })
            .collect::<Vec<_>>();
        let processed = self.total(|c| &c.processed);
        let labelled = self.total(|c| &c.labelled);
        let correct = self.total(|c| &c.correct);
        Summary {
            duration_s: elapsed,
            frames: processed,
            fps: if elapsed > 0.0 {
                processed as f64 / elapsed
            } else {
                0.0
            },
            captured: self.total(|c| &c.captured),
            dropped: self.total(|c| &c.dropped),
            corrupt: self.total(|c| &c.corrupt),
            late_frames: self.total(|c| &c.late_frames),
            stalls: self.total(|c| &c.stalls),
            disconnects: self.total(|c| &c.disconnects),
            reconnects: self.total(|c| &c.reconnects),
            driver_dropped: self.total(|c| &c.driver_dropped),
            errors: self.total(|c| &c.infer_errors)
                + self.total(|c| &c.publish_errors)
                + self.total(|c| &c.source_errors),
            labelled,
            correct,
            unjudged: self.total(|c| &c.unjudged),
            accuracy: ratio(correct, labelled),
            stages,
            cameras,
            recorder: RecorderSummary::of(&self.recorder),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::histogram::{bucket_of, bucket_upper};
    use super::*;
    use std::time::Duration;

    #[test]
    fn merge_adds_cameras() {
        let stats = Stats::new(2);
        stats.camera(0).record(Stage::Encoder, 2_000_000);
        stats.camera(1).record(Stage::Encoder, 4_000_000);
        stats.camera(1).record(Stage::Encoder, 4_000_000);
        let (mut out, mut scratch) = (HistogramSnapshot::default(), HistogramSnapshot::default());
        stats.stage_snapshot(Stage::Encoder, &mut out, &mut scratch);
        assert_eq!(out.count, 3);
        assert_eq!(out.max_ns, 4_000_000);
        assert_eq!(out.percentile(0.3), bucket_upper(bucket_of(2_000_000)));
    }

    #[test]
    fn summary_and_status_report_counters() {
        let stats = Stats::new(1);
        let cam = stats.camera(0);
        for _ in 0..10 {
            cam.counters.captured.fetch_add(1, Relaxed);
            cam.counters.processed.fetch_add(1, Relaxed);
            cam.counters.labelled.fetch_add(1, Relaxed);
            cam.record(Stage::EndToEnd, 5_000_000);
        }
        cam.counters.correct.fetch_add(9, Relaxed);
        cam.counters.dropped.fetch_add(3, Relaxed);
        cam.count_late(Stage::Encoder, 1_500_000);
        cam.counters.late_frames.fetch_add(1, Relaxed);

        let summary = stats.summary();
        assert_eq!(summary.frames, 10);
        assert_eq!(summary.dropped, 3);
        assert_eq!(summary.accuracy, Some(0.9));
        let enc = &summary.stages[Stage::Encoder.index()];
        assert_eq!((enc.stage, enc.late), ("encoder", 1));
        assert_eq!(enc.last_overrun_ms, 1.5);
        let table = summary.to_string();
        assert!(table.contains("9/10 (90.0 %)"), "{table}");

        let mut line = StatusLine::new(&stats);
        let text = line
            .render(&stats, stats.started() + Duration::from_secs(1))
            .to_owned();
        assert!(text.starts_with("fps  10.0 |"), "{text}");
        assert!(
            text.contains("drop 3 late 1 (enc 1 +1.5ms) corrupt 0"),
            "{text}"
        );
        assert!(text.contains("acc 90.0%"), "{text}");
        // The next window has no new frames.
        let text = line.render(&stats, stats.started() + Duration::from_secs(2));
        assert!(text.starts_with("fps   0.0 |"), "{text}");
        assert!(text.contains("e2e 0.0/0.0"), "{text}");
    }

    #[test]
    fn status_render_does_not_grow_its_buffer() {
        let stats = Stats::new(3);
        let mut line = StatusLine::new(&stats);
        let cap = line.line.capacity();
        for i in 0..100u64 {
            stats
                .camera((i % 3) as usize)
                .record(Stage::Prepare, i * 1_000_000_000);
            stats
                .camera((i % 3) as usize)
                .counters
                .source_errors
                .fetch_add(u64::MAX / 200, Relaxed);
            line.render(&stats, Instant::now());
        }
        assert_eq!(line.line.capacity(), cap);
    }
}
