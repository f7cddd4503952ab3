//! The one-line live status.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::histogram::HistogramSnapshot;
use super::stage::{Stage, STAGE_COUNT};
use super::summary::ms;
use super::Stats;

/// Stages shown in the one-line status.
const STATUS_STAGES: [Stage; 5] = [
    Stage::Dequeue,
    Stage::Prepare,
    Stage::Encoder,
    Stage::Resampler,
    Stage::EndToEnd,
];

/// Formats the one-line live status from [`Stats`], over the window since the previous call.
///
/// Holds its own snapshots and text buffer, allocated in `new`; [`StatusLine::render`] never allocates
/// (for any status that fits the preallocated 1 KiB line).
pub struct StatusLine {
    pub(super) line: String,
    prev: Box<[HistogramSnapshot; STAGE_COUNT]>,
    now: Box<[HistogramSnapshot; STAGE_COUNT]>,
    window: HistogramSnapshot,
    scratch: HistogramSnapshot,
    prev_processed: u64,
    prev_at: Instant,
}

impl StatusLine {
    pub fn new(stats: &Stats) -> Self {
        StatusLine {
            line: String::with_capacity(1024),
            prev: Box::new(std::array::from_fn(|_| HistogramSnapshot::default())),
            now: Box::new(std::array::from_fn(|_| HistogramSnapshot::default())),
            window: HistogramSnapshot::default(),
            scratch: HistogramSnapshot::default(),
            prev_processed: 0,
            prev_at: stats.started(),
        }
    }

    /// Renders the status for the window since the last call (or since start) and returns it.
    ///
    /// `fps 29.8 | dq 0.1/0.3 prep 0.4/0.6 enc 3.1/4.0 res 0.5/0.7 e2e 4.3/5.2 ms p50/p99 | drop 12 late 3 ...`
    pub fn render(&mut self, stats: &Stats, now: Instant) -> &str {
        self.line.clear();
        let dt = now.saturating_duration_since(self.prev_at).as_secs_f64();
        let processed = stats.total(|c| &c.processed);
        let fps = if dt > 0.0 {
            (processed - self.prev_processed.min(processed)) as f64 / dt
        } else {
            0.0
        };
        let _ = write!(self.line, "fps {fps:5.1} |");
        for &stage in &STATUS_STAGES {
            let i = stage.index();
            stats.stage_snapshot(stage, &mut self.now[i], &mut self.scratch);
            self.window.set_difference(&self.now[i], &self.prev[i]);
            let _ = write!(
                self.line,
                " {} {:.1}/{:.1}",
                stage.short(),
                ms(self.window.percentile(0.5)),
                ms(self.window.percentile(0.99))
            );
        }
        let late = stats.total(|c| &c.late_frames);
        let _ = write!(
            self.line,
            " ms p50/p99 | frames {} drop {} late {}",
            processed,
            stats.total(|c| &c.dropped),
            late,
        );
        if late > 0 {
            // Per stage: deadline misses and the last overrun, `(enc 3 +12.5ms e2e 1 +4.0ms)`.
            let mut first = true;
            for stage in Stage::ALL {
                let n = stats.total_late(stage);
                if n > 0 {
                    let _ = write!(
                        self.line,
                        "{}{} {n} +{:.1}ms",
                        if first { " (" } else { " " },
                        stage.short(),
                        ms(stats.last_overrun_ns(stage))
                    );
                    first = false;
                }
            }
            if !first {
                self.line.push(')');
            }
        }
        let _ = write!(self.line, " corrupt {}", stats.total(|c| &c.corrupt));
        let errors = stats.total(|c| &c.source_errors) + stats.total(|c| &c.infer_errors);
        if errors > 0 {
            let _ = write!(self.line, " err {errors}");
        }
        let lost = stats
            .iter()
            .filter(|c| c.counters.lost.load(Relaxed))
            .count();
        if lost > 0 {
            let _ = write!(self.line, " LOST {lost}");
        }
        let stalled = stats
            .iter()
            .filter(|c| c.counters.stalled.load(Relaxed))
            .count();
        if stalled > 0 {
            let _ = write!(self.line, " STALLED {stalled}");
        }
        let (stalls, reconnects, gaps) = (
            stats.total(|c| &c.stalls),
            stats.total(|c| &c.reconnects),
            stats.total(|c| &c.driver_dropped),
        );
        if stalls + reconnects + gaps > 0 {
            let _ = write!(
                self.line,
                " stalls {stalls} reconn {reconnects} drv-drop {gaps}"
            );
        }
        let r = &stats.recorder;
        let (made, dropped, failed) = (
            r.made.load(Relaxed),
            r.dropped.load(Relaxed),
            r.errors.load(Relaxed),
        );
        if made + dropped + failed > 0 {
            let _ = write!(self.line, " | rec {made} drop {dropped} err {failed}");
        }
        let labelled = stats.total(|c| &c.labelled);
        if labelled > 0 {
            let correct = stats.total(|c| &c.correct);
            let _ = write!(
                self.line,
                " | acc {:.1}%",
                correct as f64 * 100.0 / labelled as f64
            );
        }
        std::mem::swap(&mut self.prev, &mut self.now);
        self.prev_processed = processed;
        self.prev_at = now;
        &self.line
    }
}
