//! From the file's shape to typed values; every error names its key.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::defaults::{self, *};
use super::raw::*;
use super::{
    Budgets, Config, ConfigError, LogFormat, LoggingConfig, ModelConfig, Origin, ShmConfig,
    ThreadsOrigin, DEFAULT_MANIFEST,
};
use crate::alloc::MemorySettings;
use crate::frame::PixelFormat;
use crate::infer::{OnnxruntimeSettings, Provider, RunVariant, VariantChoice};
use crate::manifest::EngineKind;
use crate::pipeline::TestHooks;
use crate::prompts::{check_prompts, PromptSettings};
use crate::recorder::{RecorderSettings, Window};
use crate::rt::RealtimeSettings;
use crate::source::{CameraSettings, SourceKind, SourceSettings, StallTimeout};

pub(super) struct Validator<'a> {
    pub(super) origin: &'a Origin,
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

    pub(super) fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        // No camera is a valid configuration for what runs no camera (`ocellus infer`); the runtime refuses
        // to run one (runtime::build).
        let raw_cameras = raw.camera.unwrap_or_default();
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
        let realtime = self.realtime(raw.realtime)?;
        let config = Config {
            cameras,
            model: self.model(raw.model, &realtime)?,
            prompts: self.prompts(raw.prompts)?,
            budgets: self.budgets(raw.budgets)?,
            shm: self.shm(raw.shm)?,
            logging: self.logging(raw.logging)?,
            memory: self.memory(raw.memory)?,
            realtime,
            testing: self.testing(raw.testing)?,
            onnxruntime: self.onnxruntime(raw.onnxruntime)?,
            recorder: RecorderSettings::default(),
            origin: self.origin.clone(),
        };
        let recorder = self.recorder(raw.recorder, &config.cameras)?;
        Ok(Config { recorder, ..config })
    }

    fn camera(&self, i: usize, rc: RawCamera) -> Result<CameraSettings, ConfigError> {
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
                SourceSettings::Synthetic {
                    seed: rc.seed.unwrap_or(defaults::SEED),
                    hold_frames,
                }
            }
            SourceKind::Replay => {
                let path = rc.path.ok_or_else(|| {
                    self.err(key("path"), "a replay camera needs path = a directory of PNG/JPEG images or a recorded .raw file")
                })?;
                let path = self.resolve(&path);
                SourceSettings::Replay {
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
                SourceSettings::V4l2 {
                    device: PathBuf::from(device),
                    buffers,
                    stall,
                }
            }
        };
        Ok(CameraSettings {
            name,
            source,
            format,
            width,
            height,
            fps,
            pool_size,
        })
    }

    fn model(&self, rm: RawModel, realtime: &RealtimeSettings) -> Result<ModelConfig, ConfigError> {
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
        let engine = match rm.engine.as_deref().unwrap_or("tract") {
            "tract" => EngineKind::Tract,
            "onnxruntime" => EngineKind::Onnxruntime,
            other => {
                return Err(self.err(
                    "model.engine",
                    format!("unknown engine '{other}' (expected tract or onnxruntime)"),
                ))
            }
        };
        let variant = match rm.variant.as_deref().unwrap_or("auto") {
            "auto" => VariantChoice::Auto,
            "fp32" => VariantChoice::Fixed(RunVariant::Fp32),
            "int8" => VariantChoice::Fixed(RunVariant::Int8),
            "f16" => VariantChoice::Fixed(RunVariant::F16),
            other => {
                return Err(self.err(
                    "model.variant",
                    format!("unknown variant '{other}' (expected auto, fp32, int8 or f16)"),
                ))
            }
        };
        let cpu_isa = match rm.cpu_isa {
            Some(spec) => {
                crate::infer::select::check_isa_spec(&spec)
                    .map_err(|m| self.err("model.cpu-isa", m))?;
                Some(spec)
            }
            None => None,
        };
        // Left out, the engine gets one thread per CPU the inference role is pinned to, and one thread
        // when it is not pinned: ocellus does not take a core the control loop may be running on.
        let (threads, threads_origin) = match rm.threads {
            Some(n) => (n, ThreadsOrigin::Configured),
            None if !realtime.inference.cpus.is_empty() => {
                (realtime.inference.cpus.len(), ThreadsOrigin::InferenceCpus)
            }
            None => (defaults::THREADS, ThreadsOrigin::Default),
        };
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(self.err(
                "model.threads",
                format!("{threads} is outside 1..={MAX_THREADS}"),
            ));
        }
        let measurements = match rm.measurements {
            Some(p) if p.trim().is_empty() => {
                return Err(self.err(
                    "model.measurements",
                    "is empty: give a file path, or remove the key for the default place",
                ))
            }
            Some(p) => Some(self.resolve(&p)),
            None => None,
        };
        Ok(ModelConfig {
            manifest,
            engine,
            variant,
            threads,
            threads_origin,
            cpu_isa,
            measurements,
        })
    }

    fn onnxruntime(&self, ro: RawOnnxruntime) -> Result<OnnxruntimeSettings, ConfigError> {
        let library = match ro.library {
            Some(p) if p.trim().is_empty() => {
                return Err(self.err(
                    "onnxruntime.library",
                    "is empty: give the path of libonnxruntime.so, or remove the key to use the ORT_DYLIB_PATH environment variable",
                ))
            }
            Some(p) => Some(self.resolve(&p)),
            None => None,
        };
        let providers = match ro.providers {
            None => OnnxruntimeSettings::default().providers,
            Some(names) => {
                if names.is_empty() {
                    return Err(self.err(
                        "onnxruntime.providers",
                        "is empty: give at least one of \"cpu\", \"cuda\", \"tensorrt\" (default [\"cpu\"])",
                    ));
                }
                let mut providers = Vec::with_capacity(names.len());
                for name in &names {
                    let p = Provider::parse(name).ok_or_else(|| {
                        self.err(
                            "onnxruntime.providers",
                            format!("unknown execution provider '{name}' (expected cpu, cuda or tensorrt)"),
                        )
                    })?;
                    if providers.contains(&p) {
                        return Err(
                            self.err("onnxruntime.providers", format!("'{name}' is listed twice"))
                        );
                    }
                    providers.push(p);
                }
                providers
            }
        };
        Ok(OnnxruntimeSettings { library, providers })
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

    fn prompts(&self, rp: RawPrompts) -> Result<PromptSettings, ConfigError> {
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
        let defaulted = rp.labels.is_none() && file.is_none();
        let labels: Vec<String> = match (rp.labels, &file) {
            (Some(labels), _) => labels.into_iter().map(|l| l.trim().to_owned()).collect(),
            (None, Some(_)) => Vec::new(),
            (None, None) => crate::scene::PROMPTS
                .iter()
                .map(|&p| p.to_owned())
                .collect(),
        };
        // The labels alone must keep the rules; with a file, the whole set is checked once it is read.
        if file.is_none() || !labels.is_empty() {
            check_prompts(&labels, max).map_err(|e| match e {
                crate::prompts::PromptError::Rule { key, message } => self.err(key, message),
                other => self.err("prompts", other.to_string()),
            })?;
        }
        Ok(PromptSettings {
            labels,
            file,
            max,
            defaulted,
        })
    }

    fn budgets(&self, rb: RawBudgets) -> Result<Budgets, ConfigError> {
        if rb.capture_ms.is_some() {
            return Err(self.err(
                "budgets.capture-ms",
                "was renamed budgets.dequeue-ms (the time from a frame's capture timestamp to the inference thread taking it): rename the key",
            ));
        }
        let memory_mib = rb.memory_mib.unwrap_or(defaults::MEMORY_MIB);
        if memory_mib == 0 {
            return Err(self.err("budgets.memory-mib", "must be at least 1"));
        }
        let ms = |k: &str, v: Option<f64>| -> Result<Option<Duration>, ConfigError> {
            let Some(v) = v else { return Ok(None) };
            if !v.is_finite() || v <= 0.0 || v > MAX_DEADLINE_MS {
                return Err(self.err(
                    format!("budgets.{k}"),
                    format!("{v} ms: a deadline must be above 0 and at most {MAX_DEADLINE_MS} ms"),
                ));
            }
            Ok(Some(Duration::from_secs_f64(v / 1000.0)))
        };
        Ok(Budgets {
            memory_mib,
            dequeue: ms("dequeue-ms", rb.dequeue_ms)?,
            prepare: ms("prepare-ms", rb.prepare_ms)?,
            encoder: ms("encoder-ms", rb.encoder_ms)?,
            resampler: ms("resampler-ms", rb.resampler_ms)?,
            publish: ms("publish-ms", rb.publish_ms)?,
            end_to_end: ms("end-to-end-ms", rb.end_to_end_ms)?,
        })
    }

    fn shm(&self, rs: RawShm) -> Result<ShmConfig, ConfigError> {
        let name = rs.name.unwrap_or_else(|| defaults::SHM_NAME.to_owned());
        let posix = crate::shm::segment_name(&name).map_err(|m| self.err("shm.name", m))?;
        let bare = posix.trim_start_matches('/');
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

    fn realtime(&self, rr: RawRealtime) -> Result<RealtimeSettings, ConfigError> {
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
        Ok(RealtimeSettings {
            capture: policy("capture", rr.capture_cpus, rr.capture_priority)?,
            inference: policy("inference", rr.inference_cpus, rr.inference_priority)?,
            strict: rr.strict.unwrap_or(false),
        })
    }

    fn testing(&self, rt: RawTesting) -> Result<TestHooks, ConfigError> {
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
                    "dequeue" => Stage::Dequeue,
                    "capture" => {
                        return Err(self.err(
                            "testing.delay-stage",
                            "the stage \"capture\" was renamed \"dequeue\" (as in budgets.dequeue-ms): write delay-stage = \"dequeue\"",
                        ))
                    }
                    "prepare" => Stage::Prepare,
                    "encoder" => Stage::Encoder,
                    "resampler" => Stage::Resampler,
                    "publish" => Stage::Publish,
                    other => {
                        return Err(self.err(
                            "testing.delay-stage",
                            format!("unknown stage '{other}' (expected one of dequeue, prepare, encoder, resampler, publish)"),
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
        if rt.delay_after_frames.is_some() && delay.is_none() {
            return Err(self.err(
                "testing.delay-after-frames",
                "only applies with testing.delay-stage and testing.delay-ms: add them, or remove it",
            ));
        }
        if rt.stall_after_frames == Some(0) {
            return Err(self.err(
                "testing.stall-after-frames",
                "must be at least 1 (frames published before the inference thread stalls)",
            ));
        }
        Ok(TestHooks {
            delay,
            delay_after_frames: rt.delay_after_frames,
            stall_after_frames: rt.stall_after_frames,
        })
    }

    fn recorder(
        &self,
        rr: RawRecorder,
        cameras: &[CameraSettings],
    ) -> Result<RecorderSettings, ConfigError> {
        use crate::stats::Stage;
        let d = RecorderSettings::default();
        let enabled = rr.enabled.unwrap_or(false);
        let window = match (rr.seconds, rr.frames) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "recorder.frames",
                    "recorder.seconds is set too: give one of them (seconds x each camera's fps, or frames per camera)",
                ))
            }
            (Some(s), None) => {
                if !s.is_finite() || s <= 0.0 || s > MAX_RECORDER_SECONDS {
                    return Err(self.err(
                        "recorder.seconds",
                        format!("{s}: give a window above 0 and at most {MAX_RECORDER_SECONDS} s"),
                    ));
                }
                Window::Seconds(s)
            }
            (None, Some(n)) => {
                if !(1..=MAX_RECORDER_FRAMES).contains(&n) {
                    return Err(self.err(
                        "recorder.frames",
                        format!("{n} is outside 1..={MAX_RECORDER_FRAMES}"),
                    ));
                }
                Window::Frames(n)
            }
            (None, None) => d.window,
        };
        if enabled && matches!(window, Window::Seconds(_)) {
            if let Some(i) = cameras.iter().position(|c| c.fps == 0) {
                return Err(self.err(
                    "recorder.seconds",
                    format!("camera[{i}].fps is 0 (as fast as possible), so a window in seconds has no frame count: give recorder.frames instead, or set camera[{i}].fps"),
                ));
            }
        }
        let after = rr.after.unwrap_or(d.after);
        if !after.is_finite() || !(0.0..=MAX_RECORDER_AFTER).contains(&after) {
            return Err(self.err(
                "recorder.after",
                format!("{after}: give the fraction of the window recorded after the trigger, 0..={MAX_RECORDER_AFTER}"),
            ));
        }
        let path = |key: &str, v: Option<String>| -> Result<Option<PathBuf>, ConfigError> {
            match v {
                Some(p) if p.trim().is_empty() => Err(self.err(
                    format!("recorder.{key}"),
                    "is empty: give a path, or remove the key for the default",
                )),
                Some(p) => Ok(Some(self.resolve(&p))),
                None => Ok(None),
            }
        };
        let dir =
            path("dir", rr.dir)?.unwrap_or_else(|| self.resolve(crate::recorder::defaults::DIR));
        let socket = path("socket", rr.socket)?
            .unwrap_or_else(|| dir.join(crate::recorder::defaults::SOCKET));
        let quota_mib = rr.quota_mib.unwrap_or(crate::recorder::defaults::QUOTA_MIB);
        if quota_mib == 0 {
            return Err(self.err("recorder.quota-mib", "must be at least 1"));
        }
        let on_late = match rr.on_late {
            None => d.on_late,
            Some(names) => {
                let mut stages = Vec::with_capacity(names.len());
                for name in names {
                    let stage = match name.as_str() {
                        "dequeue" => Stage::Dequeue,
                        "prepare" => Stage::Prepare,
                        "encoder" => Stage::Encoder,
                        "resampler" => Stage::Resampler,
                        "publish" => Stage::Publish,
                        "end-to-end" => Stage::EndToEnd,
                        other => {
                            return Err(self.err(
                                "recorder.on-late",
                                format!("unknown stage '{other}' (expected dequeue, prepare, encoder, resampler, publish or end-to-end; [] for none)"),
                            ))
                        }
                    };
                    if !stages.contains(&stage) {
                        stages.push(stage);
                    }
                }
                stages
            }
        };
        Ok(RecorderSettings {
            enabled,
            window,
            after,
            dir,
            quota_bytes: quota_mib << 20,
            socket,
            on_late,
            on_camera_fault: rr.on_camera_fault.unwrap_or(d.on_camera_fault),
            capture: None,
        })
    }

    fn memory(&self, rm: RawMemory) -> Result<MemorySettings, ConfigError> {
        let d = MemorySettings::default();
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
        Ok(MemorySettings {
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
        let format = match rl.format.as_deref().unwrap_or("auto") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            "journald" => LogFormat::Journald,
            "auto" => LogFormat::Auto,
            other => {
                return Err(self.err(
                    "logging.format",
                    format!("unknown format '{other}' (expected auto, text, json or journald)"),
                ))
            }
        };
        Ok(LoggingConfig { level, format })
    }
}
