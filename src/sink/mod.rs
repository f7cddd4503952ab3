//! Where results go: the [`FrameResult`] of each frame, the [`Sink`] trait, and the sinks: the log
//! ([`LogSink`]), shared memory ([`ShmSink`]), the live status reporter ([`StatusReporter`]) and the
//! deadline log ([`DeadlineLog`]).
//!
//! Sinks run on the inference thread, once per frame, with a [`FrameResult`] that borrows the pipeline's
//! preallocated buffers: a sink copies what it keeps (the shared-memory sink copies into its slot) and must
//! not block. [`LogSink`] only formats when its tracing level is enabled. The [`StatusReporter`] is not a
//! sink: it runs on its own thread and reads [`Stats`](crate::stats::Stats) only, so the status keeps moving
//! (to 0 fps) when frames stop.

use crate::stats::STAGE_COUNT;

mod log;
mod shm;
mod status;

pub use log::LogSink;
pub use shm::{ShmSink, ShmSinkConfig};
pub use status::{DeadlineLog, StatusMode, StatusReporter};

/// Result flag: the camera's source is failing (set on frames taken while it is being restarted).
pub const FLAG_CAMERA_LOST: u32 = 1 << 16;
/// Result flag: the source was restarted since this camera's previous published frame.
pub const FLAG_CAMERA_RESTARTED: u32 = 1 << 17;
/// Result flag: scores are missing (no prompt set, or more prompts than the score buffer holds).
pub const FLAG_DEGRADED: u32 = 1 << 18;
/// Mask of the per-stage late bits ([`Stage::late_bit`](crate::stats::Stage::late_bit)).
pub const FLAG_LATE_MASK: u32 = (1 << STAGE_COUNT) - 1;

/// One frame's result, borrowing the inference thread's buffers for the duration of [`Sink::publish`].
#[derive(Debug, Clone, Copy)]
pub struct FrameResult<'a> {
    /// Camera index (order of the config's cameras).
    pub camera: usize,
    /// The source's frame sequence number.
    pub sequence: u64,
    /// Capture time, CLOCK_MONOTONIC ns (the driver's timestamp where there is one).
    pub capture_ns: u64,
    /// When publishing began, CLOCK_MONOTONIC ns.
    pub publish_ns: u64,
    /// Stage durations in ns, indexed by [`Stage::index`](crate::stats::Stage::index). `Publish` is 0 (it is under way) and `EndToEnd`
    /// runs to `publish_ns`; the statistics record both in full once all sinks have returned.
    pub stage_ns: [u64; STAGE_COUNT],
    /// Late bits ([`Stage::late_bit`](crate::stats::Stage::late_bit)) and `FLAG_*`.
    pub flags: u32,
    /// The pooled image embedding [E], L2-normalised.
    pub image_embeds: &'a [f32],
    /// The resampler's latents, row-major [L x Dl].
    pub latents: &'a [f32],
    /// (L, Dl).
    pub latents_shape: (usize, usize),
    /// One score per prompt (softmax over the prompt set); empty when `FLAG_DEGRADED`.
    pub scores: &'a [f32],
    /// The prompt set's labels, `labels[k]` scored by `scores[k]`.
    pub labels: &'a [String],
    /// Version of the prompt set that produced the scores.
    pub prompt_version: u64,
    /// Ground-truth class index (synthetic source).
    pub ground_truth: Option<u16>,
    /// Ground-truth label, the prompt text of the class (synthetic source).
    pub ground_truth_label: Option<&'static str>,
}

impl FrameResult<'_> {
    /// Index and score of the best prompt, if any.
    pub fn top(&self) -> Option<(usize, f32)> {
        argmax(self.scores)
    }

    /// Capture to publish, in ns.
    pub fn end_to_end_ns(&self) -> u64 {
        self.publish_ns.saturating_sub(self.capture_ns)
    }

    /// Whether any stage was late.
    pub fn is_late(&self) -> bool {
        self.flags & FLAG_LATE_MASK != 0
    }
}

pub fn argmax(scores: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &s) in scores.iter().enumerate() {
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best
}

/// Why a sink could not publish one result. The pipeline counts it (`publish_errors`) and goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("sink {sink}: write failed: {source}")]
    Io {
        sink: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("sink {sink} is closed and takes no more results")]
    Closed { sink: &'static str },
    #[error("sink {sink} rejected the result: {reason}")]
    Rejected {
        sink: &'static str,
        reason: &'static str,
    },
}

/// A consumer of per-frame results, called on the inference thread.
///
/// `publish` must not block and should not allocate (the frame path is held to zero allocations, issue 6);
/// `stop` is called once when the pipeline stops, after the last `publish`.
pub trait Sink: Send {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError>;
    fn stop(&mut self) {}
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        (**self).publish(r)
    }
    fn stop(&mut self) {
        (**self).stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_picks_the_first_best() {
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), Some((1, 0.7)));
    }
}
