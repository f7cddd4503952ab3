//! The flight recorder (`[recorder]`) and dataset capture (`ocellus record --duration`).
//!
//! Per camera a ring of the last processed frames: each slot holds the frame's bytes, its metadata (capture
//! time, sequence, the camera's driver-dropped and handoff-dropped counts) and its results (stage times,
//! flags, embedding, latents, scores, prompt version). docs/recorder.md has the whole story; the format is in
//! [`format`].
//!
//! # Real-time contract
//!
//! * **Allocated at start-up** ([`Recorder::new`]): every ring slot (the camera's largest frame and the
//!   result arrays), with its pages touched, counted in the memory plan (`runtime::memory`).
//! * **The frame path** ([`RecorderTap::record`], on the inference thread after publishing): one copy of the
//!   frame and its results into the next slot, relaxed counters, `Thread::unpark`. No allocation, no lock
//!   that can be held by another thread (each slot's mutex is taken with `try_lock` and is never
//!   contended), no log line, no system call except waking the writer.
//! * **Triggers** (a chosen stage's deadline miss, a camera stall or reconnect, SIGUSR1, the control socket)
//!   start the window's after-part; once it is recorded the window freezes and the writer thread
//!   (`ocellus-rec`) writes it. While the writer writes, nothing is recorded and a trigger is counted as
//!   dropped: the frame path never waits for the disk.
//! * **The writer** keeps the recording directory within `recorder.quota-mib` (oldest recordings removed
//!   first); a write that fails (disk full, directory not writable) is counted and logged and the window
//!   is released.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod compare;
pub mod control;
pub mod format;
mod ring;
mod tap;
mod writer;

pub use control::{authorize, request, ControlError, ControlServer, Peer, RequestError};
pub use format::{
    FrameResults, Header, ModelIdentity, Recording, RecordingError, RecordingKind, ResultsShape,
};
pub use tap::RecorderTap;
pub use writer::{make_room, max_recording_bytes, recordings_in, RingCamera, WriteError};

use ring::{Ring, Shared};
use writer::{Capture, WriterContext};

use crate::frame::FrameMeta;
use crate::prompts::PromptSet;
use crate::stats::{Stage, Stats, STAGE_COUNT};

/// How long a camera's window is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// `recorder.seconds`: this long at the camera's `fps` (frames = seconds x fps).
    Seconds(f64),
    /// `recorder.frames`: this many frames per camera.
    Frames(usize),
}

/// `[recorder]`, validated (docs/recorder.md, bsp/ocellus.example.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct RecorderSettings {
    /// `enabled`: the flight recorder runs.
    pub enabled: bool,
    pub window: Window,
    /// `after`: the fraction of the window recorded after the trigger.
    pub after: f64,
    /// `dir`: where recordings are written.
    pub dir: PathBuf,
    /// `quota-mib`: the most the recordings in `dir` may take, in bytes.
    pub quota_bytes: u64,
    /// `socket`: the control socket (`ocellus record --trigger`).
    pub socket: PathBuf,
    /// `on-late`: the stages whose deadline miss triggers a recording.
    pub on_late: Vec<Stage>,
    /// `on-camera-fault`: a camera stall, disconnect or reconnect triggers a recording.
    pub on_camera_fault: bool,
    /// Set by `ocellus record --out DIR` (not a config key): every processed frame is captured into DIR
    /// instead of a flight recorder's window.
    pub capture: Option<PathBuf>,
}

/// Defaults of `[recorder]`.
pub mod defaults {
    pub const SECONDS: f64 = 4.0;
    pub const AFTER: f64 = 0.25;
    pub const DIR: &str = "recordings";
    pub const SOCKET: &str = "trigger.sock";
    pub const QUOTA_MIB: u64 = 1024;
    /// Slots of a capture's ring per camera: about a second of frames (this many at fps = 0), at least 8.
    pub const CAPTURE_SLOTS_UNPACED: usize = 30;
}

impl Default for RecorderSettings {
    fn default() -> Self {
        RecorderSettings {
            enabled: false,
            window: Window::Seconds(defaults::SECONDS),
            after: defaults::AFTER,
            dir: PathBuf::from(defaults::DIR),
            quota_bytes: defaults::QUOTA_MIB << 20,
            socket: Path::new(defaults::DIR).join(defaults::SOCKET),
            on_late: vec![Stage::EndToEnd],
            on_camera_fault: true,
            capture: None,
        }
    }
}

impl RecorderSettings {
    /// Whether a recorder runs (the flight recorder, or a capture).
    pub fn is_on(&self) -> bool {
        self.enabled || self.capture.is_some()
    }

    /// Slots of the ring of a camera delivering `fps` frames a second.
    pub fn slots(&self, fps: u32) -> usize {
        if self.capture.is_some() {
            return if fps == 0 {
                defaults::CAPTURE_SLOTS_UNPACED
            } else {
                (fps as usize).max(8)
            };
        }
        match self.window {
            Window::Frames(n) => n.max(1),
            Window::Seconds(s) => ((s * f64::from(fps)).ceil() as usize).max(1),
        }
    }

    /// The late bits of `on_late`.
    pub fn on_late_mask(&self) -> u32 {
        self.on_late.iter().fold(0, |m, s| m | s.late_bit())
    }

    /// Where the window's size comes from, for messages: `recorder.seconds 4 x 30 fps`.
    pub fn window_detail(&self, fps: u32) -> String {
        match (self.capture.is_some(), self.window) {
            (true, _) => "one second, for the capture's writer".into(),
            (false, Window::Frames(n)) => format!("recorder.frames {n}"),
            (false, Window::Seconds(s)) => format!("recorder.seconds {s} x {fps} fps"),
        }
    }
}

/// Bytes of one camera's ring of `slots` slots.
pub fn ring_bytes(slots: usize, frame_bytes: usize, shape: &ResultsShape) -> u64 {
    let floats = shape.embed_dim + shape.num_latents * shape.latent_dim + shape.max_scores;
    let per_slot =
        frame_bytes + 4 * floats + std::mem::size_of::<std::sync::Mutex<ring::SlotData>>() + 1;
    (slots * per_slot + std::mem::size_of::<Ring>()) as u64
}

/// What kind of trigger froze a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    Late,
    CameraFault,
    Signal,
    Command,
}

impl TriggerKind {
    pub fn name(self) -> &'static str {
        match self {
            TriggerKind::Late => "late",
            TriggerKind::CameraFault => "camera-fault",
            TriggerKind::Signal => "signal",
            TriggerKind::Command => "command",
        }
    }
}

/// A trigger as the inference thread saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    pub kind: TriggerKind,
    pub stage: Option<Stage>,
    pub camera: Option<usize>,
    pub sequence: Option<u64>,
    /// CLOCK_MONOTONIC ns.
    pub at_ns: u64,
}

/// A trigger from outside the frame path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum External {
    /// SIGUSR1.
    Signal,
    /// The control socket.
    Command,
}

impl External {
    fn to_u8(self) -> u8 {
        match self {
            External::Signal => 1,
            External::Command => 2,
        }
    }

    fn from_u8(v: u8) -> External {
        if v == 2 {
            External::Command
        } else {
            External::Signal
        }
    }
}

/// What became of a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recording `n` will be written.
    Accepted(u64),
    /// Recording `n`, whose window was still filling, takes this trigger too.
    Joined(u64),
    /// The writer was busy with the previous recording: counted as dropped.
    Dropped,
    /// This recorder captures every frame; it takes no triggers.
    Off,
}

/// One processed frame as the inference thread hands it to the recorder (everything borrowed).
#[derive(Debug, Clone, Copy)]
pub struct FrameRecord<'a> {
    pub camera: usize,
    pub meta: &'a FrameMeta,
    /// The frame's bytes (`meta.bytes` of them).
    pub data: &'a [u8],
    /// When publishing began.
    pub publish_ns: u64,
    /// Every stage's duration, publishing and end to end included.
    pub stage_ns: [u64; STAGE_COUNT],
    /// Result flags and the late bits of every stage.
    pub flags: u32,
    pub image_embeds: &'a [f32],
    pub latents: &'a [f32],
    pub scores: &'a [f32],
    pub prompts: &'a Arc<PromptSet>,
}

/// Triggers a recording from outside the frame path (the SIGUSR1 handler, the control socket).
#[derive(Clone)]
pub struct TriggerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TriggerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerHandle").finish_non_exhaustive()
    }
}

impl TriggerHandle {
    /// Asks for a recording; the inference thread takes the request with its next frame (or within a few
    /// ms when idle). Returns the request's number for [`TriggerHandle::outcome`]. Never blocks.
    pub fn request(&self, kind: External) -> u64 {
        self.shared.request_kind.store(kind.to_u8(), Relaxed);
        self.shared.request_seq.fetch_add(1, Release) + 1
    }

    /// What became of request `seq` (or a later one), waiting up to `timeout`.
    pub fn outcome(&self, seq: u64, timeout: Duration) -> Option<Outcome> {
        let until = Instant::now() + timeout;
        loop {
            if self.shared.handled_seq.load(Acquire) >= seq {
                return Some(tap::decode_outcome(
                    self.shared.handled_outcome.load(Relaxed),
                ));
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Where recording `number` was written (or why it was not), waiting up to `timeout`.
    pub fn written(&self, number: u64, timeout: Duration) -> Option<Result<PathBuf, String>> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(done) = self.shared.finished.lock() {
                if let Some(f) = done.iter().find(|f| f.number == number) {
                    return Some(f.result.clone());
                }
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Why the recorder could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Capture(#[from] WriteError),
    #[error("failed to spawn thread {name}: {source}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
}

/// What the runtime tells the recorder about the run.
#[derive(Debug, Clone)]
pub struct RecorderSpec {
    pub settings: RecorderSettings,
    pub cameras: Vec<RingCamera>,
    pub shape: ResultsShape,
    pub model: ModelIdentity,
}

/// The recorder's threads and rings (the runtime holds it; the inference thread holds its [`RecorderTap`]).
pub struct Recorder {
    shared: Arc<Shared>,
    settings: RecorderSettings,
    ctx: Option<WriterContext>,
    writer: Option<JoinHandle<Option<Result<PathBuf, String>>>>,
    control: Option<ControlServer>,
    capture_result: Option<Result<PathBuf, String>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Allocates every ring (see the module documentation); nothing runs until [`Recorder::start`].
    pub fn new(spec: RecorderSpec, stats: Arc<Stats>) -> (Recorder, RecorderTap) {
        let s = &spec.settings;
        let rings: Box<[Ring]> = spec
            .cameras
            .iter()
            .map(|c| Ring::new(c.slots, c.frame_bytes(), &spec.shape))
            .collect();
        let shared = Arc::new(Shared::new(rings));
        let total: usize = spec.cameras.iter().map(|c| c.slots).sum();
        let faults = (0..spec.cameras.len())
            .map(|i| {
                let c = &stats.camera(i).counters;
                c.stalls.load(Relaxed) + c.disconnects.load(Relaxed) + c.reconnects.load(Relaxed)
            })
            .collect();
        let tap = RecorderTap {
            shared: Arc::clone(&shared),
            stats: Arc::clone(&stats),
            capture: s.capture.is_some(),
            after_frames: (s.after * total as f64).round() as u64,
            on_late: s.on_late_mask(),
            on_camera_fault: s.on_camera_fault,
            formats: spec
                .cameras
                .iter()
                .map(|c| (c.format, c.width, c.height))
                .collect(),
            pending: None,
            next_number: 0,
            request_seen: 0,
            faults_seen: faults,
        };
        let ctx = WriterContext {
            stats,
            cameras: spec.cameras,
            shape: spec.shape,
            model: spec.model,
        };
        (
            Recorder {
                shared,
                settings: spec.settings,
                ctx: Some(ctx),
                writer: None,
                control: None,
                capture_result: None,
            },
            tap,
        )
    }

    /// Starts the writer thread and, for the flight recorder, the control socket. A capture creates its
    /// files here (an error stops the start). The flight recorder's directory is created here; when it
    /// cannot be, that is logged and every recording counts as an error until it can.
    pub fn start(&mut self) -> Result<(), RecorderError> {
        let Some(ctx) = self.ctx.take() else {
            return Ok(());
        };
        let shared = Arc::clone(&self.shared);
        let spawn = |f: Box<dyn FnOnce() -> Option<Result<PathBuf, String>> + Send>| {
            std::thread::Builder::new()
                .name("ocellus-rec".into())
                .spawn(f)
                .map_err(|source| RecorderError::Spawn {
                    name: "ocellus-rec",
                    source,
                })
        };
        let handle = if let Some(out) = self.settings.capture.clone() {
            let capture = Capture::create(&out, &ctx)?;
            spawn(Box::new(move || {
                Some(writer::capture_loop(shared, ctx, capture))
            }))?
        } else {
            let (dir, quota) = (self.settings.dir.clone(), self.settings.quota_bytes);
            if let Err(e) = std::fs::create_dir_all(&dir) {
                tracing::error!(dir = %dir.display(), error = %e, "recorder.dir cannot be created: recordings will fail (and be counted as errors) until it can");
            }
            match ControlServer::start(&self.settings.socket, self.trigger()) {
                Ok(server) => self.control = Some(server),
                Err(e @ ControlError::InUse { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::error!(error = %e, "no control socket: ocellus record --trigger will not reach this service (SIGUSR1 still triggers)")
                }
            }
            spawn(Box::new(move || {
                writer::window_loop(shared, ctx, dir, quota);
                None
            }))?
        };
        let _ = self.shared.writer.set(handle.thread().clone());
        self.writer = Some(handle);
        Ok(())
    }

    /// The handle the SIGUSR1 handler and the control socket trigger with.
    pub fn trigger(&self) -> TriggerHandle {
        TriggerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The control socket, when it is served.
    pub fn socket(&self) -> Option<&Path> {
        self.control.as_ref().map(ControlServer::path)
    }

    /// Stops the recorder after the pipeline stopped: the writer finishes the window or capture in hand
    /// (waiting at most `timeout`; a writer stuck on the disk is left behind with a warning).
    pub fn stop(&mut self, timeout: Duration) {
        if let Some(c) = self.control.as_mut() {
            c.stop();
        }
        self.shared.stop.store(true, SeqCst);
        self.shared.wake_writer();
        if let Some(handle) = self.writer.take() {
            let until = Instant::now() + timeout;
            while !handle.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if handle.is_finished() {
                match handle.join() {
                    Ok(result) => self.capture_result = result,
                    Err(_) => tracing::error!("the recorder's writer thread panicked"),
                }
            } else {
                tracing::warn!(
                    timeout_s = timeout.as_secs(),
                    "the recorder's writer did not finish in time (disk stalled?); leaving it behind"
                );
            }
        }
    }

    /// A capture's result once stopped: its directory, or why it failed.
    pub fn capture_result(&self) -> Option<&Result<PathBuf, String>> {
        self.capture_result.as_ref()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}
