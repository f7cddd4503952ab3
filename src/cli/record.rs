//! `ocellus record`: trigger the running service's flight recorder (`--trigger`), or capture every
//! processed frame with its results for a while (`--duration S` / `--frames N`, `--out DIR`), in the
//! recording format (docs/recorder.md), for calibration (`ocellus-tools quantize --recording DIR`) and tests.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ocellus::recorder::{RecorderSettings, Recording};
use ocellus::runtime::{Runtime, RuntimeOptions, ShmTarget};

use super::{init_logging, load_config, Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Ask the running service (its [recorder] control socket) to write a flight recording now.
    #[arg(long, conflicts_with_all = ["duration", "frames", "out"])]
    pub trigger: bool,
    /// With --trigger: wait until the recording is written and print its directory.
    #[arg(long, requires = "trigger")]
    pub wait: bool,
    /// With --trigger: the control socket (default: the config's recorder.socket).
    #[arg(long, value_name = "PATH", requires = "trigger")]
    pub socket: Option<PathBuf>,
    /// Configuration file (TOML): the service's, for --trigger (its recorder.socket); the cameras and model
    /// to capture with otherwise. Without it, the built-in default.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Capture for this many seconds.
    #[arg(long, value_name = "S")]
    pub duration: Option<f64>,
    /// Capture this many processed frames (all cameras together).
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,
    /// The capture's directory (created; it must not hold a recording yet).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also publish into this shared-memory segment while capturing (default: no shared memory).
    #[arg(long, value_name = "NAME")]
    pub shm: Option<String>,
}

pub fn record(args: RecordArgs, v: Verbosity) -> Result<(), Failure> {
    if args.trigger {
        return trigger(&args, v);
    }
    let Some(out) = args.out.clone() else {
        return Err(Failure::config(
            "give --trigger (a flight recording from the running service) or --out DIR with --duration S or --frames N (a capture)",
        ));
    };
    if args.duration.is_none() && args.frames.is_none() {
        return Err(Failure::config(
            "a capture needs --duration S or --frames N (or both: whichever comes first)",
        ));
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(Failure::config(format!(
                "--duration {d}: give a positive number of seconds"
            )));
        }
    }
    if args.frames == Some(0) {
        return Err(Failure::config("--frames 0: give at least 1"));
    }
    let mut config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    config.recorder = RecorderSettings {
        capture: Some(out),
        ..RecorderSettings::default()
    };
    let interrupt = super::run::interrupt_flag()?;
    let mut runtime = Runtime::build(
        &config,
        RuntimeOptions {
            max_frames: args.frames,
            shm: args.shm.clone().map_or(ShmTarget::Off, ShmTarget::Named),
            ..RuntimeOptions::default()
        },
    )?;
    runtime.start()?;
    let started = Instant::now();
    let limit = args
        .duration
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::MAX);
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() || runtime.wait(left.min(Duration::from_millis(200)), &interrupt) {
            break;
        }
        if interrupt.load(Ordering::SeqCst) {
            break;
        }
    }
    runtime.stop();
    let summary = runtime.stats().summary();
    let dir = match runtime.recorder().and_then(|r| r.capture_result()) {
        Some(Ok(dir)) => dir.clone(),
        Some(Err(e)) => return Err(Failure::runtime(format!("the capture failed: {e}"))),
        None => return Err(Failure::runtime("the capture's writer did not finish")),
    };
    let recording = Recording::open(&dir).map_err(Failure::runtime)?;
    let frames: usize = recording.header.cameras.iter().map(|c| c.frames).sum();
    println!(
        "recorded {frames} frames ({}) in {:.1} s to {} ({:.1} MiB){}",
        recording
            .header
            .cameras
            .iter()
            .map(|c| format!(
                "{} {}: {} {}x{}",
                c.name, c.frames, c.pixel_format, c.width, c.height
            ))
            .collect::<Vec<_>>()
            .join(", "),
        summary.duration_s,
        dir.display(),
        recording.header.bytes as f64 / (1u64 << 20) as f64,
        if summary.recorder.frames_not_recorded > 0 {
            format!(
                "; {} processed frames not recorded (the disk was slower than the cameras)",
                summary.recorder.frames_not_recorded
            )
        } else {
            String::new()
        }
    );
    if frames == 0 {
        return Err(Failure::runtime(
            "no frame was recorded: see the log above for camera and model errors",
        ));
    }
    Ok(())
}

/// `--trigger`: one request over the control socket; the reply decides the exit code.
fn trigger(args: &RecordArgs, v: Verbosity) -> Result<(), Failure> {
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => {
            let config = load_config(args.config.as_deref())?;
            init_logging(Some(&config.logging), v);
            config.recorder.socket
        }
    };
    let reply = ocellus::recorder::request(&socket, args.wait).map_err(Failure::runtime)?;
    let (word, rest) = reply.split_once(' ').unwrap_or((reply.as_str(), ""));
    match word {
        "recorded" | "accepted" | "joined" => {
            println!("{reply}");
            Ok(())
        }
        "refused" => Err(Failure::config(format!("the service refused: {rest}"))),
        "dropped" => Err(Failure::runtime(format!("trigger dropped: {rest}"))),
        "failed" => Err(Failure::runtime(format!("the recording failed: {rest}"))),
        _ => Err(Failure::runtime(format!("the service answered: {reply}"))),
    }
}
