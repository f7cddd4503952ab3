//! The notify protocol over a real unix datagram socket, with the clock and the frame counter driven by the
//! test: READY=1 with a STATUS=, WATCHDOG=1 at half the interval while frames flow and none once they stop,
//! STATUS= every second, STOPPING=1; path and abstract addresses; and nothing at all without a socket.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ocellus::notify::{Notifier, ServiceNotifier, STATUS_PERIOD};
use ocellus::stats::Stats;

/// Every datagram waiting on `socket`, in order.
fn drain(socket: &UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).expect("nonblocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

fn bound_path() -> (tempfile::TempDir, UnixDatagram, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind");
    (dir, socket, path.display().to_string())
}

#[test]
fn ready_watchdog_while_frames_flow_status_and_stopping() {
    let (_dir, socket, address) = bound_path();
    let notifier = Notifier::connect(&address).expect("connect");
    let interval = Duration::from_millis(200);
    let mut service = ServiceNotifier::new(Some(notifier), Some(interval));
    assert!(service.is_active());
    assert_eq!(service.tick_interval(), Duration::from_millis(100));

    let stats = Stats::new(1);
    let frames = &stats.camera(0).counters.processed;
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    service.ready(&stats, t0);
    let got = drain(&socket);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0],
        "READY=1\nSTATUS=fps 0.0, frames 0, late 0, dropped 0"
    );

    // Frames flow for 1 s (3 per 100 ms tick): a ping every tick from the first half interval on.
    let mut ms = 0;
    while ms < 1000 {
        ms += 100;
        frames.fetch_add(3, Relaxed);
        service.tick(&stats, at(ms));
    }
    let got = drain(&socket);
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert_eq!(pings, 10, "{got:?}");
    // STATUS= once a second, with the frame rate over that second.
    let statuses: Vec<&String> = got.iter().filter(|m| m.starts_with("STATUS=")).collect();
    assert_eq!(statuses.len(), 1, "{got:?}");
    assert_eq!(
        statuses[0].as_str(),
        "STATUS=fps 30.0, frames 30, late 0, dropped 0"
    );

    // Frames stop: not one more ping, however long it lasts; STATUS= goes on.
    while ms < 3000 {
        ms += 100;
        service.tick(&stats, at(ms));
    }
    let got = drain(&socket);
    assert!(!got.iter().any(|m| m == "WATCHDOG=1"), "{got:?}");
    assert_eq!(
        got,
        vec![
            "STATUS=fps 0.0, frames 30, late 0, dropped 0".to_owned(),
            "STATUS=fps 0.0, frames 30, late 0, dropped 0".to_owned()
        ]
    );
    assert_eq!(service.pings(), 10);

    // A frame again: pings again (systemd would have restarted the service by now; the protocol allows it).
    frames.fetch_add(1, Relaxed);
    service.tick(&stats, at(ms + 100));
    assert_eq!(drain(&socket), vec!["WATCHDOG=1".to_owned()]);

    service.stopping();
    assert_eq!(drain(&socket), vec!["STOPPING=1".to_owned()]);
    assert_eq!(STATUS_PERIOD, Duration::from_secs(1));
}

#[test]
fn abstract_socket_names_work() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ocellus-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    let notifier = Notifier::connect(&format!("@{name}")).expect("connect");
    notifier.send("READY=1").expect("send");
    assert_eq!(drain(&socket), vec!["READY=1".to_owned()]);
}

#[test]
fn without_a_socket_nothing_is_sent_and_a_gone_socket_is_not_fatal() {
    let mut off = ServiceNotifier::new(None, Some(Duration::from_millis(100)));
    assert!(!off.is_active());
    let stats = Stats::new(1);
    off.ready(&stats, Instant::now());
    stats.camera(0).counters.processed.store(5, Relaxed);
    off.tick(&stats, Instant::now() + Duration::from_secs(1));
    assert_eq!(off.pings(), 0);
    // Without a notifier the watchdog is off too, so the caller ticks at the status period.
    assert_eq!(off.tick_interval(), STATUS_PERIOD);

    // systemd went away: sends fail, the notifier logs once and carries on.
    let (dir, socket, address) = bound_path();
    drop(socket);
    drop(dir);
    let mut gone = ServiceNotifier::new(
        Some(Notifier::connect(&address).expect("connect")),
        Some(Duration::from_millis(100)),
    );
    let t0 = Instant::now();
    gone.ready(&stats, t0);
    stats.camera(0).counters.processed.store(6, Relaxed);
    gone.tick(&stats, t0 + Duration::from_millis(60));
    assert_eq!(gone.pings(), 1, "the ping was attempted");
    gone.stopping();
}
