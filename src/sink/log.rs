//! The log sink.

use super::{FrameResult, Sink, SinkError};

/// Logs every result at `debug` level (camera, sequence, top prompt and score, end-to-end latency, flags).
///
/// When `debug` is not enabled for this module, `publish` costs one level check and allocates nothing.
#[derive(Debug, Default)]
pub struct LogSink;

impl LogSink {
    pub fn new() -> Self {
        LogSink
    }
}

impl Sink for LogSink {
    fn publish(&mut self, r: &FrameResult<'_>) -> Result<(), SinkError> {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (top, score) = match r.top() {
                Some((i, s)) => (r.labels.get(i).map(String::as_str).unwrap_or("?"), s),
                None => ("-", 0.0),
            };
            tracing::debug!(
                camera = r.camera,
                seq = r.sequence,
                top,
                score,
                truth = r.ground_truth,
                e2e_ms = r.end_to_end_ns() as f64 / 1e6,
                flags = r.flags,
                prompts = r.prompt_version,
                "frame"
            );
        }
        Ok(())
    }
}
