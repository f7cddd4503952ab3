//! `ocellus replay`: a recording's frames run through the pipeline as the replay source runs them (every
//! frame processed, in order), and each frame's results compared with the recorded ones
//! ([`crate::recorder::compare`]).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BuildError, Runtime, RuntimeOptions, ShmTarget};
use crate::config::Config;
use crate::pipeline::TestHooks;
use crate::recorder::compare::{compare, Comparison, Side};
use crate::recorder::format::{FrameResults, PromptTable};
use crate::recorder::{RecorderSettings, Recording};
use crate::sink::{FrameResult, Sink, SinkError};
use crate::source::{CameraSettings, SourceSettings};

/// Why a replay could not run.
pub type ReplayError = BuildError;

/// The configuration a replay of `recording` runs with: `config`'s model, prompts and budgets; one replay
/// camera per recorded camera (unpaced, not looping); no recorder, no test aids. With `check_cameras` (a
/// configuration the user gave), its cameras must match the recording's in number, pixel format and size.
pub fn replay_config(
    recording: &Recording,
    config: &Config,
    check_cameras: bool,
) -> Result<Config, BuildError> {
    let cams = &recording.header.cameras;
    let dir = recording.dir.display();
    if check_cameras && !config.cameras.is_empty() {
        if config.cameras.len() != cams.len() {
            return Err(BuildError::config(format!(
                "recording {dir} holds {} cameras but config {} has {}: replay with the configuration the recording was made with (or leave --config out to run the recording's cameras with the built-in model settings)",
                cams.len(),
                config.origin,
                config.cameras.len()
            )));
        }
        for (i, (rec, cam)) in cams.iter().zip(&config.cameras).enumerate() {
            if (rec.pixel_format.as_str(), rec.width, rec.height)
                != (cam.format.name(), cam.width, cam.height)
            {
                return Err(BuildError::config(format!(
                    "recording {dir} camera {i} ({}) holds {} {}x{} frames, but config {} camera[{i}] ({}) is {} {}x{}: replay with the configuration the recording was made with, or set camera[{i}].pixel-format = \"{}\", width = {}, height = {}",
                    rec.name,
                    rec.pixel_format,
                    rec.width,
                    rec.height,
                    config.origin,
                    cam.name,
                    cam.format,
                    cam.width,
                    cam.height,
                    rec.pixel_format,
                    rec.width,
                    rec.height
                )));
            }
        }
    }
    let mut cameras = Vec::with_capacity(cams.len());
    for (i, rec) in cams.iter().enumerate() {
        let format = recording.format(i).ok_or_else(|| {
            BuildError::config(format!(
                "recording {dir} camera {i}: pixel format '{}' is not one ocellus reads",
                rec.pixel_format
            ))
        })?;
        cameras.push(CameraSettings {
            name: rec.name.clone(),
            source: SourceSettings::Replay {
                path: recording.raw_path(i),
                looping: false,
            },
            format,
            width: rec.width,
            height: rec.height,
            fps: 0,
            pool_size: config.cameras.get(i).map_or(4, |c| c.pool_size),
        });
    }
    Ok(Config {
        cameras,
        recorder: RecorderSettings::default(),
        testing: TestHooks::default(),
        ..config.clone()
    })
}

/// What the replay produced, per camera.
#[derive(Default)]
struct Replayed {
    cameras: Vec<Vec<FrameResults>>,
    prompts: Vec<PromptTable>,
}

/// Keeps every result (replay only: it allocates per frame).
struct Collect(Arc<Mutex<Replayed>>);

impl Sink for Collect {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        let mut seen = self
            .0
            .lock()
            .map_err(|_| SinkError::Closed { sink: "replay" })?;
        if seen.cameras.len() <= r.camera {
            seen.cameras.resize_with(r.camera + 1, Vec::new);
        }
        if !seen.prompts.iter().any(|p| p.version == r.prompt_version) {
            seen.prompts.push(PromptTable {
                version: r.prompt_version,
                labels: r.labels.to_vec(),
            });
        }
        seen.cameras[r.camera].push(FrameResults {
            sequence: r.sequence,
            capture_ns: r.capture_ns,
            publish_ns: r.publish_ns,
            stage_ns: r.stage_ns,
            flags: r.flags,
            prompt_version: r.prompt_version,
            driver_dropped: 0,
            dropped: 0,
            label: r.ground_truth,
            frame_bytes: 0,
            image_embeds: r.image_embeds.to_vec(),
            latents: r.latents.to_vec(),
            scores: r.scores.to_vec(),
        });
        Ok(())
    }
}

/// Runs `recording` through the pipeline built from `config` (see [`replay_config`]) and compares every
/// frame's results with the recorded ones. Stops early when `interrupt` is set.
pub fn replay(
    recording: &Recording,
    config: &Config,
    check_cameras: bool,
    interrupt: &AtomicBool,
) -> Result<Comparison, BuildError> {
    let replay_config = replay_config(recording, config, check_cameras)?;
    let recorded = (0..recording.header.cameras.len())
        .map(|i| recording.results(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BuildError::config)?;
    let seen = Arc::new(Mutex::new(Replayed::default()));
    let sink = Arc::clone(&seen);
    let mut runtime = Runtime::build(
        &replay_config,
        RuntimeOptions {
            shm: ShmTarget::Off,
            // The results are kept per frame: not a frame path held to the region.
            take_memory: false,
            lossless: true,
            extra_sinks: vec![Box::new(move |_| Box::new(Collect(sink)) as Box<dyn Sink>)],
            ..RuntimeOptions::default()
        },
    )?;
    runtime.start()?;
    while !runtime.wait(Duration::from_millis(200), interrupt) {
        if interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
    }
    runtime.stop();
    let replayed =
        std::mem::take(&mut *seen.lock().map_err(|_| {
            BuildError::runtime("the replay's results were lost (a thread panicked)")
        })?);
    let names: Vec<String> = recording
        .header
        .cameras
        .iter()
        .map(|c| c.name.clone())
        .collect();
    let mut replayed_cameras = replayed.cameras;
    replayed_cameras.resize_with(recorded.len(), Vec::new);
    Ok(compare(
        Side {
            model: &recording.header.model,
            prompts: &recording.header.prompts,
            cameras: &recorded,
            names: &names,
        },
        Side {
            model: &runtime.model().identity,
            prompts: &replayed.prompts,
            cameras: &replayed_cameras,
            names: &names,
        },
        Some(crate::scene::class_prompt),
    ))
}
