//! The ocellus configuration: one TOML file, read once at start-up and validated into typed values before
//! anything runs.
//!
//! Keys are kebab-case; unknown keys and invalid values are errors that name the file and the key
//! (`config /etc/ocellus/ocellus.toml: camera[0].pixel-format: unknown format 'yuv2' (expected one of ...)`).
//! Without a file, the embedded default (`src/default.toml`: the synthetic camera and the bundled demo model)
//! is used. `bsp/ocellus.example.toml` documents every key.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::frame::PixelFormat;
use crate::manifest::Variant;

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

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
    pub cameras: Vec<CameraConfig>,
    pub model: ModelConfig,
    pub prompts: PromptsConfig,
    pub budgets: Budgets,
    pub shm: ShmConfig,
    pub logging: LoggingConfig,
    /// `[memory]`: the frame-path memory region and the memory lock.
    pub memory: crate::budget::MemoryConfig,
    /// `[realtime]`: CPU affinity and SCHED_FIFO priority of the capture and inference threads.
    pub realtime: crate::rt::RealtimeSettings,
    /// `[testing]`: test aids (an artificially slow or stalled stage); off unless the section sets them.
    pub testing: crate::pipeline::TestHooks,
    pub origin: Origin,
}

/// Which kind of source a camera is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    Synthetic,
    Replay,
    V4l2,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Synthetic => "synthetic",
            SourceKind::Replay => "replay",
            SourceKind::V4l2 => "v4l2",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The source of one camera with its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// The demo scenes (docs/scene-spec.md), a new scene every `hold_frames` frames, drawn from `seed`.
    Synthetic { seed: u64, hold_frames: u32 },
    /// A directory of PNG/JPEG images or a recorded raw frame file (see `source::replay`), replayed at `fps`,
    /// from the start again after the last frame when `looping`.
    Replay { path: PathBuf, looping: bool },
    /// A V4L2 device (`/dev/video0` or a `/dev/v4l/by-id/...` name) streaming through `buffers` mmap buffers;
    /// no frame within `stall` means the camera stalled (it is flagged and reopened).
    V4l2 {
        device: PathBuf,
        buffers: u32,
        stall: StallTimeout,
    },
}

/// When a V4L2 camera counts as stalled: after this many frame periods without a frame, or after a fixed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallTimeout {
    /// `stall-periods`: a multiple of the negotiated frame period.
    Periods(u32),
    /// `stall-timeout-ms`: a fixed time.
    Fixed(Duration),
}

/// One `[[camera]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraConfig {
    /// Unique name, used in logs and the status line.
    pub name: String,
    pub source: SourceConfig,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Frames per second; 0 delivers as fast as possible (synthetic, replay) or the driver's default (V4L2).
    pub fps: u32,
    /// Frame buffers allocated for this camera at start-up.
    pub pool_size: usize,
}

impl CameraConfig {
    pub fn kind(&self) -> SourceKind {
        match self.source {
            SourceConfig::Synthetic { .. } => SourceKind::Synthetic,
            SourceConfig::Replay { .. } => SourceKind::Replay,
            SourceConfig::V4l2 { .. } => SourceKind::V4l2,
        }
    }

    /// Bytes of each pooled buffer: the largest frame this camera can deliver.
    pub fn max_frame_bytes(&self) -> usize {
        self.format.max_frame_bytes(self.width, self.height)
    }

    /// Time between frames, or `None` for `fps = 0`.
    pub fn frame_period(&self) -> Option<Duration> {
        (self.fps > 0).then(|| Duration::from_nanos(1_000_000_000 / self.fps as u64))
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// The bundle's manifest.toml, resolved (see [`DEFAULT_MANIFEST`]).
    pub manifest: PathBuf,
    pub variant: Variant,
    /// Threads tract may use for inference.
    pub threads: usize,
}

/// `[prompts]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptsConfig {
    /// Prompts given in the config (the 16 demo prompts when neither `labels` nor `file` is given).
    pub labels: Vec<String>,
    /// A file of prompts, one per line (blank lines and `#` comments skipped), read at start-up after the
    /// labels and watched: when it changes, the prompt set is re-embedded without a restart.
    pub file: Option<PathBuf>,
    /// Most prompts a set may hold (the scores buffer is sized for it at start-up).
    pub max: usize,
}

impl PromptsConfig {
    /// The prompt set now: `labels`, then the lines of `file`. Errors name the key and `origin`.
    pub fn load(&self, origin: &Origin) -> Result<Vec<String>, ConfigError> {
        let mut prompts = self.labels.clone();
        if let Some(file) = &self.file {
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Invalid {
                origin: origin.clone(),
                key: "prompts.file".into(),
                message: format!(
                    "cannot read {}: {e} (create it with one prompt per line, or remove the key)",
                    file.display()
                ),
            })?;
            prompts.extend(parse_prompt_lines(&text));
        }
        check_prompts(&prompts, self.max).map_err(|(key, message)| ConfigError::Invalid {
            origin: origin.clone(),
            key: key.into(),
            message,
        })?;
        Ok(prompts)
    }
}

/// The prompts of a prompts file: one per line, trimmed; blank lines and lines starting with `#` skipped.
pub fn parse_prompt_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Checks a prompt set against the rules (not empty, at most `max`, no duplicates); the error names the key.
pub fn check_prompts(prompts: &[String], max: usize) -> Result<(), (&'static str, String)> {
    if prompts.is_empty() {
        return Err((
            "prompts",
            "the prompt list is empty: give at least one prompt in prompts.labels or prompts.file"
                .into(),
        ));
    }
    if prompts.len() > max {
        return Err((
            "prompts.max",
            format!(
                "{} prompts but max = {max}: remove prompts or raise prompts.max",
                prompts.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for p in prompts {
        if p.trim().is_empty() {
            return Err(("prompts.labels", "a prompt is blank: remove it".into()));
        }
        if !seen.insert(p.as_str()) {
            return Err((
                "prompts",
                format!("prompt '{p}' is given twice: remove the duplicate"),
            ));
        }
    }
    Ok(())
}

/// `[budgets]`: the memory budget and per-stage deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    pub memory_mib: u64,
    /// Capture timestamp to dequeue by the inference thread.
    pub capture: Duration,
    pub prepare: Duration,
    pub encoder: Duration,
    pub resampler: Duration,
    pub publish: Duration,
    /// Capture timestamp to published result.
    pub end_to_end: Duration,
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
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub level: tracing::Level,
    pub format: LogFormat,
}

// ---- the file's shape (serde), validated below into the types above ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    camera: Option<Vec<RawCamera>>,
    #[serde(default)]
    model: RawModel,
    #[serde(default)]
    prompts: RawPrompts,
    #[serde(default)]
    budgets: RawBudgets,
    #[serde(default)]
    shm: RawShm,
    #[serde(default)]
    logging: RawLogging,
    #[serde(default)]
    memory: RawMemory,
    #[serde(default)]
    realtime: RawRealtime,
    #[serde(default)]
    testing: RawTesting,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCamera {
    name: Option<String>,
    source: Option<String>,
    device: Option<String>,
    path: Option<String>,
    pixel_format: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    fps: Option<u32>,
    pool_size: Option<usize>,
    hold_frames: Option<u32>,
    seed: Option<u64>,
    #[serde(rename = "loop")]
    looping: Option<bool>,
    buffers: Option<u32>,
    stall_periods: Option<u32>,
    stall_timeout_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawModel {
    manifest: Option<String>,
    variant: Option<String>,
    threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPrompts {
    labels: Option<Vec<String>>,
    file: Option<String>,
    max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBudgets {
    memory_mib: Option<u64>,
    capture_ms: Option<f64>,
    prepare_ms: Option<f64>,
    encoder_ms: Option<f64>,
    resampler_ms: Option<f64>,
    publish_ms: Option<f64>,
    end_to_end_ms: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawShm {
    name: Option<String>,
    mode: Option<String>,
    group: Option<String>,
    latents: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLogging {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMemory {
    lock: Option<bool>,
    lock_required: Option<bool>,
    arena_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRealtime {
    capture_cpus: Option<Vec<usize>>,
    inference_cpus: Option<Vec<usize>>,
    capture_priority: Option<i64>,
    inference_priority: Option<i64>,
    strict: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTesting {
    delay_stage: Option<String>,
    delay_ms: Option<f64>,
    stall_after_frames: Option<u64>,
}

/// Defaults of keys a file leaves out.
pub mod defaults {
    pub const PIXEL_FORMAT: &str = "yuyv";
    pub const WIDTH: u32 = 640;
    pub const HEIGHT: u32 = 480;
    pub const FPS: u32 = 30;
    pub const POOL_SIZE: usize = 4;
    pub const HOLD_FRAMES: u32 = 30;
    pub const SEED: u64 = 1;
    pub const V4L2_BUFFERS: u32 = 4;
    pub const STALL_PERIODS: u32 = 10;
    pub const THREADS: usize = 1;
    pub const PROMPTS_MAX: usize = 64;
    pub const MEMORY_MIB: u64 = 512;
    pub const CAPTURE_MS: f64 = 50.0;
    pub const PREPARE_MS: f64 = 5.0;
    pub const ENCODER_MS: f64 = 50.0;
    pub const RESAMPLER_MS: f64 = 20.0;
    pub const PUBLISH_MS: f64 = 2.0;
    pub const END_TO_END_MS: f64 = 100.0;
    pub const SHM_NAME: &str = "ocellus";
    pub const SHM_MODE: u32 = 0o640;
}

/// Limits on values (checked at load).
const MAX_POOL_SIZE: usize = 64;
const MAX_PROMPTS: usize = 1024;
const MAX_THREADS: usize = 256;
const MAX_FPS: u32 = 1000;
const MAX_DEADLINE_MS: f64 = 60_000.0;
const MAX_ARENA_MIB: u64 = 1 << 20;
const MIN_V4L2_BUFFERS: u32 = 2;
const MAX_V4L2_BUFFERS: u32 = 32;
const MAX_STALL_PERIODS: u32 = 1000;
/// The shortest stall timeout (below it a scheduling hiccup would look like a stall).
const MIN_STALL_MS: f64 = 100.0;

impl Config {
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
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
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
        Validator { origin: &origin }.config(raw)
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

struct Validator<'a> {
    origin: &'a Origin,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.origin.base_dir().join(p)
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let raw_cameras = raw.camera.unwrap_or_default();
        if raw_cameras.is_empty() {
            return Err(self.err(
                "camera",
                "no [[camera]] table: add at least one (source = \"synthetic\" runs the demo scenes)",
            ));
        }
        let mut cameras = Vec::with_capacity(raw_cameras.len());
        let mut names = HashSet::new();
        for (i, rc) in raw_cameras.into_iter().enumerate() {
            let camera = self.camera(i, rc)?;
            if !names.insert(camera.name.clone()) {
                return Err(self.err(
                    format!("camera[{i}].name"),
                    format!(
                        "camera name '{}' is used twice: give each camera its own name",
                        camera.name
                    ),
                ));
            }
            cameras.push(camera);
        }
        let config = Config {
            cameras,
            model: self.model(raw.model)?,
            prompts: self.prompts(raw.prompts)?,
            budgets: self.budgets(raw.budgets)?,
            shm: self.shm(raw.shm)?,
            logging: self.logging(raw.logging)?,
            memory: self.memory(raw.memory)?,
            realtime: self.realtime(raw.realtime)?,
            testing: self.testing(raw.testing)?,
            origin: self.origin.clone(),
        };
        config.prompts.load(self.origin)?;
        Ok(config)
    }

    fn camera(&self, i: usize, rc: RawCamera) -> Result<CameraConfig, ConfigError> {
        let key = |k: &str| format!("camera[{i}].{k}");
        let name = rc.name.unwrap_or_else(|| format!("cam{i}"));
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(self.err(
                key("name"),
                "a camera name must be non-blank printable text",
            ));
        }
        let kind = match rc.source.as_deref().unwrap_or("synthetic") {
            "synthetic" => SourceKind::Synthetic,
            "replay" => SourceKind::Replay,
            "v4l2" => SourceKind::V4l2,
            other => {
                return Err(self.err(
                    key("source"),
                    format!("unknown source '{other}' (expected one of synthetic, replay, v4l2)"),
                ))
            }
        };
        let format_name = rc.pixel_format.as_deref().unwrap_or(defaults::PIXEL_FORMAT);
        let format = PixelFormat::from_name(format_name).ok_or_else(|| {
            self.err(
                key("pixel-format"),
                format!(
                    "unknown format '{format_name}' (expected one of {})",
                    PixelFormat::names()
                ),
            )
        })?;
        let width = rc.width.unwrap_or(defaults::WIDTH);
        let height = rc.height.unwrap_or(defaults::HEIGHT);
        if let Err(why) = format.check_size(width, height) {
            let k = if width == 0 || width > 16_384 {
                "width"
            } else if height == 0 || height > 16_384 {
                "height"
            } else if width % 2 != 0 {
                "width"
            } else {
                "height"
            };
            return Err(self.err(key(k), format!("{width}x{height} {format}: {why}")));
        }
        let fps = rc.fps.unwrap_or(defaults::FPS);
        if fps > MAX_FPS {
            return Err(self.err(
                key("fps"),
                format!("{fps} is above {MAX_FPS}; use 0 for as fast as possible"),
            ));
        }
        let pool_size = rc.pool_size.unwrap_or(defaults::POOL_SIZE);
        if !(3..=MAX_POOL_SIZE).contains(&pool_size) {
            return Err(self.err(
                key("pool-size"),
                format!(
                    "{pool_size} is outside 3..={MAX_POOL_SIZE} (one buffer being captured, one waiting, one being prepared)"
                ),
            ));
        }
        let only = |k: &str, present: bool, for_kind: SourceKind| -> Result<(), ConfigError> {
            if present && kind != for_kind {
                Err(self.err(
                    key(k),
                    format!("only applies to source = \"{for_kind}\", this camera is \"{kind}\": remove the key"),
                ))
            } else {
                Ok(())
            }
        };
        only(
            "hold-frames",
            rc.hold_frames.is_some(),
            SourceKind::Synthetic,
        )?;
        only("seed", rc.seed.is_some(), SourceKind::Synthetic)?;
        only("path", rc.path.is_some(), SourceKind::Replay)?;
        only("loop", rc.looping.is_some(), SourceKind::Replay)?;
        only("device", rc.device.is_some(), SourceKind::V4l2)?;
        only("buffers", rc.buffers.is_some(), SourceKind::V4l2)?;
        only(
            "stall-periods",
            rc.stall_periods.is_some(),
            SourceKind::V4l2,
        )?;
        only(
            "stall-timeout-ms",
            rc.stall_timeout_ms.is_some(),
            SourceKind::V4l2,
        )?;
        let source = match kind {
            SourceKind::Synthetic => {
                let hold_frames = rc.hold_frames.unwrap_or(defaults::HOLD_FRAMES);
                if hold_frames == 0 {
                    return Err(self.err(key("hold-frames"), "must be at least 1"));
                }
                SourceConfig::Synthetic {
                    seed: rc.seed.unwrap_or(defaults::SEED),
                    hold_frames,
                }
            }
            SourceKind::Replay => {
                let path = rc.path.ok_or_else(|| {
                    self.err(key("path"), "a replay camera needs path = a directory of PNG/JPEG images or a recorded .raw file")
                })?;
                let path = self.resolve(&path);
                let probe = crate::source::replay::probe(&path)
                    .map_err(|e| self.err(key("path"), e.to_string()))?;
                if !probe.formats.contains(&format) {
                    let can: Vec<&str> = probe.formats.iter().map(|f| f.name()).collect();
                    return Err(self.err(
                        key("pixel-format"),
                        format!(
                            "replay {} cannot deliver {format}: it holds {} (set pixel-format to one of {})",
                            path.display(),
                            probe.what,
                            can.join(", ")
                        ),
                    ));
                }
                if let Some((w, h)) = probe.size {
                    if (w, h) != (width, height) {
                        return Err(self.err(
                            key(if w != width { "width" } else { "height" }),
                            format!(
                                "replay {} holds {w}x{h} frames, not {width}x{height}: set width = {w}, height = {h}",
                                path.display()
                            ),
                        ));
                    }
                }
                SourceConfig::Replay {
                    path,
                    looping: rc.looping.unwrap_or(true),
                }
            }
            SourceKind::V4l2 => {
                let device = rc.device.ok_or_else(|| {
                    self.err(
                        key("device"),
                        "a v4l2 camera needs device = \"/dev/video0\" (or a /dev/v4l/by-id/... name)",
                    )
                })?;
                if device.trim().is_empty() {
                    return Err(self.err(
                        key("device"),
                        "is empty: give the device, e.g. \"/dev/video0\" or a /dev/v4l/by-id/... name (`ocellus cameras` lists them)",
                    ));
                }
                let buffers = rc.buffers.unwrap_or(defaults::V4L2_BUFFERS);
                if !(MIN_V4L2_BUFFERS..=MAX_V4L2_BUFFERS).contains(&buffers) {
                    return Err(self.err(
                        key("buffers"),
                        format!("{buffers} is outside {MIN_V4L2_BUFFERS}..={MAX_V4L2_BUFFERS} (driver buffers: one being filled, one being copied out, more absorb scheduling delays)"),
                    ));
                }
                let stall = match (rc.stall_periods, rc.stall_timeout_ms) {
                    (Some(_), Some(_)) => {
                        return Err(self.err(
                            key("stall-timeout-ms"),
                            "stall-periods is set too: give one of them (stall-timeout-ms is a fixed time, stall-periods a multiple of the frame period)",
                        ))
                    }
                    (_, Some(ms)) => {
                        if !ms.is_finite() || !(MIN_STALL_MS..=MAX_DEADLINE_MS).contains(&ms) {
                            return Err(self.err(
                                key("stall-timeout-ms"),
                                format!("{ms} ms is outside {MIN_STALL_MS}..={MAX_DEADLINE_MS} ms"),
                            ));
                        }
                        StallTimeout::Fixed(Duration::from_secs_f64(ms / 1000.0))
                    }
                    (periods, None) => {
                        let n = periods.unwrap_or(defaults::STALL_PERIODS);
                        if !(2..=MAX_STALL_PERIODS).contains(&n) {
                            return Err(self.err(
                                key("stall-periods"),
                                format!("{n} is outside 2..={MAX_STALL_PERIODS} (frame periods without a frame before the camera counts as stalled)"),
                            ));
                        }
                        StallTimeout::Periods(n)
                    }
                };
                SourceConfig::V4l2 {
                    device: PathBuf::from(device),
                    buffers,
                    stall,
                }
            }
        };
        Ok(CameraConfig {
            name,
            source,
            format,
            width,
            height,
            fps,
            pool_size,
        })
    }

    fn model(&self, rm: RawModel) -> Result<ModelConfig, ConfigError> {
        let manifest = match rm.manifest {
            Some(p) if p.trim().is_empty() => {
                return Err(self.err(
                    "model.manifest",
                    "is empty: give the path of a bundle's manifest.toml",
                ))
            }
            Some(p) => self.resolve(&p),
            None => self.default_manifest(),
        };
        let variant = match rm.variant.as_deref().unwrap_or("fp32") {
            "fp32" => Variant::Fp32,
            "int8" => Variant::Int8,
            other => {
                return Err(self.err(
                    "model.variant",
                    format!("unknown variant '{other}' (expected fp32 or int8)"),
                ))
            }
        };
        let threads = rm.threads.unwrap_or(defaults::THREADS);
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(self.err(
                "model.threads",
                format!("{threads} is outside 1..={MAX_THREADS}"),
            ));
        }
        Ok(ModelConfig {
            manifest,
            variant,
            threads,
        })
    }

    fn default_manifest(&self) -> PathBuf {
        match self.origin {
            Origin::File(_) => self.origin.base_dir().join(DEFAULT_MANIFEST),
            Origin::Embedded => {
                let here = PathBuf::from(DEFAULT_MANIFEST);
                if here.is_file() {
                    return here;
                }
                let installed = std::env::current_exe().ok().and_then(|exe| {
                    let p = exe
                        .parent()?
                        .join("../share/ocellus")
                        .join(DEFAULT_MANIFEST);
                    p.is_file().then_some(p)
                });
                installed.unwrap_or(here)
            }
        }
    }

    fn prompts(&self, rp: RawPrompts) -> Result<PromptsConfig, ConfigError> {
        let max = rp.max.unwrap_or(defaults::PROMPTS_MAX);
        if !(1..=MAX_PROMPTS).contains(&max) {
            return Err(self.err("prompts.max", format!("{max} is outside 1..={MAX_PROMPTS}")));
        }
        let file = match rp.file {
            Some(f) if f.trim().is_empty() => {
                return Err(self.err("prompts.file", "is empty: give a path or remove the key"))
            }
            Some(f) => Some(self.resolve(&f)),
            None => None,
        };
        let labels = match (rp.labels, &file) {
            (Some(labels), _) => labels.into_iter().map(|l| l.trim().to_owned()).collect(),
            (None, Some(_)) => Vec::new(),
            (None, None) => crate::scene::PROMPTS
                .iter()
                .map(|&p| p.to_owned())
                .collect(),
        };
        Ok(PromptsConfig { labels, file, max })
    }

    fn budgets(&self, rb: RawBudgets) -> Result<Budgets, ConfigError> {
        let memory_mib = rb.memory_mib.unwrap_or(defaults::MEMORY_MIB);
        if memory_mib == 0 {
            return Err(self.err("budgets.memory-mib", "must be at least 1"));
        }
        let ms = |k: &str, v: Option<f64>, default: f64| -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            if !v.is_finite() || v <= 0.0 || v > MAX_DEADLINE_MS {
                return Err(self.err(
                    format!("budgets.{k}"),
                    format!("{v} ms: a deadline must be above 0 and at most {MAX_DEADLINE_MS} ms"),
                ));
            }
            Ok(Duration::from_secs_f64(v / 1000.0))
        };
        Ok(Budgets {
            memory_mib,
            capture: ms("capture-ms", rb.capture_ms, defaults::CAPTURE_MS)?,
            prepare: ms("prepare-ms", rb.prepare_ms, defaults::PREPARE_MS)?,
            encoder: ms("encoder-ms", rb.encoder_ms, defaults::ENCODER_MS)?,
            resampler: ms("resampler-ms", rb.resampler_ms, defaults::RESAMPLER_MS)?,
            publish: ms("publish-ms", rb.publish_ms, defaults::PUBLISH_MS)?,
            end_to_end: ms("end-to-end-ms", rb.end_to_end_ms, defaults::END_TO_END_MS)?,
        })
    }

    fn shm(&self, rs: RawShm) -> Result<ShmConfig, ConfigError> {
        let name = rs.name.unwrap_or_else(|| defaults::SHM_NAME.to_owned());
        let bare = name.strip_prefix('/').unwrap_or(&name);
        if bare.is_empty()
            || bare.len() > 200
            || !bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(self.err(
                "shm.name",
                format!("'{name}' is not a shared-memory name: use 1 to 200 of A-Z a-z 0-9 . _ - (no '/')"),
            ));
        }
        let mode = match rs.mode {
            None => defaults::SHM_MODE,
            Some(m) => {
                let digits = m.strip_prefix("0o").unwrap_or(&m);
                let mode = u32::from_str_radix(digits, 8)
                    .ok()
                    .filter(|&v| v <= 0o777 && !digits.is_empty())
                    .ok_or_else(|| {
                        self.err(
                            "shm.mode",
                            format!("'{m}' is not an octal permission like \"0640\""),
                        )
                    })?;
                if mode & 0o600 != 0o600 {
                    return Err(self.err(
                        "shm.mode",
                        format!("'{m}' leaves the owner without read and write; ocellus writes the segment: use e.g. \"0640\""),
                    ));
                }
                mode
            }
        };
        let group = match rs.group {
            Some(g) if g.trim().is_empty() => {
                return Err(self.err("shm.group", "is empty: give a group name or remove the key"))
            }
            g => g,
        };
        let latents = match rs.latents.as_deref() {
            None | Some("f32") => crate::shm::LatentsDtype::F32,
            Some("f16") => crate::shm::LatentsDtype::F16,
            Some(other) => {
                return Err(self.err(
                    "shm.latents",
                    format!("unknown element type '{other}' (expected \"f32\" or \"f16\")"),
                ))
            }
        };
        Ok(ShmConfig {
            name: bare.to_owned(),
            mode,
            group,
            latents,
        })
    }

    fn realtime(&self, rr: RawRealtime) -> Result<crate::rt::RealtimeSettings, ConfigError> {
        use crate::rt::{check_cpus, check_priority, ThreadPolicy};
        let policy = |role: &str, cpus: Option<Vec<usize>>, priority: Option<i64>| {
            Ok::<_, ConfigError>(ThreadPolicy {
                cpus: match cpus {
                    Some(c) => {
                        check_cpus(&c).map_err(|m| self.err(format!("realtime.{role}-cpus"), m))?
                    }
                    None => Vec::new(),
                },
                fifo_priority: priority
                    .map(check_priority)
                    .transpose()
                    .map_err(|m| self.err(format!("realtime.{role}-priority"), m))?,
            })
        };
        Ok(crate::rt::RealtimeSettings {
            capture: policy("capture", rr.capture_cpus, rr.capture_priority)?,
            inference: policy("inference", rr.inference_cpus, rr.inference_priority)?,
            strict: rr.strict.unwrap_or(false),
        })
    }

    fn testing(&self, rt: RawTesting) -> Result<crate::pipeline::TestHooks, ConfigError> {
        use crate::stats::Stage;
        let delay = match (rt.delay_stage.as_deref(), rt.delay_ms) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.err(
                    "testing.delay-ms",
                    "testing.delay-stage is set without it: give the delay in ms, or remove both",
                ))
            }
            (None, Some(_)) => return Err(self.err(
                "testing.delay-stage",
                "testing.delay-ms is set without it: name the stage to slow down, or remove both",
            )),
            (Some(name), Some(ms)) => {
                let stage = match name {
                    "capture" => Stage::Dequeue,
                    "prepare" => Stage::Prepare,
                    "encoder" => Stage::Encoder,
                    "resampler" => Stage::Resampler,
                    "publish" => Stage::Publish,
                    other => {
                        return Err(self.err(
                            "testing.delay-stage",
                            format!("unknown stage '{other}' (expected one of capture, prepare, encoder, resampler, publish)"),
                        ))
                    }
                };
                if !ms.is_finite() || ms <= 0.0 || ms > MAX_DEADLINE_MS {
                    return Err(self.err(
                        "testing.delay-ms",
                        format!("{ms} ms: give a delay above 0 and at most {MAX_DEADLINE_MS} ms"),
                    ));
                }
                Some((stage, Duration::from_secs_f64(ms / 1000.0)))
            }
        };
        if rt.stall_after_frames == Some(0) {
            return Err(self.err(
                "testing.stall-after-frames",
                "must be at least 1 (frames published before the inference thread stalls)",
            ));
        }
        Ok(crate::pipeline::TestHooks {
            delay,
            stall_after_frames: rt.stall_after_frames,
        })
    }

    fn memory(&self, rm: RawMemory) -> Result<crate::budget::MemoryConfig, ConfigError> {
        let d = crate::budget::MemoryConfig::default();
        let arena_mib = match rm.arena_mib {
            None | Some(0) => None,
            Some(m) if m > MAX_ARENA_MIB => {
                return Err(self.err(
                    "memory.arena-mib",
                    format!("{m} is above {MAX_ARENA_MIB}; leave it out (or 0) to size the region from the model"),
                ))
            }
            Some(m) => Some(m),
        };
        let lock = rm.lock.unwrap_or(d.lock);
        let lock_required = rm.lock_required.unwrap_or(d.lock_required);
        if lock_required && !lock {
            return Err(self.err(
                "memory.lock-required",
                "is true but memory.lock is false: set memory.lock = true or drop lock-required",
            ));
        }
        Ok(crate::budget::MemoryConfig {
            lock,
            lock_required,
            arena_mib,
        })
    }

    fn logging(&self, rl: RawLogging) -> Result<LoggingConfig, ConfigError> {
        let level = match rl
            .level
            .as_deref()
            .unwrap_or("info")
            .to_ascii_lowercase()
            .as_str()
        {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "info" => tracing::Level::INFO,
            "debug" => tracing::Level::DEBUG,
            "trace" => tracing::Level::TRACE,
            other => {
                return Err(self.err(
                    "logging.level",
                    format!(
                        "unknown level '{other}' (expected one of error, warn, info, debug, trace)"
                    ),
                ))
            }
        };
        let format = match rl.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(self.err(
                    "logging.format",
                    format!("unknown format '{other}' (expected text or json)"),
                ))
            }
        };
        Ok(LoggingConfig { level, format })
    }
}
