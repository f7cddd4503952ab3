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

/// Logs deadline misses: one event per camera and stage, at once for its first miss and then at most every
/// `every` while it keeps missing, with `camera`, `stage`, `late` (misses since its previous event),
/// `late_total` and `overrun_ms` (the newest miss's overrun). Under systemd these are journal fields
/// (`journalctl -u ocellus CAMERA=0 STAGE=encoder`). The frame path only counts (atomics in [`Stats`]); the
/// events are made here, on a background thread, so logging never allocates or blocks on the frame path, and
/// a camera that misses every frame for a day writes one line per `every`, not one per frame.
pub struct DeadlineLog {
    every: Duration,
    /// Per camera and stage: the count at its last event, and when that was.
    seen: Vec<[(u64, Option<Instant>); STAGE_COUNT]>,
}

impl DeadlineLog {
    /// Starts from the counts `stats` holds now (misses before this are not logged); an event per camera and
    /// stage at most every `every`.
    pub fn new(stats: &Stats, every: Duration) -> Self {
        DeadlineLog {
            every,
            seen: stats
                .iter()
                .map(|c| std::array::from_fn(|i| (c.counters.late[i].load(Relaxed), None)))
                .collect(),
        }
    }

    /// Logs what is due at `now`; returns how many events it logged.
    pub fn poll(&mut self, stats: &Stats, now: Instant) -> usize {
        let mut events = 0;
        for (camera, (c, seen)) in stats.iter().zip(self.seen.iter_mut()).enumerate() {
            for stage in Stage::ALL {
                let (logged, at) = &mut seen[stage.index()];
                let total = c.counters.late[stage.index()].load(Relaxed);
                let due = at.is_none_or(|t| now.saturating_duration_since(t) >= self.every);
                if total > *logged && due {
                    let overrun_ns = c.counters.last_overrun_ns[stage.index()].load(Relaxed);
                    tracing::warn!(
                        camera,
                        stage = stage.name(),
                        late = total - *logged,
                        late_total = total,
                        overrun_ms = overrun_ns as f64 / 1e6,
                        "deadline missed"
                    );
                    (*logged, *at) = (total, Some(now));
                    events += 1;
                }
            }
        }
        events
    }
}

/// The shortest time between two deadline events of one camera and stage.
const DEADLINE_LOG_EVERY: Duration = Duration::from_secs(10);

/// How often the reporter looks for deadline misses.
const DEADLINE_POLL: Duration = Duration::from_secs(1);

/// From its own thread named `ocellus-status`: logs deadline misses ([`DeadlineLog`], looked for every
/// second, an event per camera and stage at most every 10 s) and,
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
                let mut deadlines = DeadlineLog::new(&stats, DEADLINE_LOG_EVERY);
                let mut written = false;
                let mut next_line = period.map(|p| Instant::now() + p);
                loop {
                    let stopped = !matches!(rx.recv_timeout(tick), Err(RecvTimeoutError::Timeout));
                    if stopped {
                        break;
                    }
                    let now = Instant::now();
                    deadlines.poll(&stats, now);
                    let (Some(due), Some(p)) = (next_line, period) else {
                        continue;
                    };
                    if now < due {
                        continue;
                    }
                    // The next line a period after this one was due; a period from now if that has passed.
                    next_line = Some(Some(due + p).filter(|&n| n > now).unwrap_or(now + p));
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
    fn deadline_log_reports_each_camera_and_stage_at_once_then_at_most_every_interval() {
        let stats = Stats::new(2);
        stats.camera(0).count_late(Stage::Encoder, 1_000_000);
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let mut log = DeadlineLog::new(&stats, every);
        assert_eq!(
            log.poll(&stats, t0),
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
            let first = log.poll(&stats, t0);
            // More misses within the interval: counted, not logged until it has passed.
            stats.camera(0).count_late(Stage::Encoder, 4_000_000);
            stats.camera(0).count_late(Stage::Encoder, 5_000_000);
            let within = log.poll(&stats, t0 + every / 2);
            let after = log.poll(&stats, t0 + every);
            let quiet = log.poll(&stats, t0 + every * 3);
            [first, within, after, quiet]
        });
        assert_eq!(events, [2, 0, 1, 0]);
        let text = String::from_utf8(out.0.lock().map(|v| v.clone()).unwrap_or_default())
            .expect("utf-8 log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines.iter().all(|l| l.contains("deadline missed")),
            "{text}"
        );
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
        assert!(lines[2].contains("camera=0"), "{text}");
        assert!(
            lines[2].contains("late=2 late_total=5 overrun_ms=5"),
            "{text}"
        );
    }
}
