//! The runtime assembled from a [`Config`]: [`Runtime::build`], then [`Runtime::start`], [`Runtime::wait`],
//! [`Runtime::stop`]. `ocellus run`, `ocellus bench`, `ocellus check` ([`check`]) and the tests all build
//! it here, through the same phases (`build.rs`), so what runs is what was checked.
//!
//! Start-up, in order (docs/architecture.md draws it):
//! 1. the model bundle's manifest is read;
//! 2. the cameras are probed (a replay's files exist and fit the configured format and size);
//! 3. the memory plan is estimated from the configuration and the manifest and checked against
//!    `budgets.memory-mib`, before any model is loaded;
//! 4. the vision encoder and resampler are verified, loaded and planned;
//! 5. the prompts are read (`prompts.labels`, then `prompts.file`), checked and embedded by the text encoder;
//! 6. the plan is made again with the planned models' figures and checked;
//! 7. the sources are opened, the pipeline allocated, the shared-memory segment created;
//! 8. the frame-path region is reserved, the C heap kept and memory locked ([`memory::take`]).
//!
//! Nothing runs until [`Runtime::start`]. Every error is a [`BuildError`] whose [`ErrorKind`] gives the exit
//! code: a configuration or bundle a person must fix (2), or a failure of the system (1).

mod build;
pub mod calibrate;
mod check;
pub mod memory;
mod replay;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::budget::MemoryPlan;
use crate::config::Config;
use crate::pipeline::{Pipeline, PipelineError};
use crate::prompts::{PromptSet, PromptWatcher};
use crate::recorder::{Recorder, RecorderError};
use crate::sink::Sink;
use crate::stats::Stats;

pub use build::{probe_camera, prompt_source, select_engine, PromptSource, Selected};
pub use check::{check, check_with, CheckReport};
pub use memory::Taken;
pub use replay::{replay, replay_config, ReplayError};

/// What kind of failure a [`BuildError`] is; the `ocellus` binary's exit code comes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration or the model bundle cannot be used as it is (exit code 2).
    Config,
    /// The system failed: a thread could not start, a file could not be written (exit code 1).
    Runtime,
}

impl ErrorKind {
    /// The process exit code of this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Config => 2,
            ErrorKind::Runtime => 1,
        }
    }
}

/// Why the runtime could not be built or started: what to fix, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    pub kind: ErrorKind,
    pub message: String,
}

impl BuildError {
    pub fn config(message: impl std::fmt::Display) -> Self {
        BuildError {
            kind: ErrorKind::Config,
            message: message.to_string(),
        }
    }

    pub fn runtime(message: impl std::fmt::Display) -> Self {
        BuildError {
            kind: ErrorKind::Runtime,
            message: message.to_string(),
        }
    }
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BuildError {}

/// Makes a sink once the run's statistics exist (a sink may read them, as the benchmark's window does).
pub type SinkFactory = Box<dyn FnOnce(Arc<Stats>) -> Box<dyn Sink> + Send>;

/// Where results are published besides the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmTarget {
    /// The config's `shm.name`.
    Config,
    /// Another segment name (`ocellus run --shm NAME`); the same naming rule applies.
    Named(String),
    /// No shared memory (`--no-shm`).
    Off,
}

/// How to build the runtime beyond the configuration.
pub struct RuntimeOptions {
    /// Stop after this many published frames (all cameras together).
    pub max_frames: Option<u64>,
    /// Where to publish.
    pub shm: ShmTarget,
    /// More sinks, after the log and shared-memory sinks.
    pub extra_sinks: Vec<SinkFactory>,
    /// Reserve the frame-path region and lock memory ([`memory::take`]); a program that builds several
    /// runtimes in one process (the tests) reserves once.
    pub take_memory: bool,
    /// Measure the model again even if the measurements file remembers it ([`calibrate`]).
    pub remeasure: bool,
    /// Every frame is processed: a capture thread waits for the inference thread instead of displacing its
    /// previous frame (`ocellus replay`; never for live cameras).
    pub lossless: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            max_frames: None,
            shm: ShmTarget::Config,
            extra_sinks: Vec::new(),
            take_memory: true,
            remeasure: false,
            lossless: false,
        }
    }
}

impl std::fmt::Debug for RuntimeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeOptions")
            .field("max_frames", &self.max_frames)
            .field("shm", &self.shm)
            .field("extra_sinks", &self.extra_sinks.len())
            .field("take_memory", &self.take_memory)
            .field("lossless", &self.lossless)
            .finish()
    }
}

/// The current prompt set and, when the prompts come from a file, the watcher that updates it.
pub(crate) struct Prompts {
    pub(crate) current: Arc<ArcSwap<PromptSet>>,
    pub(crate) watcher: Option<PromptWatcher>,
}

/// What model the runtime runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The manifest's name.
    pub name: String,
    pub engine: crate::manifest::EngineKind,
    pub variant: crate::infer::RunVariant,
    /// Why this variant (`model.variant`, or what `auto` saw on this CPU).
    pub variant_reason: String,
    pub threads: usize,
    /// E: the embedding width.
    pub embed_dim: usize,
    /// What a recording says about it (files' sha256, CPU features).
    pub identity: crate::recorder::ModelIdentity,
}

/// The assembled runtime. See the module documentation.
pub struct Runtime {
    pipeline: Pipeline,
    prompts: Prompts,
    plan: MemoryPlan,
    taken: Option<Taken>,
    model: ModelInfo,
    segment: Option<String>,
    recorder: Option<Recorder>,
}

/// How long [`Runtime::stop`] lets the recorder finish the recording in hand.
const RECORDER_STOP_TIMEOUT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("model", &self.model)
            .field("segment", &self.segment)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Builds everything (see the module documentation); nothing runs yet.
    pub fn build(config: &Config, options: RuntimeOptions) -> Result<Runtime, BuildError> {
        build::build(config, options)
    }

    /// Starts the recorder (when configured), then the capture and inference threads.
    pub fn start(&mut self) -> Result<(), BuildError> {
        if let Some(r) = self.recorder.as_mut() {
            r.start().map_err(|e| match e {
                RecorderError::Spawn { .. } => {
                    BuildError::runtime(format!("cannot start the recorder: {e}"))
                }
                e => BuildError::config(format!("cannot start the recorder: {e}")),
            })?;
        }
        let started = self.pipeline.start().map_err(|e| match e {
            PipelineError::Realtime(_) => {
                BuildError::config(format!("cannot start the pipeline: {e}"))
            }
            e => BuildError::runtime(format!("cannot start the pipeline: {e}")),
        });
        if started.is_err() {
            if let Some(r) = self.recorder.as_mut() {
                r.stop(RECORDER_STOP_TIMEOUT);
            }
        }
        started
    }

    /// Waits until the pipeline stops by itself (frame limit, every replay ended) or `timeout` passes;
    /// returns whether it stopped. Wakes early when `interrupt` becomes true.
    pub fn wait(&self, timeout: Duration, interrupt: &AtomicBool) -> bool {
        self.pipeline.wait(timeout, interrupt)
    }

    /// Whether the threads are running.
    pub fn is_running(&self) -> bool {
        self.pipeline.is_running()
    }

    /// Stops the threads and the prompt watcher; every sink's `stop` runs; the recorder writes the
    /// recording in hand (a flight recording whose window was filling, or the end of a capture). Idempotent.
    pub fn stop(&mut self) {
        self.pipeline.stop();
        if let Some(w) = self.prompts.watcher.as_mut() {
            w.stop();
        }
        if let Some(r) = self.recorder.as_mut() {
            r.stop(RECORDER_STOP_TIMEOUT);
        }
    }

    /// The flight recorder or capture, when the configuration has one.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recorder.as_ref()
    }

    /// The run's statistics (live while running).
    pub fn stats(&self) -> &Arc<Stats> {
        self.pipeline.stats()
    }

    /// The memory plan the runtime was built to (planned models' figures).
    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// What [`memory::take`] did, when the options asked for it.
    pub fn taken(&self) -> Option<&Taken> {
        self.taken.as_ref()
    }

    /// The model it runs.
    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// The shared-memory segment it publishes into, if any.
    pub fn segment(&self) -> Option<&str> {
        self.segment.as_deref()
    }

    /// The current prompt set.
    pub fn prompts(&self) -> Arc<PromptSet> {
        self.prompts.current.load_full()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}
