//! The frame path: capture threads, the latest-wins handoff, the inference thread, deadlines and counters.
//!
//! Lifecycle: [`Pipeline::new`] allocates everything the frame path touches (a pool of frame buffers per
//! camera, the one-slot handoff per camera, the preparers and model-input buffer, the engine's output, the
//! score buffer, the statistics); [`Pipeline::start`] spawns one capture thread per camera (`ocellus-cam<N>`)
//! and the inference thread (`ocellus-infer`); [`Pipeline::stop`] stops and joins them. Between `start` and
//! `stop` the frame path does not allocate (sinks and the tracing level permitting).
//!
//! Handoff: a capture thread takes a buffer from its camera's pool, has the source fill it, and `force_push`es
//! it into a one-slot `ArrayQueue`; a frame it displaces was never processed, is counted as dropped and its
//! buffer goes back to the pool. The inference thread takes the newest frame of each camera in turn
//! (round-robin), so a slow model drops frames rather than queueing them, and one camera cannot starve another.
//!
//! Timing: every stage is measured on CLOCK_MONOTONIC, the clock of [`FrameMeta::capture_ns`]; `Dequeue` is
//! capture timestamp to dequeue, `EndToEnd` capture timestamp to the end of publishing. A stage over its
//! deadline sets its bit in [`FrameResult::flags`] and is counted per camera and stage in [`Stats`].
//!
//! Failures: a source error is logged and counted, the camera is marked lost and its source restarted with
//! exponential backoff while the other cameras keep running; a stalled source ([`SourceError::Stalled`]) is
//! flagged (`Stats` `stalled`, the status line, the shared-memory status block) and reopened at once, a
//! disconnected one ([`SourceError::Disconnected`]) is reopened as soon as its device is back (polled every
//! 100 ms); gaps in a source's sequence numbers are counted as driver-dropped frames; a frame the preparer
//! rejects (truncated MJPEG, wrong byte count) is counted as corrupt and skipped; an inference error is
//! counted and the frame skipped.
//! Nothing on the frame path panics on input.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;

use crate::frame::{FrameBuf, FramePool, PixelFormat};
use crate::infer::{Engine, VisionOutput};
use crate::manifest::Preprocess;
use crate::prepare::{PrepareError, Preparer};
use crate::prompts::PromptSet;
use crate::rt::{RealtimeSettings, Role, RtError};
use crate::sink::Sink;
use crate::source::{FrameSource, SequenceGaps, SourceError};
use crate::stats::{Stage, Stats, STAGE_COUNT};

/// Result flag: the camera's source is failing (set on frames taken while it is being restarted).
pub const FLAG_CAMERA_LOST: u32 = 1 << 16;
/// Result flag: the source was restarted since this camera's previous published frame.
pub const FLAG_CAMERA_RESTARTED: u32 = 1 << 17;
/// Result flag: scores are missing (no prompt set, or more prompts than the score buffer holds).
pub const FLAG_DEGRADED: u32 = 1 << 18;
/// Mask of the per-stage late bits ([`Stage::late_bit`]).
pub const FLAG_LATE_MASK: u32 = (1 << STAGE_COUNT) - 1;

pub use crate::frame::monotonic_ns;

/// One frame's result, borrowing the inference thread's buffers for the duration of [`Sink::publish`].
#[derive(Debug, Clone, Copy)]
pub struct FrameResult<'a> {
    /// Camera index (order of the config's cameras).
    pub camera: usize,
    /// The source's frame sequence number.
    pub sequence: u64,
    /// Capture time, CLOCK_MONOTONIC ns (the driver's timestamp where there is one).
    pub capture_ns: u64,
    /// When publishing began, CLOCK_MONOTONIC ns.
    pub publish_ns: u64,
    /// Stage durations in ns, indexed by [`Stage::index`]. `Publish` is 0 (it is under way) and `EndToEnd`
    /// runs to `publish_ns`; the statistics record both in full once all sinks have returned.
    pub stage_ns: [u64; STAGE_COUNT],
    /// Late bits ([`Stage::late_bit`]) and `FLAG_*`.
    pub flags: u32,
    /// The pooled image embedding [E], L2-normalised.
    pub image_embeds: &'a [f32],
    /// The resampler's latents, row-major [L x Dl].
    pub latents: &'a [f32],
    /// (L, Dl).
    pub latents_shape: (usize, usize),
    /// One score per prompt (softmax over the prompt set); empty when `FLAG_DEGRADED`.
    pub scores: &'a [f32],
    /// The prompt set's labels, `labels[k]` scored by `scores[k]`.
    pub labels: &'a [String],
    /// Version of the prompt set that produced the scores.
    pub prompt_version: u64,
    /// Ground-truth class index (synthetic source).
    pub ground_truth: Option<u16>,
    /// Ground-truth label, the prompt text of the class (synthetic source).
    pub ground_truth_label: Option<&'static str>,
}

impl FrameResult<'_> {
    /// Index and score of the best prompt, if any.
    pub fn top(&self) -> Option<(usize, f32)> {
        argmax(self.scores)
    }

    /// Capture to publish, in ns.
    pub fn end_to_end_ns(&self) -> u64 {
        self.publish_ns.saturating_sub(self.capture_ns)
    }

    /// Whether any stage was late.
    pub fn is_late(&self) -> bool {
        self.flags & FLAG_LATE_MASK != 0
    }
}

fn argmax(scores: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best
}

/// Per-stage deadlines in ns, indexed by [`Stage::index`]; 0 means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadlines {
    pub stage_ns: [u64; STAGE_COUNT],
}

impl Deadlines {
    /// Sets the deadline of `stage` (`None`: no deadline).
    pub fn with(mut self, stage: Stage, deadline: Option<Duration>) -> Self {
        self.stage_ns[stage.index()] = deadline
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self
    }

    /// The overrun of `stage` taking `ns`, if it missed its deadline.
    pub fn overrun(&self, stage: Stage, ns: u64) -> Option<u64> {
        let limit = self.stage_ns[stage.index()];
        (limit > 0 && ns > limit).then(|| ns - limit)
    }
}

/// Test aids (`[testing]` in the config): an artificially slow stage and a stalled inference thread, to
/// exercise deadlines, drops and the service watchdog. Off by default; not for production configurations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TestHooks {
    /// Sleep this long inside this stage of every frame (the sleep counts as the stage's time). `Dequeue`
    /// delays the inference thread before it takes the frame; `Score` and `EndToEnd` are not delayable.
    pub delay: Option<(Stage, Duration)>,
    /// After this many published frames the inference thread stops taking frames, as a hung model would,
    /// until the pipeline is stopped; capture goes on and its frames are dropped.
    pub stall_after_frames: Option<u64>,
}

impl TestHooks {
    /// Whether any test aid is on.
    pub fn is_active(&self) -> bool {
        self.delay.is_some() || self.stall_after_frames.is_some()
    }
}

/// How the pipeline runs; everything has a usable default.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Per-stage deadlines.
    pub deadlines: Deadlines,
    /// Stop after this many published frames (all cameras together).
    pub max_frames: Option<u64>,
    /// Largest prompt set the score buffer holds.
    pub max_prompts: usize,
    /// First wait before restarting a failed source; doubles up to `restart_backoff_max`.
    pub restart_backoff_min: Duration,
    pub restart_backoff_max: Duration,
    /// How long `stop` waits for each thread before leaving it behind (a source stuck in the kernel).
    pub join_timeout: Duration,
    /// CPU affinity and SCHED_FIFO priority per thread role, applied by each thread as it starts.
    pub realtime: RealtimeSettings,
    /// Test aids; off by default.
    pub test_hooks: TestHooks,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            deadlines: Deadlines::default(),
            max_frames: None,
            max_prompts: 256,
            restart_backoff_min: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(5),
            join_timeout: Duration::from_secs(2),
            realtime: RealtimeSettings::default(),
            test_hooks: TestHooks::default(),
        }
    }
}

/// One camera: its source and the frames it delivers.
pub struct CameraSpec {
    /// Name for logs and thread names (e.g. the config's camera name).
    pub name: String,
    pub source: Box<dyn FrameSource>,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Frame buffers for this camera (at least 3: one being filled, one in the handoff, one being processed).
    pub pool_size: usize,
}

/// Why a pipeline could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("no cameras configured: add at least one [[cameras]] table")]
    NoCameras,
    #[error("camera {camera} ({name}): cannot prepare its {format:?} {width}x{height} frames for the model: {source}")]
    Preparer {
        camera: usize,
        name: String,
        format: PixelFormat,
        width: u32,
        height: u32,
        #[source]
        source: PrepareError,
    },
    #[error("camera {camera} ({name}): the source reports a maximum frame size of 0 bytes")]
    FrameSize { camera: usize, name: String },
    #[error("camera {camera} ({name}): pool-size {pool_size} is too small: the handoff needs at least 3 buffers per camera")]
    PoolSize {
        camera: usize,
        name: String,
        pool_size: usize,
    },
    #[error(
        "the prompt set has {len} prompts but the score buffer holds {max}: raise prompts.max"
    )]
    TooManyPrompts { len: usize, max: usize },
    #[error("the prompt embeddings are {prompts} wide but the image embeddings {image}: the text and vision models must come from the same bundle")]
    EmbedDim { prompts: usize, image: usize },
    #[error("the pipeline was already started")]
    AlreadyStarted,
    #[error("the system refused real-time settings and realtime.strict = true:\n{}",
        .0.iter().map(|(thread, e)| format!("  {thread}: {e}")).collect::<Vec<_>>().join("\n"))]
    Realtime(Vec<(String, RtError)>),
    #[error("failed to spawn thread {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// What one camera's capture thread and the inference thread share.
struct Handoff {
    /// Latest frame, capacity 1.
    slot: ArrayQueue<FrameBuf>,
    /// Free buffers.
    pool: FramePool,
}

struct CaptureState {
    index: usize,
    name: String,
    source: Box<dyn FrameSource>,
    handoff: Arc<Handoff>,
    restarted: Arc<AtomicBool>,
}

struct CameraPrep {
    preparer: Preparer,
    format: PixelFormat,
    width: u32,
    height: u32,
    handoff: Arc<Handoff>,
    restarted: Arc<AtomicBool>,
    name: String,
    /// Corrupt frames seen; the first few are logged as warnings, then every 1000th.
    corrupt_logged: u64,
}

struct InferState {
    cameras: Vec<CameraPrep>,
    preprocess: Preprocess,
    engine: Engine,
    input: Vec<f32>,
    output: VisionOutput,
    scores: Vec<f32>,
    prompts: Arc<ArcSwap<PromptSet>>,
    sinks: Vec<Box<dyn Sink>>,
    deadlines: Deadlines,
    max_frames: Option<u64>,
    hooks: TestHooks,
}

/// The running frame path. See the module documentation.
pub struct Pipeline {
    stats: Arc<Stats>,
    running: Arc<AtomicBool>,
    settings: PipelineSettings,
    capture: Vec<CaptureState>,
    infer: Option<InferState>,
    threads: Vec<(String, JoinHandle<()>)>,
    infer_thread: Option<Thread>,
    capture_threads: Vec<Thread>,
}

impl Pipeline {
    /// Allocates the frame path for `cameras`; nothing runs until [`Pipeline::start`].
    pub fn new(
        settings: PipelineSettings,
        cameras: Vec<CameraSpec>,
        engine: Engine,
        preprocess: &Preprocess,
        prompts: Arc<ArcSwap<PromptSet>>,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Result<Pipeline, PipelineError> {
        if cameras.is_empty() {
            return Err(PipelineError::NoCameras);
        }
        let (len, dim) = {
            let set = prompts.load();
            (set.len(), set.dim())
        };
        if dim != engine.embed_dim() {
            return Err(PipelineError::EmbedDim {
                prompts: dim,
                image: engine.embed_dim(),
            });
        }
        if len > settings.max_prompts {
            return Err(PipelineError::TooManyPrompts {
                len,
                max: settings.max_prompts,
            });
        }
        let stats = Arc::new(Stats::new(cameras.len()));
        let mut capture = Vec::with_capacity(cameras.len());
        let mut preps = Vec::with_capacity(cameras.len());
        for (index, cam) in cameras.into_iter().enumerate() {
            if cam.pool_size < 3 {
                return Err(PipelineError::PoolSize {
                    camera: index,
                    name: cam.name,
                    pool_size: cam.pool_size,
                });
            }
            let preparer =
                Preparer::new(preprocess, cam.format, cam.width, cam.height).map_err(|source| {
                    PipelineError::Preparer {
                        camera: index,
                        name: cam.name.clone(),
                        format: cam.format,
                        width: cam.width,
                        height: cam.height,
                        source,
                    }
                })?;
            let bytes = cam.source.max_frame_bytes();
            if bytes == 0 {
                return Err(PipelineError::FrameSize {
                    camera: index,
                    name: cam.name,
                });
            }
            let handoff = Arc::new(Handoff {
                slot: ArrayQueue::new(1),
                pool: FramePool::new(cam.pool_size, bytes),
            });
            let restarted = Arc::new(AtomicBool::new(false));
            preps.push(CameraPrep {
                preparer,
                format: cam.format,
                width: cam.width,
                height: cam.height,
                handoff: handoff.clone(),
                restarted: restarted.clone(),
                name: cam.name.clone(),
                corrupt_logged: 0,
            });
            capture.push(CaptureState {
                index,
                name: cam.name,
                source: cam.source,
                handoff,
                restarted,
            });
        }
        let input = vec![0.0; engine.input_len()];
        let output = engine.new_output();
        Ok(Pipeline {
            stats,
            running: Arc::new(AtomicBool::new(false)),
            infer: Some(InferState {
                cameras: preps,
                preprocess: preprocess.clone(),
                engine,
                input,
                output,
                scores: vec![0.0; settings.max_prompts],
                prompts,
                sinks,
                deadlines: settings.deadlines,
                max_frames: settings.max_frames,
                hooks: settings.test_hooks,
            }),
            settings,
            capture,
            threads: Vec::new(),
            infer_thread: None,
            capture_threads: Vec::new(),
        })
    }

    /// The run's statistics (live while running).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Adds a sink before [`Pipeline::start`] (for sinks that need [`Pipeline::stats`], like the shared-memory
    /// sink's status block).
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) -> Result<(), PipelineError> {
        let infer = self.infer.as_mut().ok_or(PipelineError::AlreadyStarted)?;
        infer.sinks.push(sink);
        Ok(())
    }

    /// Spawns the inference thread and one capture thread per camera.
    pub fn start(&mut self) -> Result<(), PipelineError> {
        let infer = self.infer.take().ok_or(PipelineError::AlreadyStarted)?;
        self.running.store(true, Ordering::SeqCst);
        let live = Arc::new(AtomicUsize::new(self.capture.len()));
        let (stats, running, cameras_live) =
            (self.stats.clone(), self.running.clone(), live.clone());
        let (rt_tx, rt_rx) = std::sync::mpsc::channel();
        let (policy, report) = (self.settings.realtime.inference.clone(), rt_tx.clone());
        let handle = spawn("ocellus-infer".into(), move || {
            crate::alloc::register_thread(crate::alloc::Role::Inference);
            apply_realtime(Role::Inference, &policy, "ocellus-infer", report);
            inference_loop(infer, &stats, &running, &cameras_live)
        })
        .inspect_err(|_| self.running.store(false, Ordering::SeqCst))?;
        self.infer_thread = Some(handle.thread().clone());
        self.threads.push(("ocellus-infer".into(), handle));
        let backoff = (
            self.settings.restart_backoff_min,
            self.settings.restart_backoff_max,
        );
        for cap in std::mem::take(&mut self.capture) {
            let name = format!("ocellus-cam{}", cap.index);
            let (stats, running, live) = (self.stats.clone(), self.running.clone(), live.clone());
            let waker = self.infer_thread.clone();
            let (policy, report, thread) = (
                self.settings.realtime.capture.clone(),
                rt_tx.clone(),
                name.clone(),
            );
            match spawn(name.clone(), move || {
                crate::alloc::register_thread(crate::alloc::Role::Capture);
                apply_realtime(Role::Capture, &policy, &thread, report);
                capture_loop(cap, &stats, &running, waker.as_ref(), backoff);
                live.fetch_sub(1, Ordering::SeqCst);
                if let Some(w) = waker {
                    w.unpark();
                }
            }) {
                Ok(handle) => {
                    self.capture_threads.push(handle.thread().clone());
                    self.threads.push((name, handle));
                }
                Err(e) => {
                    self.stop();
                    return Err(e);
                }
            }
        }
        drop(rt_tx);
        self.check_realtime(rt_rx)
    }

    /// Waits for every thread's report of its real-time settings; warns about refusals, or stops the
    /// pipeline and fails when `realtime.strict`.
    fn check_realtime(
        &mut self,
        reports: std::sync::mpsc::Receiver<(String, Vec<RtError>)>,
    ) -> Result<(), PipelineError> {
        // Each thread sends one report and drops its sender first thing, so this ends once all have.
        let refused: Vec<(String, RtError)> = reports
            .iter()
            .flat_map(|(thread, errors)| errors.into_iter().map(move |e| (thread.clone(), e)))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        if self.settings.realtime.strict {
            self.stop();
            return Err(PipelineError::Realtime(refused));
        }
        for (thread, e) in &refused {
            tracing::warn!(thread = %thread, error = %e, "real-time setting not applied; running without it (set realtime.strict = true to refuse to start instead)");
        }
        Ok(())
    }

    /// Whether the threads are (still) running: false once a frame limit was reached or after `stop`.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Waits until the pipeline stops by itself (frame limit) or `timeout` passes, whichever is first;
    /// returns whether it stopped. Wakes early when `interrupt` becomes true.
    pub fn wait(&self, timeout: Duration, interrupt: &AtomicBool) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return true;
            }
            if interrupt.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    /// Stops all threads and joins them, waiting at most `join_timeout` for each; a thread that does not
    /// finish in time (a source blocked in the kernel) is left behind with a warning. Calls every sink's
    /// `stop`. Idempotent.
    pub fn stop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        for t in self
            .capture_threads
            .drain(..)
            .chain(self.infer_thread.take())
        {
            t.unpark();
        }
        for (name, handle) in self.threads.drain(..) {
            let until = Instant::now() + self.settings.join_timeout;
            while !handle.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            if handle.is_finished() {
                if handle.join().is_err() {
                    tracing::error!(thread = %name, "thread panicked");
                }
            } else {
                tracing::warn!(
                    thread = %name,
                    timeout_ms = self.settings.join_timeout.as_millis() as u64,
                    "thread did not stop in time (source blocked?); leaving it behind"
                );
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Applies `role`'s real-time policy to the calling thread and reports the refusals to [`Pipeline::start`].
fn apply_realtime(
    role: Role,
    policy: &crate::rt::ThreadPolicy,
    thread: &str,
    report: std::sync::mpsc::Sender<(String, Vec<RtError>)>,
) {
    let errors = crate::rt::apply_for_role(role, policy);
    if errors.is_empty() && !policy.is_default() {
        tracing::info!(thread, role = role.name(), cpus = %crate::rt::cpu_list(&policy.cpus), fifo_priority = ?policy.fifo_priority, "real-time settings applied");
    }
    let _ = report.send((thread.to_owned(), errors));
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, PipelineError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| PipelineError::Spawn { name, source })
}

/// How often a capture thread retries opening a camera whose device is gone (a missing path costs one failed
/// `open`).
const RECONNECT_POLL: Duration = Duration::from_millis(100);

/// Sleeps up to `d`, waking early when the pipeline stops. Returns whether it is still running.
fn sleep_while_running(running: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while running.load(Relaxed) {
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::park_timeout(until - now);
    }
    false
}

fn capture_loop(
    mut cap: CaptureState,
    stats: &Stats,
    running: &AtomicBool,
    waker: Option<&Thread>,
    (backoff_min, backoff_max): (Duration, Duration),
) {
    let cam = stats.camera(cap.index);
    let counters = &cam.counters;
    let mut backoff = backoff_min;
    let mut started = false;
    let mut gaps = SequenceGaps::new();
    // Set from a stall or a disconnect until the source is open again (the reopening counts as a reconnect).
    let mut reconnecting = false;
    // The device is gone: `start` is retried every RECONNECT_POLL, logged once.
    let mut waiting = false;
    while running.load(Relaxed) {
        if !started {
            match cap.source.start() {
                Ok(()) => {
                    started = true;
                    waiting = false;
                    gaps.reset();
                    if std::mem::take(&mut reconnecting) {
                        counters.reconnects.fetch_add(1, Relaxed);
                        tracing::info!(camera = cap.index, name = %cap.name, source = %cap.source.describe(), "camera reopened");
                    } else {
                        tracing::info!(camera = cap.index, name = %cap.name, source = %cap.source.describe(), "camera started");
                    }
                }
                Err(e @ SourceError::Disconnected { .. }) => {
                    // Waiting for the device to (re)appear: poll its path at a short, fixed interval.
                    if std::mem::replace(&mut waiting, true) {
                        tracing::debug!(camera = cap.index, name = %cap.name, error = %e, "camera still gone");
                    } else {
                        counters.source_errors.fetch_add(1, Relaxed);
                        counters.lost.store(true, Relaxed);
                        tracing::error!(camera = cap.index, name = %cap.name, error = %e, retry_ms = RECONNECT_POLL.as_millis() as u64, "camera is not there; waiting for its device");
                    }
                    if !sleep_while_running(running, RECONNECT_POLL) {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    counters.source_errors.fetch_add(1, Relaxed);
                    counters.lost.store(true, Relaxed);
                    tracing::error!(camera = cap.index, name = %cap.name, error = %e, retry_ms = backoff.as_millis() as u64, "camera failed to start");
                    if !sleep_while_running(running, backoff) {
                        break;
                    }
                    backoff = (backoff * 2).min(backoff_max);
                    continue;
                }
            }
        }
        // With pool_size >= 3 the pool only runs dry if the inference thread holds a buffer and the slot
        // another; then the waiting frame is the oldest: drop it and reuse its buffer.
        let mut buf = match cap.handoff.pool.take().or_else(|| {
            let old = cap.handoff.slot.pop();
            if old.is_some() {
                counters.dropped.fetch_add(1, Relaxed);
            }
            old
        }) {
            Some(b) => b,
            None => {
                std::thread::park_timeout(Duration::from_millis(1));
                continue;
            }
        };
        match cap.source.next_frame(&mut buf) {
            Ok(()) => {
                buf.meta.camera = cap.index;
                counters.captured.fetch_add(1, Relaxed);
                let missing = gaps.observe(buf.meta.sequence);
                if missing > 0 {
                    counters.driver_dropped.fetch_add(missing, Relaxed);
                }
                if counters.lost.swap(false, Relaxed) | counters.stalled.swap(false, Relaxed) {
                    tracing::info!(camera = cap.index, name = %cap.name, "camera recovered");
                }
                backoff = backoff_min;
                if let Some(old) = cap.handoff.slot.force_push(buf) {
                    counters.dropped.fetch_add(1, Relaxed);
                    let _ = cap.handoff.pool.give(old);
                }
                if let Some(w) = waker {
                    w.unpark();
                }
            }
            Err(e) => {
                let _ = cap.handoff.pool.give(buf);
                match e {
                    SourceError::Timeout { .. } => continue,
                    SourceError::EndOfStream { .. } => {
                        tracing::info!(camera = cap.index, name = %cap.name, "camera reached the end of its frames");
                        break;
                    }
                    SourceError::Stalled { .. } => {
                        // Reopen at once: a stalled stream rarely recovers without STREAMOFF/STREAMON.
                        counters.stalls.fetch_add(1, Relaxed);
                        if counters.stalled.swap(true, Relaxed) {
                            tracing::debug!(camera = cap.index, name = %cap.name, error = %e, "camera still stalled; reopening it");
                        } else {
                            tracing::warn!(camera = cap.index, name = %cap.name, error = %e, "camera stalled; reopening it");
                        }
                        cap.source.stop();
                        started = false;
                        reconnecting = true;
                        counters.restarts.fetch_add(1, Relaxed);
                        cap.restarted.store(true, Relaxed);
                        continue;
                    }
                    SourceError::Disconnected { .. } => {
                        counters.disconnects.fetch_add(1, Relaxed);
                        counters.source_errors.fetch_add(1, Relaxed);
                        counters.lost.store(true, Relaxed);
                        tracing::error!(camera = cap.index, name = %cap.name, error = %e, "camera disconnected");
                        cap.source.stop();
                        started = false;
                        reconnecting = true;
                        waiting = true;
                        counters.restarts.fetch_add(1, Relaxed);
                        cap.restarted.store(true, Relaxed);
                        continue;
                    }
                    _ => {}
                }
                counters.source_errors.fetch_add(1, Relaxed);
                counters.lost.store(true, Relaxed);
                tracing::error!(camera = cap.index, name = %cap.name, error = %e, retry_ms = backoff.as_millis() as u64, "camera failed; restarting it");
                cap.source.stop();
                started = false;
                if !sleep_while_running(running, backoff) {
                    break;
                }
                backoff = (backoff * 2).min(backoff_max);
                counters.restarts.fetch_add(1, Relaxed);
                cap.restarted.store(true, Relaxed);
            }
        }
    }
    if started {
        cap.source.stop();
    }
}

fn inference_loop(
    mut st: InferState,
    stats: &Stats,
    running: &AtomicBool,
    cameras_live: &AtomicUsize,
) {
    let n = st.cameras.len();
    let mut next = 0usize;
    let mut published = 0u64;
    'run: while running.load(Relaxed) {
        if st.hooks.stall_after_frames.is_some_and(|n| published >= n) {
            tracing::warn!(
                frames = published,
                "test aid [testing] stall-after-frames: the inference thread stalls until stopped"
            );
            while running.load(Relaxed) {
                std::thread::park_timeout(Duration::from_millis(100));
            }
            break;
        }
        let mut took = false;
        for k in 0..n {
            let cam = (next + k) % n;
            let Some(buf) = st.cameras[cam].handoff.slot.pop() else {
                continue;
            };
            took = true;
            next = cam + 1;
            let ok = st.process(cam, &buf, stats, running);
            // Every buffer came from this pool, which has room for all of them.
            let _ = st.cameras[cam].handoff.pool.give(buf);
            if ok {
                published += 1;
                if st.max_frames.is_some_and(|m| published >= m) {
                    break 'run;
                }
            }
            break;
        }
        if !took {
            // Every source has ended (replay without loop) and every slot is empty: the run is over.
            if cameras_live.load(Ordering::SeqCst) == 0
                && st.cameras.iter().all(|c| c.handoff.slot.is_empty())
            {
                break;
            }
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }
    running.store(false, Ordering::SeqCst);
    for sink in st.sinks.iter_mut() {
        sink.stop();
    }
}

impl InferState {
    /// Runs one frame through prepare, infer, score and publish. Returns whether it was published.
    fn process(
        &mut self,
        index: usize,
        buf: &FrameBuf,
        stats: &Stats,
        running: &AtomicBool,
    ) -> bool {
        let cam_stats = stats.camera(index);
        let counters = &cam_stats.counters;
        let meta = &buf.meta;
        test_delay(&self.hooks, Stage::Dequeue, running);
        let t_dequeue = monotonic_ns();
        let mut stage_ns = [0u64; STAGE_COUNT];
        stage_ns[Stage::Dequeue.index()] = t_dequeue.saturating_sub(meta.capture_ns);

        let cam = &mut self.cameras[index];
        if (meta.format, meta.width, meta.height) != (cam.format, cam.width, cam.height) {
            // A source changed its format or size (a replay directory of mixed images, a renegotiated
            // camera): rebuild the preparer. This allocates, once per change.
            match Preparer::new(&self.preprocess, meta.format, meta.width, meta.height) {
                Ok(p) => {
                    tracing::info!(camera = index, name = %cam.name, format = ?meta.format, width = meta.width, height = meta.height, "frame format changed; preparer rebuilt");
                    cam.preparer = p;
                    (cam.format, cam.width, cam.height) = (meta.format, meta.width, meta.height);
                }
                Err(e) => {
                    counters.corrupt.fetch_add(1, Relaxed);
                    log_corrupt(cam, index, meta.sequence, &e);
                    return false;
                }
            }
        }
        let bytes = meta.bytes.min(buf.data.len());
        if let Err(e) = cam.preparer.prepare(&buf.data[..bytes], &mut self.input) {
            counters.corrupt.fetch_add(1, Relaxed);
            log_corrupt(cam, index, meta.sequence, &e);
            return false;
        }
        test_delay(&self.hooks, Stage::Prepare, running);
        let t_prepared = monotonic_ns();
        stage_ns[Stage::Prepare.index()] = t_prepared - t_dequeue;

        let times = match self.engine.run(&self.input, &mut self.output) {
            Ok(t) => t,
            Err(e) => {
                let n = counters.infer_errors.fetch_add(1, Relaxed);
                if n < 5 || n % 1000 == 0 {
                    tracing::error!(camera = index, seq = meta.sequence, error = %e, "inference failed; frame skipped");
                }
                return false;
            }
        };
        let enc_delay = test_delay(&self.hooks, Stage::Encoder, running);
        let res_delay = test_delay(&self.hooks, Stage::Resampler, running);
        let t_inferred = monotonic_ns();
        let enc = u64::try_from(times.encoder.as_nanos()).unwrap_or(u64::MAX);
        stage_ns[Stage::Encoder.index()] = enc.saturating_add(enc_delay);
        stage_ns[Stage::Resampler.index()] = u64::try_from(times.resampler.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(res_delay);

        let mut flags = 0u32;
        let prompts = self.prompts.load();
        let k = prompts.len();
        let scores: &[f32] = if k > 0 && k <= self.scores.len() {
            prompts.score(&self.output.image_embeds, &mut self.scores[..k]);
            &self.scores[..k]
        } else {
            flags |= FLAG_DEGRADED;
            &[]
        };
        let t_scored = monotonic_ns();
        stage_ns[Stage::Score.index()] = t_scored - t_inferred;

        let top = argmax(scores);
        let truth = meta.label.and_then(crate::scene::class_prompt);
        if let Some(truth) = truth {
            counters.labelled.fetch_add(1, Relaxed);
            if top
                .and_then(|(i, _)| prompts.labels().get(i))
                .is_some_and(|l| l == truth)
            {
                counters.correct.fetch_add(1, Relaxed);
            }
        }

        stage_ns[Stage::EndToEnd.index()] = t_scored.saturating_sub(meta.capture_ns);
        for stage in [
            Stage::Dequeue,
            Stage::Prepare,
            Stage::Encoder,
            Stage::Resampler,
            Stage::Score,
            Stage::EndToEnd,
        ] {
            if self
                .deadlines
                .overrun(stage, stage_ns[stage.index()])
                .is_some()
            {
                flags |= stage.late_bit();
            }
        }
        if counters.lost.load(Relaxed) {
            flags |= FLAG_CAMERA_LOST;
        }
        if cam.restarted.swap(false, Relaxed) {
            flags |= FLAG_CAMERA_RESTARTED;
        }
        let result = FrameResult {
            camera: index,
            sequence: meta.sequence,
            capture_ns: meta.capture_ns,
            publish_ns: t_scored,
            stage_ns,
            flags,
            image_embeds: &self.output.image_embeds,
            latents: &self.output.latents,
            latents_shape: self.output.latents_shape,
            scores,
            labels: prompts.labels(),
            prompt_version: prompts.version(),
            ground_truth: meta.label,
            ground_truth_label: truth,
        };
        for sink in self.sinks.iter_mut() {
            if let Err(e) = sink.publish(&result) {
                let n = counters.publish_errors.fetch_add(1, Relaxed);
                if n < 5 || n % 1000 == 0 {
                    tracing::warn!(camera = index, seq = meta.sequence, error = %e, "sink failed");
                }
            }
        }
        test_delay(&self.hooks, Stage::Publish, running);
        let t_published = monotonic_ns();
        stage_ns[Stage::Publish.index()] = t_published - t_scored;
        stage_ns[Stage::EndToEnd.index()] = t_published.saturating_sub(meta.capture_ns);

        let (mut late_stages, mut worst) = (0u32, 0u64);
        for stage in Stage::ALL {
            let ns = stage_ns[stage.index()];
            cam_stats.record(stage, ns);
            if let Some(over) = self.deadlines.overrun(stage, ns) {
                cam_stats.count_late(stage, over);
                late_stages |= stage.late_bit();
                worst = worst.max(over);
            }
        }
        if late_stages != 0 {
            cam_stats.count_late_frame(late_stages, worst);
        }
        counters.last_sequence.store(meta.sequence, Relaxed);
        counters.processed.fetch_add(1, Relaxed);
        true
    }
}

/// The `[testing]` delay: when `stage` is the delayed one, sleeps for the delay (waking early when the
/// pipeline stops) and returns the ns slept; otherwise returns 0 at once.
fn test_delay(hooks: &TestHooks, stage: Stage, running: &AtomicBool) -> u64 {
    match hooks.delay {
        Some((s, d)) if s == stage => {
            let t0 = monotonic_ns();
            sleep_while_running(running, d);
            monotonic_ns().saturating_sub(t0)
        }
        _ => 0,
    }
}

fn log_corrupt(cam: &mut CameraPrep, index: usize, sequence: u64, e: &dyn std::fmt::Display) {
    cam.corrupt_logged += 1;
    if cam.corrupt_logged <= 5 || cam.corrupt_logged % 1000 == 0 {
        tracing::warn!(camera = index, name = %cam.name, seq = sequence, error = %e, count = cam.corrupt_logged, "corrupt frame skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_report_overruns() {
        let d = Deadlines::default()
            .with(Stage::Encoder, Some(Duration::from_millis(10)))
            .with(Stage::Prepare, None);
        assert_eq!(d.overrun(Stage::Encoder, 9_000_000), None);
        assert_eq!(d.overrun(Stage::Encoder, 10_000_000), None);
        assert_eq!(d.overrun(Stage::Encoder, 12_500_000), Some(2_500_000));
        assert_eq!(d.overrun(Stage::Prepare, u64::MAX), None);
    }

    #[test]
    fn argmax_picks_the_first_best() {
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), Some((1, 0.7)));
    }
}
