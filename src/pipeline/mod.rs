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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;

mod capture;
mod deadline;
mod handoff;
mod inference;

pub use deadline::{Deadlines, TestHooks};

use capture::{capture_loop, CaptureState};
use handoff::Handoff;
use inference::{inference_loop, CameraPrep, InferState};

use crate::frame::{FramePool, PixelFormat};
use crate::infer::InferenceEngine;
use crate::manifest::Preprocess;
use crate::prepare::{PrepareError, Preparer};
use crate::prompts::PromptSet;
use crate::recorder::RecorderTap;
use crate::rt::{RealtimeSettings, RtError};
use crate::sink::Sink;
use crate::source::FrameSource;
use crate::stats::Stats;
use crate::thread::{capture_thread_name, ThreadRole, INFERENCE_THREAD};

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
    /// Names a frame's ground-truth label (the prompt that should win) so results can be judged; the demo's
    /// synthetic and replay cameras carry labels of the demo scenes (`scene::class_prompt`).
    pub ground_truth: Option<fn(u16) -> Option<&'static str>>,
    /// A capture thread waits for the inference thread to take its previous frame instead of displacing it,
    /// so every frame is processed (`ocellus replay`; never for live cameras).
    pub lossless: bool,
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
            ground_truth: None,
            lossless: false,
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
    #[error("no cameras configured: add at least one [[camera]] table")]
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
        engine: Box<dyn InferenceEngine>,
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
                lossless: settings.lossless,
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
                ground_truth: settings.ground_truth,
                recorder: None,
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

    /// Gives the inference thread the recorder's tap before [`Pipeline::start`]: every published frame is
    /// copied into its camera's ring (`recorder`).
    pub fn set_recorder(&mut self, tap: RecorderTap) -> Result<(), PipelineError> {
        let infer = self.infer.as_mut().ok_or(PipelineError::AlreadyStarted)?;
        infer.recorder = Some(tap);
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
        let handle = spawn(INFERENCE_THREAD.into(), move || {
            crate::alloc::register_thread(ThreadRole::Inference);
            apply_realtime(ThreadRole::Inference, &policy, INFERENCE_THREAD, report);
            inference_loop(infer, &stats, &running, &cameras_live)
        })
        .inspect_err(|_| self.running.store(false, Ordering::SeqCst))?;
        self.infer_thread = Some(handle.thread().clone());
        self.threads.push((INFERENCE_THREAD.into(), handle));
        let backoff = (
            self.settings.restart_backoff_min,
            self.settings.restart_backoff_max,
        );
        for cap in std::mem::take(&mut self.capture) {
            let name = capture_thread_name(cap.index);
            let (stats, running, live) = (self.stats.clone(), self.running.clone(), live.clone());
            let waker = self.infer_thread.clone();
            let (policy, report, thread) = (
                self.settings.realtime.capture.clone(),
                rt_tx.clone(),
                name.clone(),
            );
            match spawn(name.clone(), move || {
                crate::alloc::register_thread(ThreadRole::Capture);
                apply_realtime(ThreadRole::Capture, &policy, &thread, report);
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
    role: ThreadRole,
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
