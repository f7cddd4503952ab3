//! `ocellus read`: prints what a shared-memory reader sees, per camera: age, sequence, heartbeat, flags and
//! the top prompt scores. It maps the segment read-only and never affects the writer.
//!
//! Without `--follow` it reads once; a typed read error is one line and exit code 1 (2 for a foreign segment
//! or one of another layout version). With `--follow` it repeats until SIGINT/SIGTERM, reporting a stopped or
//! dead writer and carrying on, so a restarted writer (new generation) is picked up by the same process.

use std::io::{self, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ocellus::shm::{format_sample, Prompts, ReadError, Sample, ShmReader};

use super::{Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// The shared-memory segment to read (`/dev/shm/NAME`).
    #[arg(long, value_name = "NAME", default_value = "ocellus")]
    pub shm: String,
    /// Only this camera (index); without it, every camera in the segment.
    #[arg(long, value_name = "N")]
    pub camera: Option<usize>,
    /// How many of the best prompt scores to print.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub top: usize,
    /// Keep reading until interrupted; a stopped or restarted writer is reported and followed.
    #[arg(long)]
    pub follow: bool,
    /// Milliseconds between reads with --follow.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub interval_ms: u64,
}

/// `/NAME` from `NAME` or `/NAME`, as `ocellus run --shm` names the segment.
pub fn segment_name(name: &str) -> String {
    format!("/{}", name.trim_start_matches('/'))
}

/// The exit code a read error deserves: 2 for a segment that is not ours to read, else 1.
pub fn failure(e: &ReadError) -> Failure {
    match e {
        ReadError::Foreign { .. } | ReadError::VersionMismatch { .. } => Failure::config(e),
        _ => Failure::runtime(e),
    }
}

/// Installs SIGINT/SIGTERM handlers that set the returned flag (a second signal exits at once).
pub fn interrupt_flag() -> Result<Arc<AtomicBool>, Failure> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .map_err(|e| Failure::runtime(format!("cannot install the signal handlers: {e}")))?;
    }
    Ok(flag)
}

/// Sleeps `total` in short steps; returns true as soon as `flag` is set.
pub fn sleep_unless(flag: &AtomicBool, total: Duration) -> bool {
    let step = Duration::from_millis(10);
    let mut left = total;
    loop {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            return true;
        }
        if left.is_zero() {
            return false;
        }
        let d = left.min(step);
        std::thread::sleep(d);
        left -= d;
    }
}

/// A write to stdout failed: a closed pipe ends the command quietly, anything else is a runtime failure.
pub fn stdout_error(e: io::Error) -> Option<Failure> {
    (e.kind() != io::ErrorKind::BrokenPipe)
        .then(|| Failure::runtime(format!("cannot write to stdout: {e}")))
}

/// The reader and what it keeps between reads.
struct View {
    reader: ShmReader,
    sample: Sample,
    prompts: Prompts,
    generation: u64,
}

impl View {
    fn open(name: &str) -> Result<View, ReadError> {
        let reader = ShmReader::open(name)?;
        let sample = reader.new_sample();
        let prompts = reader.prompts()?;
        let generation = reader.generation();
        Ok(View {
            reader,
            sample,
            prompts,
            generation,
        })
    }

    fn describe_writer(&self) -> String {
        let w = self.reader.writer();
        format!(
            "segment {} pid {} generation {:016x} model {} cameras {} prompts v{}",
            self.reader.name(),
            w.pid,
            w.generation,
            if w.model_id.is_empty() {
                "-"
            } else {
                &w.model_id
            },
            self.reader.layout().dims.cameras,
            self.prompts.version,
        )
    }

    /// Reads every selected camera once, appending one line per camera to `out`. A writer-wide error
    /// (stopped, stale, foreign) ends the pass; a camera's own error (nothing yet, out of retries, no such
    /// camera) is its line and the pass goes on. Returns the first error.
    fn pass(
        &mut self,
        camera: Option<usize>,
        top: usize,
        out: &mut Vec<String>,
    ) -> Result<(), ReadError> {
        let cameras = match camera {
            Some(c) => c..c + 1,
            None => 0..self.reader.layout().dims.cameras,
        };
        let mut first_error = None;
        for cam in cameras {
            let result = self.reader.read_latest(cam, &mut self.sample);
            if self.reader.generation() != self.generation {
                let old = self.generation;
                self.generation = self.reader.generation();
                self.prompts = self.reader.prompts()?;
                out.push(format!(
                    "writer restarted: generation {old:016x} -> {:016x}; {}",
                    self.generation,
                    self.describe_writer()
                ));
            }
            match result {
                Ok(info) => {
                    if self.sample.meta.prompt_version != self.prompts.version {
                        self.prompts = self.reader.prompts()?;
                    }
                    out.push(format_sample(
                        cam,
                        &self.sample,
                        &info,
                        &self.prompts.labels,
                        top,
                    ));
                }
                Err(
                    e @ (ReadError::NoSample { .. }
                    | ReadError::RetriesExhausted { .. }
                    | ReadError::NoSuchCamera { .. }),
                ) => {
                    out.push(format!("cam {cam}: {e}"));
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

pub fn read(args: ReadArgs, _v: Verbosity) -> Result<(), Failure> {
    let name = segment_name(&args.shm);
    if args.follow {
        return follow(&name, &args);
    }
    let mut view = View::open(&name).map_err(|e| failure(&e))?;
    let mut lines = vec![view.describe_writer()];
    let result = view.pass(args.camera, args.top, &mut lines);
    let mut stdout = io::stdout().lock();
    for line in &lines {
        if let Err(e) = writeln!(stdout, "{line}") {
            return stdout_error(e).map_or(Ok(()), Err);
        }
    }
    result.map_err(|e| failure(&e))
}

/// What the last pass reported, so a persisting condition is printed once rather than every interval.
#[derive(Debug, PartialEq, Eq)]
enum Last {
    Nothing,
    Samples,
    Error(std::mem::Discriminant<ReadError>),
}

fn follow(name: &str, args: &ReadArgs) -> Result<(), Failure> {
    let interrupt = interrupt_flag()?;
    let interval = Duration::from_millis(args.interval_ms);
    let mut view: Option<View> = None;
    let mut last = Last::Nothing;
    let mut stdout = io::stdout().lock();
    loop {
        let mut lines = Vec::new();
        let outcome = match view.as_mut() {
            Some(v) => v.pass(args.camera, args.top, &mut lines),
            None => View::open(name).and_then(|mut v| {
                lines.push(v.describe_writer());
                let r = v.pass(args.camera, args.top, &mut lines);
                view = Some(v);
                r
            }),
        };
        let now = match &outcome {
            Ok(()) => Last::Samples,
            Err(e) => Last::Error(std::mem::discriminant(e)),
        };
        match outcome {
            Err(e @ (ReadError::Foreign { .. } | ReadError::VersionMismatch { .. })) => {
                return Err(failure(&e));
            }
            Err(e @ (ReadError::NotRunning { .. } | ReadError::Stale { .. })) => {
                lines.push(format!("{e}; waiting for a writer"));
            }
            Err(e @ ReadError::Io { .. }) => lines.push(e.to_string()),
            Err(_) | Ok(()) => {}
        }
        if now != last || matches!(now, Last::Samples) {
            for line in &lines {
                if let Err(e) = writeln!(stdout, "{line}") {
                    return stdout_error(e).map_or(Ok(()), Err);
                }
            }
        }
        last = now;
        if sleep_unless(&interrupt, interval) {
            return Ok(());
        }
    }
}
