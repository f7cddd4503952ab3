//! The live status line, written from its own thread.

use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering::Relaxed;

use crate::stats::{Stage, Stats, StatusLine, STAGE_COUNT};

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

/// Logs deadline misses as they happen, one event per camera and stage that missed since the last poll:
/// `camera`, `stage`, `late` (misses since the last poll), `late_total` and `overrun_ms` (the newest miss's
/// overrun). Under systemd these are journal fields (`journalctl -u ocellus CAMERA=0 STAGE=encoder`). The
/// frame path only counts (atomics in [`Stats`]); the events are made here, on a background thread, so
/// logging never allocates or blocks on the frame path, and a storm of late frames is one line a second.
pub struct DeadlineLog {
    seen: Vec<[u64; STAGE_COUNT]>,
}

impl DeadlineLog {
    /// Starts from the counts `stats` holds now: misses before this are not logged.
    pub fn new(stats: &Stats) -> Self {
        DeadlineLog {
            seen: stats
                .iter()
                .map(|c| std::array::from_fn(|i| c.counters.late[i].load(Relaxed)))
                .collect(),
        }
    }

    /// Logs the misses counted since the last poll; returns how many events it logged.
    pub fn poll(&mut self, stats: &Stats) -> usize {
        let mut events = 0;
        for (camera, (c, seen)) in stats.iter().zip(self.seen.iter_mut()).enumerate() {
            for stage in Stage::ALL {
                let i = stage.index();
                let total = c.counters.late[i].load(Relaxed);
                if total > seen[i] {
                    let overrun_ns = c.counters.last_overrun_ns[i].load(Relaxed);
                    tracing::warn!(
                        camera,
                        stage = stage.name(),
                        late = total - seen[i],
                        late_total = total,
                        overrun_ms = overrun_ns as f64 / 1e6,
                        "deadline missed"
                    );
                    seen[i] = total;
                    events += 1;
                }
            }
        }
        events
    }
}

/// How often the reporter logs deadline misses.
const DEADLINE_POLL: Duration = Duration::from_secs(1);

/// From its own thread named `ocellus-status`: logs deadline misses every second ([`DeadlineLog`]) and,
/// with a `period`, writes the live one-line status (fps, per-stage p50/p99 over the last period, drops,
/// deadline misses) every `period`.
pub struct StatusReporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StatusReporter {
    /// Starts the reporter thread writing its status lines to `out` (none when `period` is `None`).
    pub fn spawn<W: Write + Send + 'static>(
        stats: Arc<Stats>,
        period: Option<Duration>,
        mode: StatusMode,
        mut out: W,
    ) -> std::io::Result<StatusReporter> {
        let (tx, rx) = mpsc::channel::<()>();
        let tick = period.map_or(DEADLINE_POLL, |p| p.min(DEADLINE_POLL));
        let thread = std::thread::Builder::new()
            .name("ocellus-status".into())
            .spawn(move || {
                let mut line = StatusLine::new(&stats);
                let mut deadlines = DeadlineLog::new(&stats);
                let mut written = false;
                let mut next_line = period.map(|p| Instant::now() + p);
                loop {
                    let stopped = !matches!(rx.recv_timeout(tick), Err(RecvTimeoutError::Timeout));
                    if stopped {
                        break;
                    }
                    deadlines.poll(&stats);
                    let now = Instant::now();
                    let (Some(due), Some(p)) = (next_line, period) else {
                        continue;
                    };
                    if now < due {
                        continue;
                    }
                    next_line = Some(due.max(now - p) + p);
                    let text = line.render(&stats, now);
                    let res = match mode {
                        StatusMode::Overwrite => write!(out, "\r\x1b[K{text}"),
                        StatusMode::Lines => writeln!(out, "{text}"),
                    };
                    if res.and_then(|_| out.flush()).is_err() {
                        // The status goes nowhere (stderr closed): keep logging deadline misses.
                        next_line = None;
                        continue;
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
            Some(Duration::from_millis(10)),
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

    #[test]
    fn deadline_log_reports_each_camera_and_stage_once_per_new_miss() {
        let stats = Stats::new(2);
        stats.camera(0).count_late(Stage::Encoder, 1_000_000);
        let mut log = DeadlineLog::new(&stats);
        assert_eq!(
            log.poll(&stats),
            0,
            "misses before the log started are not logged"
        );

        let out = Shared::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let events = tracing::subscriber::with_default(subscriber, || {
            stats.camera(0).count_late(Stage::Encoder, 2_000_000);
            stats.camera(0).count_late(Stage::Encoder, 3_500_000);
            stats.camera(1).count_late(Stage::EndToEnd, 7_000_000);
            let first = log.poll(&stats);
            let again = log.poll(&stats);
            (first, again)
        });
        assert_eq!(events, (2, 0));
        let text = String::from_utf8(out.0.lock().map(|v| v.clone()).unwrap_or_default())
            .expect("utf-8 log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("deadline missed"), "{text}");
        assert!(lines[0].contains("camera=0"), "{text}");
        assert!(lines[0].contains("stage=\"encoder\""), "{text}");
        assert!(
            lines[0].contains("late=2 late_total=3 overrun_ms=3.5"),
            "{text}"
        );
        assert!(lines[1].contains("camera=1"), "{text}");
        assert!(lines[1].contains("stage=\"end_to_end\""), "{text}");
        assert!(
            lines[1].contains("late=1 late_total=1 overrun_ms=7"),
            "{text}"
        );
    }
}
