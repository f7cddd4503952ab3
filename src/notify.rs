//! systemd's service notification protocol (`sd_notify(3)`), spoken directly: no libsystemd.
//!
//! When systemd starts ocellus as a `Type=notify` service it sets `NOTIFY_SOCKET` (a unix datagram socket: a
//! path, or an abstract name written with a leading `@`) and, with `WatchdogSec=`, `WATCHDOG_USEC` (and
//! `WATCHDOG_PID`). ocellus sends newline-separated `KEY=VALUE` assignments, one datagram per message:
//!
//! * `READY=1` (with a first `STATUS=`) once the models are loaded and the pipeline has started;
//! * `STATUS=fps 29.8, frames 1200, late 3, dropped 2` every [`STATUS_PERIOD`] (shown by `systemctl status`);
//! * `WATCHDOG=1` every half watchdog interval, but **only if frames were published since the previous one**:
//!   a stalled pipeline (hung model, every camera lost) stops the pings and systemd restarts the service
//!   within about 1.5 intervals;
//! * `STOPPING=1` when shutdown begins.
//!
//! Without `NOTIFY_SOCKET` nothing is sent. A send that fails (systemd gone) is logged once and otherwise
//! ignored: notification never stops the frame path. All of this runs on the main thread, never on the frame
//! path. See docs/service.md.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::stats::Stats;

/// How often a `STATUS=` line is sent.
pub const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// Why the notification environment could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is not a socket ocellus can use: give a path starting with '/' or an abstract name starting with '@'")]
    Address(String),
    #[error("NOTIFY_SOCKET={address:?}: cannot create a datagram socket: {source}")]
    Socket {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "WATCHDOG_USEC={0:?} is not a positive number of microseconds: the watchdog stays off"
    )]
    WatchdogUsec(String),
}

/// The sending end of a notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
    address: String,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, or `None` when it is unset or empty (not started by systemd).
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => Notifier::connect(&v.to_string_lossy()).map(Some),
        }
    }

    /// A notifier for `address`: a filesystem path (`/run/systemd/notify`) or an abstract name (`@name`).
    pub fn connect(address: &str) -> Result<Notifier, NotifyError> {
        let target = if let Some(name) = address.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        } else if address.starts_with('/') {
            SocketAddr::from_pathname(address)
        } else {
            return Err(NotifyError::Address(address.to_owned()));
        }
        .map_err(|_| NotifyError::Address(address.to_owned()))?;
        let socket = UnixDatagram::unbound().map_err(|source| NotifyError::Socket {
            address: address.to_owned(),
            source,
        })?;
        Ok(Notifier {
            socket,
            target,
            address: address.to_owned(),
        })
    }

    /// The address as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends one message (newline-separated `KEY=VALUE` assignments) as one datagram.
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.target)
            .map(|_| ())
    }
}

/// The watchdog interval systemd asks for: `WATCHDOG_USEC`, if `WATCHDOG_PID` is unset or this process.
pub fn watchdog_from_env() -> Result<Option<Duration>, NotifyError> {
    let usec = std::env::var_os("WATCHDOG_USEC");
    let pid = std::env::var_os("WATCHDOG_PID");
    watchdog_from(
        usec.as_ref().map(|v| v.to_string_lossy()).as_deref(),
        pid.as_ref().map(|v| v.to_string_lossy()).as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_from_env`] on given values: the interval of `WATCHDOG_USEC = usec`, unless `WATCHDOG_PID = pid`
/// names a process other than `my_pid` (then the watchdog is someone else's and `None`).
pub fn watchdog_from(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Result<Option<Duration>, NotifyError> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(my_pid) {
            return Ok(None);
        }
    }
    match usec.trim().parse::<u64>() {
        Ok(us) if us > 0 => Ok(Some(Duration::from_micros(us))),
        _ => Err(NotifyError::WatchdogUsec(usec.to_owned())),
    }
}

/// When to send `WATCHDOG=1`: at most every half interval, and only when frames were published since the
/// previous ping (or, for the first, since the watchdog started).
#[derive(Debug, Clone)]
pub struct Watchdog {
    period: Duration,
    next: Instant,
    frames_at_last_ping: u64,
}

impl Watchdog {
    /// A watchdog of `interval` (systemd's `WatchdogSec`) starting at `now`, with `frames` published so far.
    pub fn new(interval: Duration, now: Instant, frames: u64) -> Watchdog {
        let period = (interval / 2).max(Duration::from_millis(1));
        Watchdog {
            period,
            next: now + period,
            frames_at_last_ping: frames,
        }
    }

    /// Half the interval: how often a ping is considered.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Whether `WATCHDOG=1` is due at `now`, with `frames` published so far. Call at least every
    /// [`Watchdog::period`].
    pub fn poll(&mut self, now: Instant, frames: u64) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.period;
        if frames == self.frames_at_last_ping {
            return false;
        }
        self.frames_at_last_ping = frames;
        true
    }
}

/// What the service tells systemd, driven by the main thread: `READY=1`, `STATUS=`, `WATCHDOG=1`,
/// `STOPPING=1`. Inert without a notifier.
#[derive(Debug)]
pub struct ServiceNotifier {
    notifier: Option<Notifier>,
    watchdog: Option<Watchdog>,
    watchdog_interval: Option<Duration>,
    next_status: Instant,
    prev_frames: u64,
    prev_at: Instant,
    send_failed: bool,
    pings: u64,
}

impl ServiceNotifier {
    /// From the environment systemd sets; problems with it are logged as warnings (and leave that part off).
    pub fn from_env() -> ServiceNotifier {
        let notifier = Notifier::from_env()
            .inspect_err(|e| tracing::warn!(error = %e, "no service notification"))
            .ok()
            .flatten();
        let watchdog = if notifier.is_some() {
            watchdog_from_env()
                .inspect_err(|e| tracing::warn!(error = %e, "no watchdog"))
                .ok()
                .flatten()
        } else {
            None
        };
        if let Some(n) = &notifier {
            tracing::info!(
                socket = n.address(),
                watchdog_ms = watchdog.map(|w| w.as_millis() as u64),
                "systemd notification on"
            );
        }
        ServiceNotifier::new(notifier, watchdog)
    }

    /// With an explicit notifier and watchdog interval (the watchdog only runs with a notifier).
    pub fn new(notifier: Option<Notifier>, watchdog: Option<Duration>) -> ServiceNotifier {
        let now = Instant::now();
        ServiceNotifier {
            watchdog_interval: watchdog.filter(|_| notifier.is_some()),
            notifier,
            watchdog: None,
            next_status: now,
            prev_frames: 0,
            prev_at: now,
            send_failed: false,
            pings: 0,
        }
    }

    /// Whether anything is sent at all.
    pub fn is_active(&self) -> bool {
        self.notifier.is_some()
    }

    /// `WATCHDOG=1` messages sent so far.
    pub fn pings(&self) -> u64 {
        self.pings
    }

    /// How long the caller may wait between [`ServiceNotifier::tick`]s.
    pub fn tick_interval(&self) -> Duration {
        let w = self
            .watchdog
            .as_ref()
            .map(Watchdog::period)
            .or(self.watchdog_interval.map(|i| i / 2))
            .unwrap_or(STATUS_PERIOD);
        w.min(STATUS_PERIOD)
    }

    fn send(&mut self, message: &str) {
        let Some(n) = &self.notifier else { return };
        if let Err(e) = n.send(message) {
            if !self.send_failed {
                tracing::warn!(socket = n.address(), error = %e, "cannot notify systemd (further failures are not logged)");
                self.send_failed = true;
            }
        }
    }

    /// `READY=1` with a first `STATUS=`; starts the watchdog. Call once the pipeline has started.
    pub fn ready(&mut self, stats: &Stats, now: Instant) {
        let frames = stats.total(|c| &c.processed);
        self.prev_frames = frames;
        self.prev_at = now;
        self.next_status = now + STATUS_PERIOD;
        self.watchdog = self
            .watchdog_interval
            .map(|i| Watchdog::new(i, now, frames));
        let message = format!("READY=1\nSTATUS={}", status_text(stats, 0.0));
        self.send(&message);
    }

    /// Sends what is due at `now`: `WATCHDOG=1` (if frames flowed since the last), `STATUS=` every
    /// [`STATUS_PERIOD`]. Call at least every [`ServiceNotifier::tick_interval`].
    pub fn tick(&mut self, stats: &Stats, now: Instant) {
        if self.notifier.is_none() {
            return;
        }
        let frames = stats.total(|c| &c.processed);
        if self.watchdog.as_mut().is_some_and(|w| w.poll(now, frames)) {
            self.pings += 1;
            self.send("WATCHDOG=1");
        }
        if now >= self.next_status {
            let dt = now.saturating_duration_since(self.prev_at).as_secs_f64();
            let fps = if dt > 0.0 {
                frames.saturating_sub(self.prev_frames) as f64 / dt
            } else {
                0.0
            };
            self.prev_frames = frames;
            self.prev_at = now;
            self.next_status = now + STATUS_PERIOD;
            let message = format!("STATUS={}", status_text(stats, fps));
            self.send(&message);
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1");
    }
}

/// `fps 29.8, frames 1200, late 3, dropped 2` (plus `, cameras lost 1` when any is).
pub fn status_text(stats: &Stats, fps: f64) -> String {
    let mut s = format!(
        "fps {fps:.1}, frames {}, late {}, dropped {}",
        stats.total(|c| &c.processed),
        stats.total(|c| &c.late_frames),
        stats.total(|c| &c.dropped),
    );
    let lost = stats
        .iter()
        .filter(|c| c.counters.lost.load(std::sync::atomic::Ordering::Relaxed))
        .count();
    if lost > 0 {
        s.push_str(&format!(", cameras lost {lost}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_every_half_interval_only_while_frames_flow() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut w = Watchdog::new(Duration::from_millis(200), t0, 0);
        assert_eq!(w.period(), Duration::from_millis(100));
        assert!(!w.poll(ms(50), 5), "not due before half the interval");
        assert!(w.poll(ms(100), 5));
        assert!(!w.poll(ms(150), 9), "at most one ping per half interval");
        assert!(w.poll(ms(200), 9));
        assert!(
            !w.poll(ms(300), 9),
            "no frames since the last ping: no ping"
        );
        assert!(!w.poll(ms(400), 9));
        assert!(w.poll(ms(500), 10), "frames again: pings again");
    }

    #[test]
    fn watchdog_interval_comes_from_usec_for_this_pid_only() {
        let ms = |n| Ok(Some(Duration::from_millis(n)));
        assert_eq!(
            watchdog_from(Some("5000000"), None, 7).map_err(|e| e.to_string()),
            ms(5000)
        );
        assert_eq!(
            watchdog_from(Some("250000"), Some("7"), 7).map_err(|e| e.to_string()),
            ms(250)
        );
        assert_eq!(
            watchdog_from(Some("250000"), Some("8"), 7).map_err(|e| e.to_string()),
            Ok(None)
        );
        assert_eq!(
            watchdog_from(None, Some("7"), 7).map_err(|e| e.to_string()),
            Ok(None)
        );
        for bad in ["0", "-1", "5s", ""] {
            let e = watchdog_from(Some(bad), None, 7)
                .expect_err(bad)
                .to_string();
            assert!(
                e.contains("WATCHDOG_USEC") && e.contains("stays off"),
                "{e}"
            );
        }
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(Notifier::connect("/run/systemd/notify").is_ok());
        assert!(Notifier::connect("@ocellus-test").is_ok());
        for bad in ["relative/path", "vsock:2:1234", ""] {
            let e = Notifier::connect(bad).expect_err(bad).to_string();
            assert!(e.contains("'/'") && e.contains("'@'"), "{e}");
        }
    }

    #[test]
    fn status_text_counts() {
        let stats = Stats::new(2);
        let c = &stats.camera(1).counters;
        c.processed
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        c.late_frames
            .fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        c.dropped.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            status_text(&stats, 29.84),
            "fps 29.8, frames 7, late 2, dropped 3"
        );
        c.lost.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(status_text(&stats, 0.0).ends_with(", cameras lost 1"));
    }
}
