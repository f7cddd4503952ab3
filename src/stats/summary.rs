//! What a run did, for people (the exit table) and machines (`--summary-json`).

use super::histogram::HistogramSnapshot;
use super::stage::Stage;

pub(super) fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

pub(super) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Latency figures of one stage over a run, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageSummary {
    pub stage: &'static str,
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Frames over this stage's deadline.
    pub late: u64,
    /// By how much the last late frame overran the deadline ([`Stats::last_overrun_ns`]); 0 if never late.
    pub last_overrun_ms: f64,
}

impl StageSummary {
    pub(super) fn from_snapshot(stage: Stage, s: &HistogramSnapshot, late: u64) -> Self {
        StageSummary {
            stage: stage.name(),
            count: s.count,
            mean_ms: s.mean_ns() / 1e6,
            p50_ms: ms(s.percentile(0.5)),
            p90_ms: ms(s.percentile(0.9)),
            p99_ms: ms(s.percentile(0.99)),
            p999_ms: ms(s.percentile(0.999)),
            max_ms: ms(s.max_ns),
            late,
            last_overrun_ms: 0.0,
        }
    }
}

/// Counters of one camera over a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraSummary {
    pub camera: usize,
    pub captured: u64,
    pub processed: u64,
    pub dropped: u64,
    pub corrupt: u64,
    pub infer_errors: u64,
    pub publish_errors: u64,
    pub source_errors: u64,
    pub restarts: u64,
    pub stalls: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub driver_dropped: u64,
    pub late_frames: u64,
    pub fps: f64,
    pub labelled: u64,
    pub correct: u64,
    pub unjudged: u64,
    pub accuracy: Option<f64>,
}

/// The recorder's counters over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecorderSummary {
    pub triggers: u64,
    pub made: u64,
    pub dropped: u64,
    pub errors: u64,
    pub removed: u64,
    pub frames_not_recorded: u64,
    pub bytes: u64,
}

impl RecorderSummary {
    pub(super) fn of(c: &super::RecorderCounters) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        RecorderSummary {
            triggers: c.triggers.load(Relaxed),
            made: c.made.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            errors: c.errors.load(Relaxed),
            removed: c.removed.load(Relaxed),
            frames_not_recorded: c.frames_not_recorded.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
        }
    }

    /// Whether anything was recorded or tried.
    pub fn is_active(&self) -> bool {
        self.triggers + self.made + self.dropped + self.errors + self.frames_not_recorded > 0
    }
}

/// What a run did: totals, per-stage latency, per-camera counters. `Display` prints the exit table;
/// `serde::Serialize` gives the machine-readable form (`ocellus run --summary-json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub duration_s: f64,
    /// Frames published, all cameras.
    pub frames: u64,
    pub fps: f64,
    pub captured: u64,
    pub dropped: u64,
    pub corrupt: u64,
    pub late_frames: u64,
    pub errors: u64,
    /// Camera faults, all cameras: stalls, disconnects, reopenings after either, frames the drivers dropped.
    pub stalls: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub driver_dropped: u64,
    pub labelled: u64,
    pub correct: u64,
    /// Frames with a ground truth that the prompt set does not name: they cannot be judged.
    pub unjudged: u64,
    /// Fraction of labelled frames whose top prompt equals the ground truth (synthetic source only).
    pub accuracy: Option<f64>,
    pub stages: Vec<StageSummary>,
    pub cameras: Vec<CameraSummary>,
    /// Recordings made, dropped and failed (`[recorder]`, `ocellus record`).
    pub recorder: RecorderSummary,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} frames in {:.2} s ({:.1} fps); captured {}, dropped {}, corrupt {}, late {}, errors {}",
            self.frames,
            self.duration_s,
            self.fps,
            self.captured,
            self.dropped,
            self.corrupt,
            self.late_frames,
            self.errors
        )?;
        if self.stalls + self.disconnects + self.reconnects + self.driver_dropped > 0 {
            writeln!(
                f,
                "camera faults: stalls {}, disconnects {}, reconnects {}, driver-dropped frames {}",
                self.stalls, self.disconnects, self.reconnects, self.driver_dropped
            )?;
        }
        if let Some(acc) = self.accuracy {
            writeln!(
                f,
                "top prompt = ground truth: {}/{} ({:.1} %)",
                self.correct,
                self.labelled,
                acc * 100.0
            )?;
        }
        let r = &self.recorder;
        if r.is_active() {
            writeln!(
                f,
                "recordings: {} made ({:.1} MiB), {} dropped (writer busy), {} failed, {} old ones removed{}",
                r.made,
                r.bytes as f64 / (1u64 << 20) as f64,
                r.dropped,
                r.errors,
                r.removed,
                if r.frames_not_recorded > 0 {
                    format!(", {} frames not recorded (writer behind)", r.frames_not_recorded)
                } else {
                    String::new()
                }
            )?;
        }
        if self.unjudged > 0 {
            writeln!(
                f,
                "top prompt = ground truth: cannot judge {} frames: the prompt set does not name their ground truth (the demo scenes' prompts)",
                self.unjudged
            )?;
        }
        writeln!(
            f,
            "{:<11} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9}",
            "stage (ms)", "count", "mean", "p50", "p90", "p99", "p99.9", "max", "late", "overrun"
        )?;
        for s in &self.stages {
            writeln!(
                f,
                "{:<11} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>6} {:>9.3}",
                s.stage,
                s.count,
                s.mean_ms,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms,
                s.late,
                s.last_overrun_ms
            )?;
        }
        if self.cameras.len() > 1 {
            for c in &self.cameras {
                writeln!(
                    f,
                    "camera {}: {} frames ({:.1} fps), captured {}, dropped {}, corrupt {}, late {}, source errors {}, restarts {}",
                    c.camera, c.processed, c.fps, c.captured, c.dropped, c.corrupt, c.late_frames,
                    c.source_errors, c.restarts
                )?;
                if c.stalls + c.disconnects + c.reconnects + c.driver_dropped > 0 {
                    writeln!(
                        f,
                        "camera {}: stalls {}, disconnects {}, reconnects {}, driver-dropped frames {}",
                        c.camera, c.stalls, c.disconnects, c.reconnects, c.driver_dropped
                    )?;
                }
            }
        }
        Ok(())
    }
}
