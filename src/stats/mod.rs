//! Fixed-size latency histograms, per-camera counters and the one-line status.
//!
//! Everything here is allocated once, in [`Stats::new`]; recording a latency or bumping a counter is a handful
//! of relaxed atomic operations and never allocates, locks or blocks. The counters are written by the capture
//! and inference threads and read at any time by the status reporter (and later the shared-memory status block),
//! so a reader sees each value whole but not necessarily a consistent set: that is enough for a status display.
//!
//! Histograms are log-linear (HdrHistogram-like): exact below 16 ns, then 16 sub-buckets per power of two,
//! so any percentile is reported within 6.25 % of the true value, up to 2^40 ns (about 18 minutes).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Largest exponent tracked; larger values land in the last bucket.
const MAX_EXP: u32 = 40;
/// Number of buckets of a [`LatencyHistogram`].
pub const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS + 1) as usize * SUB;

/// The stages of the frame path whose durations are measured (and held to deadlines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Stage {
    /// From the frame's capture timestamp to the inference thread taking it from the handoff.
    Dequeue = 0,
    /// Pixel format conversion, resize, crop and normalisation into the model input.
    Prepare = 1,
    /// The vision encoder.
    Encoder = 2,
    /// The resampler.
    Resampler = 3,
    /// Cosine similarity against the prompt set and softmax.
    Score = 4,
    /// All sinks' `publish`.
    Publish = 5,
    /// Capture timestamp to the end of publishing.
    EndToEnd = 6,
}

/// Number of [`Stage`]s.
pub const STAGE_COUNT: usize = 7;

impl Stage {
    /// Every stage, in frame-path order.
    pub const ALL: [Stage; STAGE_COUNT] = [
        Stage::Dequeue,
        Stage::Prepare,
        Stage::Encoder,
        Stage::Resampler,
        Stage::Score,
        Stage::Publish,
        Stage::EndToEnd,
    ];

    /// Index of the stage in per-stage arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Name used in the status line, the summary and the JSON report.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Dequeue => "dequeue",
            Stage::Prepare => "prepare",
            Stage::Encoder => "encoder",
            Stage::Resampler => "resampler",
            Stage::Score => "score",
            Stage::Publish => "publish",
            Stage::EndToEnd => "end_to_end",
        }
    }

    /// Short name for the one-line status.
    pub const fn short(self) -> &'static str {
        match self {
            Stage::Dequeue => "dq",
            Stage::Prepare => "prep",
            Stage::Encoder => "enc",
            Stage::Resampler => "res",
            Stage::Score => "score",
            Stage::Publish => "pub",
            Stage::EndToEnd => "e2e",
        }
    }

    /// The bit of this stage in a frame's late flags (`1 << index`).
    pub const fn late_bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// Bucket index of a value in nanoseconds.
const fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros();
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = ((ns >> (exp - SUB_BITS)) as usize) & (SUB - 1);
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// Largest value (inclusive) that falls into bucket `index`.
const fn bucket_upper(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let exp = (index - SUB) / SUB + SUB_BITS as usize;
    let sub = ((index - SUB) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS as usize);
    (1u64 << exp) + (sub + 1) * width - 1
}

/// A fixed-size latency histogram with a single writer and any number of readers.
///
/// `record` is wait-free (relaxed atomics only); a reader takes a [`HistogramSnapshot`] whenever it likes.
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    /// Records one value in nanoseconds. Never allocates.
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
    }

    /// Records a [`Duration`] (saturating at `u64::MAX` ns).
    pub fn record_duration(&self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Copies the current counts into `out` (overwriting it). Never allocates.
    pub fn snapshot_into(&self, out: &mut HistogramSnapshot) {
        for (o, b) in out.buckets.iter_mut().zip(self.buckets.iter()) {
            *o = b.load(Relaxed);
        }
        out.count = self.count.load(Relaxed);
        out.sum_ns = self.sum_ns.load(Relaxed);
        out.max_ns = self.max_ns.load(Relaxed);
    }
}

/// A plain copy of a [`LatencyHistogram`], to compute percentiles and differences from.
#[derive(Clone)]
pub struct HistogramSnapshot {
    buckets: [u64; BUCKETS],
    /// Number of values recorded.
    pub count: u64,
    /// Sum of the values, in nanoseconds.
    pub sum_ns: u64,
    /// Largest value recorded (over the histogram's whole life, also in a difference).
    pub max_ns: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            buckets: [0; BUCKETS],
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl std::fmt::Debug for HistogramSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramSnapshot")
            .field("count", &self.count)
            .field("p50_ns", &self.percentile(0.5))
            .field("max_ns", &self.max_ns)
            .finish()
    }
}

impl HistogramSnapshot {
    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding it, capped at the maximum.
    /// Zero when empty.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = bucket_upper(i);
                return if self.max_ns > 0 {
                    upper.min(self.max_ns)
                } else {
                    upper
                };
            }
        }
        self.max_ns
    }

    /// Mean in nanoseconds; zero when empty.
    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64
        }
    }

    /// Adds `other`'s counts into `self` (to aggregate cameras).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// `self = later - earlier`: the values recorded between two snapshots of the same histogram.
    /// The maximum stays the later one's (a histogram does not keep a windowed maximum).
    pub fn set_difference(&mut self, later: &HistogramSnapshot, earlier: &HistogramSnapshot) {
        for ((d, l), e) in self
            .buckets
            .iter_mut()
            .zip(later.buckets.iter())
            .zip(earlier.buckets.iter())
        {
            *d = l.saturating_sub(*e);
        }
        self.count = later.count.saturating_sub(earlier.count);
        self.sum_ns = later.sum_ns.saturating_sub(earlier.sum_ns);
        self.max_ns = later.max_ns;
    }

    /// The non-empty buckets in increasing order, each as (lowest value, highest value, count), in
    /// nanoseconds: the histogram's shape, for plots. Allocates nothing (an iterator over the snapshot).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| {
                let lowest = if i == 0 { 0 } else { bucket_upper(i - 1) + 1 };
                (lowest, bucket_upper(i), n)
            })
    }

    /// Resets to empty.
    pub fn clear(&mut self) {
        self.buckets.fill(0);
        self.count = 0;
        self.sum_ns = 0;
        self.max_ns = 0;
    }
}

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
}

impl Stats {
    /// Allocates the counters and histograms of `cameras` cameras.
    pub fn new(cameras: usize) -> Self {
        Stats {
            cameras: (0..cameras).map(|_| CameraStats::new()).collect(),
            started: Instant::now(),
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
            accuracy: ratio(correct, labelled),
            stages,
            cameras,
        }
    }
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Latency figures of one stage over a run, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageSummary {
    pub stage: &'static str,
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Frames over this stage's deadline.
    pub late: u64,
    /// By how much the last late frame overran the deadline ([`Stats::last_overrun_ns`]); 0 if never late.
    pub last_overrun_ms: f64,
}

impl StageSummary {
    fn from_snapshot(stage: Stage, s: &HistogramSnapshot, late: u64) -> Self {
        StageSummary {
            stage: stage.name(),
            count: s.count,
            mean_ms: s.mean_ns() / 1e6,
            p50_ms: ms(s.percentile(0.5)),
            p90_ms: ms(s.percentile(0.9)),
            p99_ms: ms(s.percentile(0.99)),
            p999_ms: ms(s.percentile(0.999)),
            max_ms: ms(s.max_ns),
            late,
            last_overrun_ms: 0.0,
        }
    }
}

/// Counters of one camera over a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraSummary {
    pub camera: usize,
    pub captured: u64,
    pub processed: u64,
    pub dropped: u64,
    pub corrupt: u64,
    pub infer_errors: u64,
    pub publish_errors: u64,
    pub source_errors: u64,
    pub restarts: u64,
    pub stalls: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub driver_dropped: u64,
    pub late_frames: u64,
    pub fps: f64,
    pub labelled: u64,
    pub correct: u64,
    pub accuracy: Option<f64>,
}

/// What a run did: totals, per-stage latency, per-camera counters. `Display` prints the exit table;
/// `serde::Serialize` gives the machine-readable form (`ocellus run --summary-json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub duration_s: f64,
    /// Frames published, all cameras.
    pub frames: u64,
    pub fps: f64,
    pub captured: u64,
    pub dropped: u64,
    pub corrupt: u64,
    pub late_frames: u64,
    pub errors: u64,
    /// Camera faults, all cameras: stalls, disconnects, reopenings after either, frames the drivers dropped.
    pub stalls: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub driver_dropped: u64,
    pub labelled: u64,
    pub correct: u64,
    /// Fraction of labelled frames whose top prompt equals the ground truth (synthetic source only).
    pub accuracy: Option<f64>,
    pub stages: Vec<StageSummary>,
    pub cameras: Vec<CameraSummary>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} frames in {:.2} s ({:.1} fps); captured {}, dropped {}, corrupt {}, late {}, errors {}",
            self.frames,
            self.duration_s,
            self.fps,
            self.captured,
            self.dropped,
            self.corrupt,
            self.late_frames,
            self.errors
        )?;
        if self.stalls + self.disconnects + self.reconnects + self.driver_dropped > 0 {
            writeln!(
                f,
                "camera faults: stalls {}, disconnects {}, reconnects {}, driver-dropped frames {}",
                self.stalls, self.disconnects, self.reconnects, self.driver_dropped
            )?;
        }
        if let Some(acc) = self.accuracy {
            writeln!(
                f,
                "top prompt = ground truth: {}/{} ({:.1} %)",
                self.correct,
                self.labelled,
                acc * 100.0
            )?;
        }
        writeln!(
            f,
            "{:<11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9}",
            "stage (ms)", "count", "mean", "p50", "p90", "p99", "p99.9", "max", "late", "overrun"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "{:<11} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>6} {:>9.3}",
                s.stage,
                s.count,
                s.mean_ms,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms,
                s.late,
                s.last_overrun_ms
            )?;
        }
        if self.cameras.len() > 1 {
            for c in &self.cameras {
                writeln!(
                    f,
                    "camera {}: {} frames ({:.1} fps), captured {}, dropped {}, corrupt {}, late {}, source errors {}, restarts {}",
                    c.camera, c.processed, c.fps, c.captured, c.dropped, c.corrupt, c.late_frames,
                    c.source_errors, c.restarts
                )?;
                if c.stalls + c.disconnects + c.reconnects + c.driver_dropped > 0 {
                    writeln!(
                        f,
                        "camera {}: stalls {}, disconnects {}, reconnects {}, driver-dropped frames {}",
                        c.camera, c.stalls, c.disconnects, c.reconnects, c.driver_dropped
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// Stages shown in the one-line status.
const STATUS_STAGES: [Stage; 5] = [
    Stage::Dequeue,
    Stage::Prepare,
    Stage::Encoder,
    Stage::Resampler,
    Stage::EndToEnd,
];

/// Formats the one-line live status from [`Stats`], over the window since the previous call.
///
/// Holds its own snapshots and text buffer, allocated in `new`; [`StatusLine::render`] never allocates
/// (for any status that fits the preallocated 1 KiB line).
pub struct StatusLine {
    line: String,
    prev: Box<[HistogramSnapshot; STAGE_COUNT]>,
    now: Box<[HistogramSnapshot; STAGE_COUNT]>,
    window: HistogramSnapshot,
    scratch: HistogramSnapshot,
    prev_processed: u64,
    prev_at: Instant,
}

impl StatusLine {
    pub fn new(stats: &Stats) -> Self {
        StatusLine {
            line: String::with_capacity(1024),
            prev: Box::new(std::array::from_fn(|_| HistogramSnapshot::default())),
            now: Box::new(std::array::from_fn(|_| HistogramSnapshot::default())),
            window: HistogramSnapshot::default(),
            scratch: HistogramSnapshot::default(),
            prev_processed: 0,
            prev_at: stats.started(),
        }
    }

    /// Renders the status for the window since the last call (or since start) and returns it.
    ///
    /// `fps 29.8 | dq 0.1/0.3 prep 0.4/0.6 enc 3.1/4.0 res 0.5/0.7 e2e 4.3/5.2 ms p50/p99 | drop 12 late 3 ...`
    pub fn render(&mut self, stats: &Stats, now: Instant) -> &str {
        self.line.clear();
        let dt = now.saturating_duration_since(self.prev_at).as_secs_f64();
        let processed = stats.total(|c| &c.processed);
        let fps = if dt > 0.0 {
            (processed - self.prev_processed.min(processed)) as f64 / dt
        } else {
            0.0
        };
        let _ = write!(self.line, "fps {fps:5.1} |");
        for &stage in &STATUS_STAGES {
            let i = stage.index();
            stats.stage_snapshot(stage, &mut self.now[i], &mut self.scratch);
            self.window.set_difference(&self.now[i], &self.prev[i]);
            let _ = write!(
                self.line,
                " {} {:.1}/{:.1}",
                stage.short(),
                ms(self.window.percentile(0.5)),
                ms(self.window.percentile(0.99))
            );
        }
        let late = stats.total(|c| &c.late_frames);
        let _ = write!(
            self.line,
            " ms p50/p99 | frames {} drop {} late {}",
            processed,
            stats.total(|c| &c.dropped),
            late,
        );
        if late > 0 {
            // Per stage: deadline misses and the last overrun, `(enc 3 +12.5ms e2e 1 +4.0ms)`.
            let mut first = true;
            for stage in Stage::ALL {
                let n = stats.total_late(stage);
                if n > 0 {
                    let _ = write!(
                        self.line,
                        "{}{} {n} +{:.1}ms",
                        if first { " (" } else { " " },
                        stage.short(),
                        ms(stats.last_overrun_ns(stage))
                    );
                    first = false;
                }
            }
            if !first {
                self.line.push(')');
            }
        }
        let _ = write!(self.line, " corrupt {}", stats.total(|c| &c.corrupt));
        let errors = stats.total(|c| &c.source_errors) + stats.total(|c| &c.infer_errors);
        if errors > 0 {
            let _ = write!(self.line, " err {errors}");
        }
        let lost = stats
            .iter()
            .filter(|c| c.counters.lost.load(Relaxed))
            .count();
        if lost > 0 {
            let _ = write!(self.line, " LOST {lost}");
        }
        let stalled = stats
            .iter()
            .filter(|c| c.counters.stalled.load(Relaxed))
            .count();
        if stalled > 0 {
            let _ = write!(self.line, " STALLED {stalled}");
        }
        let (stalls, reconnects, gaps) = (
            stats.total(|c| &c.stalls),
            stats.total(|c| &c.reconnects),
            stats.total(|c| &c.driver_dropped),
        );
        if stalls + reconnects + gaps > 0 {
            let _ = write!(
                self.line,
                " stalls {stalls} reconn {reconnects} drv-drop {gaps}"
            );
        }
        let labelled = stats.total(|c| &c.labelled);
        if labelled > 0 {
            let correct = stats.total(|c| &c.correct);
            let _ = write!(
                self.line,
                " | acc {:.1}%",
                correct as f64 * 100.0 / labelled as f64
            );
        }
        std::mem::swap(&mut self.prev, &mut self.now);
        self.prev_processed = processed;
        self.prev_at = now;
        &self.line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contain_their_values() {
        let mut last_upper = None;
        for i in 0..BUCKETS {
            let upper = bucket_upper(i);
            if let Some(prev) = last_upper {
                assert!(upper > prev, "bucket {i}: {upper} <= {prev}");
                assert_eq!(bucket_of(prev + 1), i, "first value of bucket {i}");
            }
            assert_eq!(bucket_of(upper), i, "upper edge of bucket {i}");
            last_upper = Some(upper);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn relative_error_is_bounded() {
        let mut v = 17u64;
        while v < (1 << 39) {
            let upper = bucket_upper(bucket_of(v));
            assert!(upper >= v);
            assert!(
                (upper - v) as f64 / v as f64 <= 1.0 / SUB as f64,
                "value {v} reported as {upper}"
            );
            v = v * 13 / 10 + 1;
        }
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let h = LatencyHistogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let mut s = HistogramSnapshot::default();
        h.snapshot_into(&mut s);
        assert_eq!(s.count, 10_000);
        assert_eq!(s.max_ns, 10_000_000);
        for (q, expect) in [(0.5, 5e6), (0.9, 9e6), (0.99, 9.9e6), (0.999, 9.99e6)] {
            let got = s.percentile(q) as f64;
            assert!(
                got >= expect && got <= expect * 1.0625 + 1000.0,
                "p{q}: {got} vs {expect}"
            );
        }
        assert_eq!(s.percentile(1.0), 10_000_000);
        assert!((s.mean_ns() - 5_000_500.0).abs() < 1.0);
    }

    #[test]
    fn buckets_list_the_shape() {
        let h = LatencyHistogram::new();
        for v in [3u64, 3, 1_000, 1_010, 5_000_000] {
            h.record(v);
        }
        let mut s = HistogramSnapshot::default();
        h.snapshot_into(&mut s);
        let b: Vec<_> = s.buckets().collect();
        assert_eq!(b.len(), 3, "{b:?}");
        assert_eq!(b[0], (3, 3, 2));
        assert_eq!(b[1].2, 2);
        assert!(b[1].0 <= 1_000 && b[1].1 >= 1_010, "{b:?}");
        assert!(
            b[2].0 <= 5_000_000 && b[2].1 >= 5_000_000 && b[2].2 == 1,
            "{b:?}"
        );
        assert!(b.windows(2).all(|w| w[0].1 < w[1].0));
        assert_eq!(b.iter().map(|x| x.2).sum::<u64>(), s.count);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let s = HistogramSnapshot::default();
        assert_eq!(s.percentile(0.99), 0);
        assert_eq!(s.mean_ns(), 0.0);
    }

    #[test]
    fn difference_isolates_a_window() {
        let h = LatencyHistogram::new();
        for _ in 0..100 {
            h.record(1_000);
        }
        let mut before = HistogramSnapshot::default();
        h.snapshot_into(&mut before);
        for _ in 0..10 {
            h.record(1_000_000);
        }
        let mut after = HistogramSnapshot::default();
        h.snapshot_into(&mut after);
        let mut window = HistogramSnapshot::default();
        window.set_difference(&after, &before);
        assert_eq!(window.count, 10);
        assert_eq!(window.percentile(0.5), 1_000_000);
        assert_eq!(after.percentile(0.5), bucket_upper(bucket_of(1_000)));
    }

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
