//! Where results go: the [`Sink`] trait, the log sink and the live status reporter.
//!
//! Sinks run on the inference thread, once per frame, with a [`FrameResult`] that borrows the pipeline's
//! preallocated buffers: a sink copies what it keeps (the shared-memory sink of issue 4 copies into its slot)
//! and must not block. [`LogSink`] only formats when its tracing level is enabled. The [`StatusReporter`] is
//! not a sink: it runs on its own thread and reads [`Stats`] only, so the status keeps moving (to 0 fps) when
//! frames stop.

use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::pipeline::FrameResult;
use crate::stats::{Stats, StatusLine};

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

/// How the status reporter writes its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMode {
    /// Rewrite one line in place (`\r`, clear to end of line): for a terminal.
    Overwrite,
    /// One line per period: for a log file or a pipe.
    Lines,
}

impl StatusMode {
    /// `Overwrite` when stderr is a terminal, else `Lines`.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            StatusMode::Overwrite
        } else {
            StatusMode::Lines
        }
    }
}

/// Writes the live one-line status (fps, per-stage p50/p99 over the last period, drops, deadline misses)
/// every `period` from its own thread named `ocellus-status`.
pub struct StatusReporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StatusReporter {
    /// Starts the reporter thread writing to `out`.
    pub fn spawn<W: Write + Send + 'static>(
        stats: Arc<Stats>,
        period: Duration,
        mode: StatusMode,
        mut out: W,
    ) -> std::io::Result<StatusReporter> {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ocellus-status".into())
            .spawn(move || {
                let mut line = StatusLine::new(&stats);
                let mut written = false;
                loop {
                    let stopped =
                        !matches!(rx.recv_timeout(period), Err(RecvTimeoutError::Timeout));
                    if stopped {
                        break;
                    }
                    let text = line.render(&stats, Instant::now());
                    let res = match mode {
                        StatusMode::Overwrite => write!(out, "\r\x1b[K{text}"),
                        StatusMode::Lines => writeln!(out, "{text}"),
                    };
                    if res.and_then(|_| out.flush()).is_err() {
                        break;
                    }
                    written = true;
                }
                if written && mode == StatusMode::Overwrite {
                    let _ = writeln!(out);
                    let _ = out.flush();
                }
            })?;
        Ok(StatusReporter {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (it wakes at once; at most one write is in flight).
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("the status reporter thread panicked");
            }
        }
    }
}

impl Drop for StatusReporter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reporter_writes_lines_and_stops_promptly() {
        let stats = Arc::new(Stats::new(1));
        stats.camera(0).counters.dropped.fetch_add(7, Relaxed);
        let out = Shared::default();
        let mut reporter = StatusReporter::spawn(
            stats.clone(),
            Duration::from_millis(10),
            StatusMode::Lines,
            out.clone(),
        )
        .expect("spawn reporter");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = out
                .0
                .lock()
                .map(|v| v.iter().filter(|&&b| b == b'\n').count());
            if n.unwrap_or(0) >= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "reporter wrote no status lines");
            std::thread::sleep(Duration::from_millis(5));
        }
        reporter.stop();
        let text = String::from_utf8(out.0.lock().map(|v| v.clone()).unwrap_or_default())
            .expect("utf-8 status");
        assert!(text.lines().all(|l| l.starts_with("fps ")), "{text}");
        assert!(text.contains("drop 7"), "{text}");
    }
}
