//! The flight recorder through the `ocellus` binary: `ocellus record --trigger` over the control socket,
//! SIGUSR1, a refused peer (SO_PEERCRED), `ocellus top` showing recordings made; a full disk (a small tmpfs
//! in a private mount namespace) counted and logged while every frame is still processed; `ocellus record
//! --frames` then `ocellus replay --require-identical` with its JSON and SVG.
//!
//! Needs root (setpriv to another uid, unshare + mount for the full disk), as the service and HIL tests do.
//! Every wait has a watchdog that kills the children and fails the test; no elapsed time is asserted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocellus::recorder::Recording;

#[path = "common/cli.rs"]
mod cli;
use cli::{ocellus, root};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ocellus")
}

const WATCHDOG: Duration = Duration::from_secs(300);

/// A synthetic 160x120 YUYV camera at 30 fps, the demo model, and `extra`, written to `dir/ocellus.toml`.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("ocellus.toml");
    std::fs::write(
        &path,
        format!(
            "[[camera]]\nname = \"front\"\nsource = \"synthetic\"\npixel-format = \"yuyv\"\nwidth = 160\nheight = 120\n\
             fps = 30\n\n[model]\nmanifest = \"{}\"\nvariant = \"fp32\"\nthreads = 1\n\n[memory]\nlock = false\n\n{extra}\n",
            root().join("models/demo/manifest.toml").display()
        ),
    )
    .expect("write config");
    path
}

/// Runs `cmd` to completion under the watchdog.
fn finish(cmd: Command) -> Output {
    cli::finish(cmd, WATCHDOG)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running `ocellus run`, its stderr collected line by line; killed on drop.
struct Service {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn spawn(mut cmd: Command) -> Service {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ocellus run");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
        Service { child, stderr }
    }

    fn log(&self) -> String {
        self.stderr.lock().expect("lines").join("\n")
    }

    fn wait_log(&mut self, what: &str) {
        let until = Instant::now() + WATCHDOG;
        while !self.log().contains(what) {
            assert!(
                Instant::now() < until,
                "watchdog: no '{what}' in the log:\n{}",
                self.log()
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ocellus run exited ({status}) before '{what}':\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a status line reports at least `n` frames (run with `--status-interval`).
    fn wait_frames(&mut self, n: u64) {
        let until = Instant::now() + WATCHDOG;
        loop {
            let done = self.stderr.lock().expect("lines").iter().any(|l| {
                l.split_once("| frames ")
                    .and_then(|(_, rest)| rest.split(' ').next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v >= n)
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < until,
                "watchdog: not {n} frames:\n{}",
                self.log()
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ocellus run exited ({status}) before {n} frames:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its stdout and the log.
    fn wait(mut self) -> (std::process::ExitStatus, String, String) {
        let until = Instant::now() + WATCHDOG;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut out = String::new();
                if let Some(mut o) = self.child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut out);
                }
                std::thread::sleep(Duration::from_millis(100));
                return (status, out, self.log());
            }
            assert!(
                Instant::now() < until,
                "watchdog: ocellus run did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn recordings(dir: &Path) -> Vec<PathBuf> {
    ocellus::recorder::recordings_in(dir)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

#[test]
fn triggered_by_command_and_sigusr1_refused_for_strangers_and_shown_by_top() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("rec");
    let socket = dir.path().join("trigger.sock");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[recorder]\nenabled = true\nframes = 30\nafter = 0.2\non-late = []\ndir = \"{}\"\nsocket = \"{}\"\n",
            rec.display(),
            socket.display()
        ),
    );
    let shm = format!("ocellus-test-{}-recorder", std::process::id());
    let mut cmd = ocellus();
    cmd.args(["run", "--config"]).arg(&cfg).args([
        "--duration",
        "240",
        "--status-interval",
        "0.1",
        "--shm",
        &shm,
    ]);
    let mut service = Service::spawn(cmd);
    service.wait_log("trigger a flight recording");
    service.wait_frames(40);

    // The command, waiting for the recording.
    let mut trigger = ocellus();
    trigger
        .args(["record", "--trigger", "--wait", "--socket"])
        .arg(&socket);
    let out = finish(trigger);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        text(&out.stderr),
        service.log()
    );
    let path = PathBuf::from(
        stdout
            .trim()
            .strip_prefix("recorded ")
            .expect("recorded <path>"),
    );
    let first = Recording::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first.header.trigger.as_ref().map(|t| t.kind.as_str()),
        Some("command")
    );
    assert_eq!(first.header.cameras[0].frames, 30);

    // SIGUSR1.
    service.signal("-USR1");
    let until = Instant::now() + WATCHDOG;
    let second = loop {
        let found = recordings(&rec)
            .into_iter()
            .filter(|p| p != &path)
            .find_map(|p| Recording::open(&p).ok());
        if let Some(r) = found {
            break r;
        }
        assert!(
            Instant::now() < until,
            "watchdog: no recording after SIGUSR1:\n{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        second.header.trigger.as_ref().map(|t| t.kind.as_str()),
        Some("signal")
    );

    // Another user may reach the socket's file (opened up here on purpose) but is refused by its
    // credentials.
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [(dir.path(), 0o755), (socket.as_path(), 0o666)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let mut stranger = Command::new("setpriv");
    stranger
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
        .args(["record", "--trigger", "--socket"])
        .arg(&socket);
    let out = finish(stranger);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("uid 65534"),
        "{stderr}"
    );
    assert_eq!(
        recordings(&rec).len(),
        2,
        "the refused trigger recorded nothing"
    );

    // `ocellus top` shows them (the heartbeat copies the counters every period).
    let until = Instant::now() + WATCHDOG;
    loop {
        let out = finish({
            let mut c = ocellus();
            c.args(["top", "--shm", &shm, "--iterations", "1"]);
            c
        });
        let screen = text(&out.stdout);
        if screen.contains("recordings 2 made 0 dropped 0 failed") {
            break;
        }
        assert!(Instant::now() < until, "watchdog: top shows {screen}");
        std::thread::sleep(Duration::from_millis(100));
    }

    service.signal("-TERM");
    let (status, stdout, log) = service.wait();
    assert!(status.success(), "{log}");
    assert!(stdout.contains("recordings: 2 made"), "{stdout}");
    assert!(log.contains("recorder trigger refused"), "{log}");
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[test]
fn a_full_disk_is_counted_and_logged_while_every_frame_is_processed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = dir.path().join("rec");
    std::fs::create_dir(&rec).expect("mkdir");
    // A 30-frame window of 160x120 YUYV is about 1.3 MiB; the tmpfs holds 256 KiB.
    let cfg = write_config(
        dir.path(),
        &format!(
            "[recorder]\nenabled = true\nframes = 30\nafter = 0\non-late = []\ndir = \"{}\"\nsocket = \"{}\"\n",
            rec.display(),
            dir.path().join("trigger.sock").display()
        ),
    );
    let mut cmd = Command::new("unshare");
    cmd.current_dir(root()).stdin(Stdio::null()).args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs -o size=256k tmpfs \"$1\" && exec \"$2\" run --config \"$3\" --frames 150 --status-interval 0.1 --no-shm",
        "sh",
    ]);
    cmd.arg(&rec).arg(bin()).arg(&cfg);
    let mut service = Service::spawn(cmd);
    service.wait_log("trigger a flight recording");
    service.wait_frames(40);
    service.signal("-USR1");
    let (status, stdout, log) = service.wait();
    assert!(status.success(), "{stdout}\n{log}");
    assert!(
        stdout.starts_with("150 frames"),
        "every frame was processed: {stdout}"
    );
    assert!(
        stdout.contains("0 made") && stdout.contains("1 failed"),
        "{stdout}"
    );
    assert!(
        log.contains("flight recording not written") && log.contains("No space left on device"),
        "{log}"
    );
    assert!(
        recordings(&rec).is_empty(),
        "nothing leaks outside the namespace's tmpfs"
    );
}

#[test]
fn record_frames_then_replay_reproduces_them_with_json_and_svg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "");
    let out_dir = dir.path().join("capture");
    let out = finish({
        let mut c = ocellus();
        c.args(["record", "--frames", "24", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out_dir);
        c
    });
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("recorded 24 frames"), "{stdout}");
    let rec = Recording::open(&out_dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rec.header.cameras[0].frames, 24);
    assert!(rec.header.trigger.is_none());

    // A second capture into the same directory is refused.
    let again = finish({
        let mut c = ocellus();
        c.args(["record", "--frames", "2", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&out_dir);
        c
    });
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("already holds a recording"));

    let (json, svg) = (
        dir.path().join("replay.json"),
        dir.path().join("replay.svg"),
    );
    let out = finish({
        let mut c = ocellus();
        c.arg("replay")
            .arg(&out_dir)
            .arg("--config")
            .arg(&cfg)
            .arg("--json")
            .arg(&json)
            .arg("--plot")
            .arg(&svg)
            .arg("--require-identical");
        c
    });
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("identical: every frame"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid JSON");
    assert_eq!(report["identical"], true);
    assert_eq!(report["frames"], 24);
    assert_eq!(report["top1_agreement"], 1.0);
    let picture = std::fs::read_to_string(&svg).expect("svg");
    assert!(picture.starts_with("<?xml") && picture.contains("24 frames, bit-identical"));

    // A bad recording is refused with exit code 2 and the problem named.
    std::fs::write(out_dir.join("cam0.results"), b"OCRESULT").expect("clobber");
    let out = finish({
        let mut c = ocellus();
        c.arg("replay").arg(&out_dir);
        c
    });
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cam0.results"),
        "{}",
        text(&out.stderr)
    );
}
