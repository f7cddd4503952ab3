//! Second measurement: the pipeline, built by the runtime exactly as `ocellus run` builds it, and the sink
//! that cuts the measured window.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocellus::alloc::AllocStats;
use ocellus::clock::monotonic_ns;
use ocellus::config::Config;
use ocellus::runtime::{Runtime, RuntimeOptions, ShmTarget, SinkFactory};
use ocellus::sink::{FrameResult, Sink, SinkError};
use ocellus::stats::{HistogramSnapshot, Stage, Stats, STAGE_COUNT};

use super::{BenchArgs, STALL};
use crate::cli::Failure;
use crate::malloc_count::{self, MallocCounts};

/// What the statistics say at one point of the run.
pub(super) struct Mark {
    pub(super) at_ns: u64,
    pub(super) stages: [HistogramSnapshot; STAGE_COUNT],
    pub(super) captured: u64,
    pub(super) dropped: u64,
    pub(super) corrupt: u64,
    pub(super) late_frames: u64,
    pub(super) errors: u64,
    pub(super) alloc: AllocStats,
    /// malloc-family calls of the thread taking the mark (the inference thread: the window sink runs there).
    pub(super) malloc_thread: MallocCounts,
    /// malloc-family calls of the whole process.
    pub(super) malloc_process: MallocCounts,
    /// glibc's heap in use (`mallinfo2`), when readable.
    pub(super) heap_in_use: Option<u64>,
}

impl Mark {
    pub(super) fn empty() -> Self {
        Mark {
            at_ns: 0,
            stages: std::array::from_fn(|_| HistogramSnapshot::default()),
            captured: 0,
            dropped: 0,
            corrupt: 0,
            late_frames: 0,
            errors: 0,
            alloc: AllocStats::default(),
            malloc_thread: MallocCounts::default(),
            malloc_process: MallocCounts::default(),
            heap_in_use: None,
        }
    }

    /// Fills `self` from `stats` without allocating.
    pub(super) fn take(&mut self, stats: &Stats, scratch: &mut HistogramSnapshot) {
        for stage in Stage::ALL {
            stats.stage_snapshot(stage, &mut self.stages[stage.index()], scratch);
        }
        self.captured = stats.total(|c| &c.captured);
        self.dropped = stats.total(|c| &c.dropped);
        self.corrupt = stats.total(|c| &c.corrupt);
        self.late_frames = stats.total(|c| &c.late_frames);
        self.errors = stats.total(|c| &c.infer_errors)
            + stats.total(|c| &c.publish_errors)
            + stats.total(|c| &c.source_errors);
        self.alloc = ocellus::alloc::stats();
        // Read before mallinfo2, which may allocate inside glibc the first time.
        self.malloc_thread = malloc_count::this_thread();
        self.malloc_process = malloc_count::process();
        self.heap_in_use = ocellus::alloc::heap_in_use();
        self.at_ns = monotonic_ns();
    }
}

/// The measured window: the statistics at its start and end.
pub(super) struct Window {
    pub(super) start: Mark,
    pub(super) end: Mark,
    pub(super) scratch: HistogramSnapshot,
    pub(super) started: bool,
    /// The window ended at frame `warmup + frames + 1` (not cut short by a signal or a replay's end).
    pub(super) complete: bool,
    /// Frames the pipeline published in all, warm-up included.
    pub(super) published: u64,
}

impl Window {
    /// The window's histogram of one stage.
    pub(super) fn stage(&self, stage: Stage) -> HistogramSnapshot {
        let mut d = HistogramSnapshot::default();
        d.set_difference(
            &self.end.stages[stage.index()],
            &self.start.stages[stage.index()],
        );
        d
    }

    pub(super) fn frames(&self) -> u64 {
        if self.started {
            self.stage(Stage::EndToEnd).count
        } else {
            0
        }
    }

    pub(super) fn seconds(&self) -> f64 {
        self.end.at_ns.saturating_sub(self.start.at_ns) as f64 / 1e9
    }
}

/// The last sink of the benchmark's pipeline: snapshots the statistics when it publishes frame `warmup + 1`
/// and frame `warmup + frames + 1` (each time the statistics hold every earlier frame and nothing of the
/// current one), then hands the window over. Allocates nothing on the frame path.
pub(super) struct WindowSink {
    pub(super) stats: Arc<Stats>,
    pub(super) warmup: u64,
    pub(super) frames: u64,
    pub(super) seen: u64,
    pub(super) window: Option<Box<Window>>,
    pub(super) out: Arc<Mutex<Option<Box<Window>>>>,
}

impl WindowSink {
    pub(super) fn hand_over(&mut self) {
        if let Some(mut w) = self.window.take() {
            w.published = self.seen;
            if let Ok(mut slot) = self.out.lock() {
                *slot = Some(w);
            }
        }
    }
}

impl Sink for WindowSink {
    fn publish(&mut self, _: &FrameResult<'_>) -> Result<(), SinkError> {
        self.seen += 1;
        let Some(w) = self.window.as_mut() else {
            return Ok(());
        };
        if self.seen == self.warmup + 1 {
            w.start.take(&self.stats, &mut w.scratch);
            w.started = true;
        } else if self.seen == self.warmup + self.frames + 1 {
            w.end.take(&self.stats, &mut w.scratch);
            w.complete = true;
            self.hand_over();
        }
        Ok(())
    }

    /// Called on the inference thread after its last frame: a window cut short ends here.
    fn stop(&mut self) {
        if let Some(w) = self.window.as_mut() {
            if w.started {
                w.end.take(&self.stats, &mut w.scratch);
            }
        }
        self.hand_over();
    }
}

/// What the pipeline ran: the engine and variant `Runtime::build` chose.
pub(super) struct Ran {
    pub(super) engine: ocellus::manifest::EngineKind,
    pub(super) variant: ocellus::infer::RunVariant,
    pub(super) reason: String,
}

pub(super) fn run_pipeline(config: &Config, args: &BenchArgs) -> Result<(Window, Ran), Failure> {
    let interrupt = super::super::run::interrupt_flag()?;
    let out = Arc::new(Mutex::new(None));
    let (warmup, frames, slot) = (args.warmup, args.frames, Arc::clone(&out));
    let window_sink: SinkFactory = Box::new(move |stats| {
        Box::new(WindowSink {
            stats,
            warmup,
            frames,
            seen: 0,
            window: Some(Box::new(Window {
                start: Mark::empty(),
                end: Mark::empty(),
                scratch: HistogramSnapshot::default(),
                started: false,
                complete: false,
                published: 0,
            })),
            out: slot,
        })
    });
    let options = RuntimeOptions {
        max_frames: Some(args.warmup + args.frames + 1),
        shm: if args.no_shm {
            ShmTarget::Off
        } else {
            ShmTarget::Named(
                args.shm
                    .clone()
                    .unwrap_or_else(|| format!("ocellus-bench-{}", std::process::id())),
            )
        },
        extra_sinks: vec![window_sink],
        ..RuntimeOptions::default()
    };
    let mut pipeline = Runtime::build(config, options)?;
    let model = pipeline.model();
    let ran = Ran {
        engine: model.engine,
        variant: model.variant,
        reason: model.variant_reason.clone(),
    };
    pipeline.start()?;
    let stats = Arc::clone(pipeline.stats());
    let (mut last, mut last_change) = (0u64, Instant::now());
    let mut stalled = false;
    while !pipeline.wait(Duration::from_secs(1), &interrupt) {
        if interrupt.load(Ordering::SeqCst) {
            tracing::info!("signal received; stopping");
            break;
        }
        let now = stats.total(|c| &c.processed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() >= STALL {
            stalled = true;
            break;
        }
    }
    pipeline.stop();
    let window =
        out.lock().ok().and_then(|mut w| w.take()).ok_or_else(|| {
            Failure::runtime("the pipeline stopped without handing over its figures")
        })?;
    if stalled {
        return Err(Failure::runtime(format!(
            "no frame was published for {} s (after {} frames): see the log above for camera and model errors",
            STALL.as_secs(),
            window.published
        )));
    }
    if !window.started {
        return Err(Failure::runtime(format!(
            "the pipeline published {} frames, not even the {} warm-up frames: see the log above (a replay \
             without loop ends early; lower --warmup)",
            window.published, args.warmup
        )));
    }
    Ok((*window, ran))
}

/// `VmHWM` of /proc/self/status in bytes: the process's peak resident set.
pub(super) fn peak_rss_bytes() -> Option<u64> {
    ocellus::alloc::process_memory().map(|m| m.high_water)
}

/// The 1, 5 and 15 minute load averages (/proc/loadavg), to read the figures beside.
pub(super) fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}
