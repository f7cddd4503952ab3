//! `ocellus run`: the pipeline with a live status line and a summary at exit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocellus::notify::ServiceNotifier;
use ocellus::runtime::{Runtime, RuntimeOptions, ShmTarget};
use ocellus::sink::{StatusMode, StatusReporter};
use ocellus::stats::Summary;

use super::{init_logging, load_config, Failure, Verbosity};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML); without it, the built-in default: the synthetic camera and the bundled
    /// demo model (models/demo).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Stop after this many published frames (all cameras together).
    #[arg(long)]
    pub frames: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Also write the summary as JSON to this file (machine-readable; `-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Seconds between status lines (0 turns the live status off).
    #[arg(long, default_value_t = 0.5)]
    pub status_interval: f64,
    /// Publish into this shared-memory segment instead of the config's `shm.name`.
    #[arg(long, value_name = "NAME", conflicts_with = "no_shm")]
    pub shm: Option<String>,
    /// Do not publish into shared memory.
    #[arg(long)]
    pub no_shm: bool,
}

pub fn run(args: RunArgs, v: Verbosity) -> Result<(), Failure> {
    let config = load_config(args.config.as_deref())?;
    init_logging(Some(&config.logging), v);
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(Failure::config(format!(
                "--duration {d}: give a positive number of seconds"
            )));
        }
    }
    if !(args.status_interval.is_finite() && args.status_interval >= 0.0) {
        return Err(Failure::config(
            "--status-interval: give a number of seconds >= 0",
        ));
    }

    let interrupt = interrupt_flag()?;
    // systemd's notify protocol when NOTIFY_SOCKET is set (docs/service.md).
    let mut service = ServiceNotifier::from_env();

    let mut runtime = Runtime::build(&config, options(&args))?;
    runtime.start()?;
    let mut usr1 = Usr1::install(&runtime)?;
    let started = Instant::now();
    service.ready(runtime.stats(), started);
    // Deadline misses are logged from the reporter's thread even when the live status is off.
    let mut reporter = StatusReporter::spawn(
        Arc::clone(runtime.stats()),
        (args.status_interval > 0.0).then(|| Duration::from_secs_f64(args.status_interval)),
        StatusMode::for_stderr(),
        std::io::stderr(),
    )
    .map_err(
        |e| tracing::warn!(error = %e, "no live status or deadline log: cannot start its thread"),
    )
    .ok();

    let limit = args
        .duration
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::MAX);
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() || runtime.wait(left.min(service.tick_interval()), &interrupt) {
            break;
        }
        if interrupt.load(Ordering::SeqCst) {
            tracing::info!("signal received; stopping");
            break;
        }
        service.tick(runtime.stats(), Instant::now());
    }
    service.stopping();
    usr1.stop();
    runtime.stop();
    if let Some(r) = reporter.as_mut() {
        r.stop();
    }
    log_frame_path_memory();
    let summary = runtime.stats().summary();
    print!("{summary}");
    if let Some(path) = &args.summary_json {
        write_json(path, &summary)?;
    }
    // A signal before the first frame (a service stopped during start-up) is not a failure.
    if summary.frames == 0 && !interrupt.load(Ordering::SeqCst) {
        return Err(Failure::runtime(format!(
            "no frame was processed in {:.1} s: see the log above for camera and model errors",
            summary.duration_s
        )));
    }
    Ok(())
}

/// A flag SIGINT and SIGTERM set; a second signal while stopping exits at once (exit code 1).
pub(super) fn interrupt_flag() -> Result<Arc<AtomicBool>, Failure> {
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&interrupt))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&interrupt)))
            .map_err(|e| Failure::runtime(format!("cannot install the signal handlers: {e}")))?;
    }
    Ok(interrupt)
}

/// SIGUSR1: triggers a flight recording (`[recorder]`), or is logged and ignored without one (instead of
/// ending the process, the signal's default).
struct Usr1 {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Usr1 {
    fn install(runtime: &Runtime) -> Result<Usr1, Failure> {
        use ocellus::recorder::{External, Outcome};
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
            .map_err(|e| Failure::runtime(format!("cannot install the SIGUSR1 handler: {e}")))?;
        let handle = signals.handle();
        let trigger = runtime.recorder().map(|r| r.trigger());
        if let Some(r) = runtime.recorder() {
            tracing::info!(socket = %r.socket().map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()), "SIGUSR1 and `ocellus record --trigger` trigger a flight recording");
        }
        let thread = std::thread::Builder::new()
            .name("ocellus-usr1".into())
            .spawn(move || {
                for _ in signals.forever() {
                    let Some(t) = &trigger else {
                        tracing::warn!("SIGUSR1 ignored: the flight recorder is off (set [recorder] enabled = true)");
                        continue;
                    };
                    let seq = t.request(External::Signal);
                    match t.outcome(seq, Duration::from_secs(10)) {
                        Some(Outcome::Accepted(n)) => tracing::info!(recording = n, "SIGUSR1: flight recording triggered"),
                        Some(Outcome::Joined(n)) => tracing::info!(recording = n, "SIGUSR1: joins the flight recording whose window is filling"),
                        Some(Outcome::Dropped) => tracing::warn!("SIGUSR1: trigger dropped: the writer is still writing the previous recording"),
                        Some(Outcome::Off) | None => tracing::warn!("SIGUSR1: the inference thread did not take the trigger"),
                    }
                }
            })
            .map_err(|e| Failure::runtime(format!("cannot start the SIGUSR1 thread: {e}")))?;
        Ok(Usr1 {
            handle,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The runtime options of `ocellus run`'s flags.
fn options(args: &RunArgs) -> RuntimeOptions {
    RuntimeOptions {
        max_frames: args.frames,
        shm: match (&args.shm, args.no_shm) {
            (_, true) => ShmTarget::Off,
            (Some(name), false) => ShmTarget::Named(name.clone()),
            (None, false) => ShmTarget::Config,
        },
        ..RuntimeOptions::default()
    }
}

/// Logs how much of the frame-path region the run used and whether the frame path ever fell back to
/// the system allocator.
fn log_frame_path_memory() {
    let a = ocellus::alloc::stats();
    tracing::info!(
        region_kib = a.region_bytes / 1024,
        high_water_kib = a.region_high_water / 1024,
        region_allocations = a.region_allocations(),
        system_allocations = a.system_allocations(),
        "frame-path memory"
    );
    if a.fallbacks > 0 {
        tracing::warn!(
            fallbacks = a.fallbacks,
            "the frame-path region was too small for some allocations: raise memory.arena-mib"
        );
    }
}

fn write_json(path: &std::path::Path, summary: &Summary) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(summary)
        .map_err(|e| Failure::runtime(format!("cannot encode the summary: {e}")))?;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    std::fs::write(path, text + "\n").map_err(|e| {
        Failure::runtime(format!(
            "cannot write the summary to {}: {e}",
            path.display()
        ))
    })
}
