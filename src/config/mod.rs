//! The ocellus configuration: one TOML file, read once at start-up and validated into typed values before
//! anything runs.
//!
//! Keys are kebab-case; unknown keys and invalid values are errors that name the file and the key
//! (`config /etc/ocellus/ocellus.toml: camera[0].pixel-format: unknown format 'yuv2' (expected one of ...)`).
//! Without a file, the embedded default (`src/default.toml`: the synthetic camera and the bundled demo model)
//! is used. `bsp/ocellus.example.toml` documents every key.
//!
//! The configuration sits above the components: it fills in their own settings types
//! ([`CameraSettings`], [`PromptSettings`], [`RealtimeSettings`], [`MemorySettings`], [`TestHooks`],
//! [`OnnxruntimeSettings`], [`RecorderSettings`]) and no
//! component imports it. Parsing reads no other file: that a replay path, the prompts file or the model
//! bundle exists and fits is checked when the runtime is built (`runtime`), and those errors name the key.
//!
//! Parts: `raw` (the file's shape, serde), `defaults` (values of keys a file leaves out, and limits),
//! `validate` (raw to typed, every error naming its key).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::alloc::MemorySettings;
use crate::infer::{OnnxruntimeSettings, VariantChoice};
use crate::manifest::EngineKind;
use crate::pipeline::TestHooks;
use crate::prompts::PromptSettings;
use crate::recorder::RecorderSettings;
use crate::rt::RealtimeSettings;
use crate::source::CameraSettings;

pub mod defaults;
mod raw;
mod validate;

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("../default.toml");

/// The bundled demo model's manifest, relative to the config file's directory (or, for the embedded default,
/// to the current directory, then to the executable's `../share/ocellus`).
pub const DEFAULT_MANIFEST: &str = "models/demo/manifest.toml";

/// Where a configuration came from; error messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The embedded default (`src/default.toml`).
    Embedded,
    /// A file given by the user.
    File(PathBuf),
}

impl Origin {
    /// Directory that relative paths in the config are resolved against: the file's directory, or the
    /// current directory for the embedded default.
    pub fn base_dir(&self) -> PathBuf {
        match self {
            Origin::Embedded => PathBuf::from("."),
            Origin::File(path) => match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                _ => PathBuf::from("."),
            },
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Embedded => f.write_str("(built-in default)"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: cannot read it: {source} (check the path given with --config)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}{}: not valid TOML: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Syntax {
        origin: Origin,
        line: Option<usize>,
        message: String,
    },
    #[error("config {origin}: {key}: {message}")]
    Invalid {
        origin: Origin,
        /// Path of the offending key, e.g. `camera[0].pixel-format`.
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub cameras: Vec<CameraSettings>,
    pub model: ModelConfig,
    pub prompts: PromptSettings,
    pub budgets: Budgets,
    pub shm: ShmConfig,
    pub logging: LoggingConfig,
    /// `[memory]`: the frame-path memory region and the memory lock.
    pub memory: MemorySettings,
    /// `[realtime]`: CPU affinity and SCHED_FIFO priority of the capture and inference threads.
    pub realtime: RealtimeSettings,
    /// `[testing]`: test aids (an artificially slow or stalled stage); off unless the section sets them.
    pub testing: TestHooks,
    /// `[onnxruntime]`: the library and execution providers of `model.engine = "onnxruntime"`.
    pub onnxruntime: OnnxruntimeSettings,
    /// `[recorder]`: the flight recorder (off by default).
    pub recorder: RecorderSettings,
    pub origin: Origin,
}

/// Where `model.threads` came from: the file, or the default (one per CPU in `realtime.inference-cpus`, else
/// one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadsOrigin {
    Configured,
    InferenceCpus,
    Default,
}

impl ThreadsOrigin {
    /// Why the engine runs this many threads, for the start-up line.
    pub fn reason(self) -> &'static str {
        match self {
            ThreadsOrigin::Configured => "model.threads",
            ThreadsOrigin::InferenceCpus => "one per CPU in realtime.inference-cpus",
            ThreadsOrigin::Default => {
                "the default when realtime.inference-cpus is not set (set it, or model.threads, to use more CPUs)"
            }
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// The bundle's manifest.toml, resolved (see [`DEFAULT_MANIFEST`]).
    pub manifest: PathBuf,
    /// `engine`: which inference engine runs the models.
    pub engine: EngineKind,
    /// `variant`: `auto` (the default: the fastest the bundle has for this CPU) or a fixed one.
    pub variant: VariantChoice,
    /// Threads the engine may use for inference.
    pub threads: usize,
    /// Where `threads` came from.
    pub threads_origin: ThreadsOrigin,
    /// `cpu-isa`: edits the instruction-set features tract uses (tract's `TRACT_CPU_ISA` syntax), e.g.
    /// `"-avx512vnni,-avxvnni"` to run as an AVX2-only machine would.
    pub cpu_isa: Option<String>,
    /// `measurements`: the file the model's measured times are remembered in (`None`: the runtime's default
    /// place, see `runtime::calibrate`).
    pub measurements: Option<PathBuf>,
}

/// `[budgets]`: the memory budget and per-stage deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    pub memory_mib: u64,
    /// Capture timestamp to dequeue by the inference thread (`dequeue-ms`). Each deadline left out of the
    /// file is `None`: the runtime derives it from the model's times measured on this machine at start-up
    /// (`runtime::calibrate`), so defaults fit the model instead of the demo.
    pub dequeue: Option<Duration>,
    pub prepare: Option<Duration>,
    pub encoder: Option<Duration>,
    pub resampler: Option<Duration>,
    pub publish: Option<Duration>,
    /// Capture timestamp to published result.
    pub end_to_end: Option<Duration>,
}

/// `[shm]`: the shared-memory segment results are published in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmConfig {
    /// POSIX shared-memory name without the leading `/`.
    pub name: String,
    /// Permission bits of the segment (e.g. 0o640).
    pub mode: u32,
    /// Group to own the segment (so a control-loop user in it can read), if any.
    pub group: Option<String>,
    /// Element type of the latents in each sample (f16 halves the bytes a reader copies).
    pub latents: crate::shm::LatentsDtype,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
    /// journald's native protocol: each event's fields are journal fields (`CAMERA=0`, `STAGE=encoder`),
    /// its level the entry's `PRIORITY`.
    Journald,
    /// `Journald` when stderr is connected to the journal (systemd's `JOURNAL_STREAM` names it), else `Text`.
    Auto,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub level: tracing::Level,
    pub format: LogFormat,
}

/// The message of a configuration without cameras, where cameras are needed.
pub const NO_CAMERA: &str =
    "no [[camera]] table: add at least one (source = \"synthetic\" runs the demo scenes)";

impl Config {
    /// `Ok` if at least one camera is configured, else the error naming the key, for what runs cameras.
    pub fn require_cameras(&self) -> Result<(), ConfigError> {
        if self.cameras.is_empty() {
            return Err(ConfigError::Invalid {
                origin: self.origin.clone(),
                key: "camera".into(),
                message: NO_CAMERA.into(),
            });
        }
        Ok(())
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, Origin::File(path.to_owned()))
    }

    /// The embedded default: the synthetic camera and the bundled demo model.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_TOML, Origin::Embedded)
    }

    /// `load(path)` when a path is given, else [`Config::embedded`].
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(path) => Config::load(path),
            None => Config::embedded(),
        }
    }

    /// Parses and validates `text`; relative paths are resolved against `origin`'s directory.
    pub fn parse(text: &str, origin: Origin) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
            origin: origin.clone(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        })?;
        let raw: raw::RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." || p.is_empty() => "(top level)".to_owned(),
                p => p,
            };
            let inner = e.inner();
            let line = inner
                .span()
                .map(|s| format!(" (line {})", line_of(text, s.start)))
                .unwrap_or_default();
            ConfigError::Invalid {
                origin: origin.clone(),
                key,
                message: format!("{}{line}", plain_types(inner.message().trim())),
            }
        })?;
        validate::Validator { origin: &origin }.config(raw)
    }
}

/// serde names Rust types ("expected u32"); say what to write instead.
fn plain_types(message: &str) -> String {
    let mut m = message.to_owned();
    for (rust, plain) in [
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        m = m.replace(rust, plain);
    }
    m
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
