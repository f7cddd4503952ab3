//! The live status line, written from its own thread.

use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::stats::{Stats, StatusLine};

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
