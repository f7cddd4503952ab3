//! `ocellus read` and `ocellus top` against a real `ocellus run`: a reader sees samples with the top prompt,
//! `top` prints the camera line, and after kill -9 of the writer the same `read --follow` process reports it
//! not alive, then follows a new `ocellus run` (new generation) without being restarted.
//!
//! Every wait has a watchdog that kills the children and fails the test instead of hanging CI; there is no
//! assertion on elapsed time. The guard kills every child and removes the segment however the test ends.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocellus::config::Config;

#[path = "common/cli.rs"]
mod cli;
use cli::{ocellus, root};

const WATCHDOG: Duration = Duration::from_secs(120);

/// Owns the child processes and the segment: kills and reaps the children and unlinks `/dev/shm/<name>` on
/// drop, whether the test passed or panicked.
struct Guard {
    name: String,
    children: Vec<Child>,
}

impl Guard {
    fn spawn(&mut self, cmd: &mut Command) -> usize {
        self.children.push(cmd.spawn().expect("spawn ocellus"));
        self.children.len() - 1
    }

    /// `ocellus run --shm <name>` for at most 30 s, quiet.
    fn start_writer(&mut self) -> usize {
        self.spawn(
            ocellus()
                .args(["-q", "run", "--status-interval", "0", "--duration", "30"])
                .args(["--shm", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    }

    fn kill_9(&mut self, index: usize) {
        let child = &mut self.children[index];
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(&self.name));
    }
}

/// Runs `ocellus args...` to completion under the watchdog.
fn run_once(args: &[&str]) -> Output {
    let mut cmd = ocellus();
    cmd.args(args);
    cli::finish(cmd, WATCHDOG)
}

/// Polls `ready` every 100 ms until it returns `Some`; panics with `what` and `context()` after the watchdog.
fn wait_for<T>(
    what: &str,
    mut ready: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let until = Instant::now() + WATCHDOG;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        if Instant::now() > until {
            panic!("watchdog: {what}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The generation (hex) in a `read` line that names one after `key`.
fn generation_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_once(key)
        .and_then(|(_, rest)| rest.split([' ', ';']).next())
}

#[test]
fn read_and_top_see_a_writer_and_follow_it_through_kill_9_and_restart() {
    let labels = Config::load_or_default(None)
        .expect("default config")
        .prompts
        .labels;
    let name = format!("ocellus-test-{}-read", std::process::id());
    let mut guard = Guard {
        name: name.clone(),
        children: Vec::new(),
    };

    // (a) once the writer publishes, a one-shot read succeeds with a sequence and a labelled top score.
    let first = guard.start_writer();
    let last = std::cell::RefCell::new(String::new());
    let out = wait_for(
        "`ocellus read` never succeeded against `ocellus run`",
        || {
            let o = run_once(&["read", "--shm", &name, "--top", "2"]);
            *last.borrow_mut() = format!(
                "exit {:?}\n--- stdout\n{}--- stderr\n{}",
                o.status.code(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        },
        || last.borrow().clone(),
    );
    let cam = out
        .lines()
        .find(|l| l.starts_with("cam 0 seq "))
        .unwrap_or_else(|| panic!("no camera line:\n{out}"));
    let top = cam
        .split_once(" top: ")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no top scores: {cam}"));
    assert!(
        labels.iter().any(|l| top.starts_with(l.as_str())),
        "the top prompt is not one of {labels:?}: {cam}"
    );

    // (c) `top` prints the writer line and the camera line.
    let o = run_once(&[
        "top",
        "--shm",
        &name,
        "--iterations",
        "2",
        "--interval-ms",
        "100",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains(" alive "), "{text}");
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("0 ")),
        "no camera 0 line:\n{text}"
    );

    // (b) kill -9 the writer; one `read --follow` process sees it dead, then follows a new writer.
    guard.kill_9(first);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = guard.spawn(
        ocellus()
            .args(["read", "--shm", &name, "--follow", "--interval-ms", "50"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let stdout = guard.children[reader].stdout.take().expect("stdout pipe");
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().expect("lines").push(line);
        }
    });
    let snapshot = || lines.lock().expect("lines").clone();
    let show = || snapshot().join("\n");
    let old_gen = wait_for(
        "`read --follow` did not report the killed writer as not alive",
        || {
            let l = snapshot();
            let stale = l.iter().any(|s| s.contains("is not alive"));
            let gen = l.iter().find_map(|s| generation_after(s, " generation "));
            stale.then(|| gen.map(str::to_owned)).flatten()
        },
        show,
    );
    let seen = snapshot().len();
    guard.start_writer();
    let new_gen = wait_for(
        "`read --follow` did not pick up the restarted writer",
        || {
            let l = snapshot();
            let restart = l[seen..]
                .iter()
                .position(|s| s.starts_with("writer restarted: generation "))?;
            let line = &l[seen + restart];
            l[seen + restart..]
                .iter()
                .any(|s| s.starts_with("cam 0 seq "))
                .then(|| generation_after(line, " -> ").map(str::to_owned))
                .flatten()
        },
        show,
    );
    assert_ne!(old_gen, new_gen, "{}", show());
    assert!(
        guard.children[reader]
            .try_wait()
            .expect("reader status")
            .is_none(),
        "the reader exited instead of following:\n{}",
        show()
    );
}

/// Issue 11's bug, end to end: `ocellus run` with `prompts.max = 4` and a watched prompts file of 2 prompts;
/// the file grows to 6 while it runs. The bigger set must be refused (it cannot fit the score buffers and the
/// segment's table, both sized at start-up): frames keep the 2-prompt set's scores and are not flagged
/// degraded. (Before the fix the watcher took the 6 prompts and every later frame was published degraded,
/// without scores.)
#[test]
fn a_prompts_file_grown_past_prompts_max_while_running_is_refused() {
    use ocellus::shm::{layout, ShmReader};

    let dir = tempfile::tempdir().expect("temp dir");
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a red circle\na blue square\n").expect("write prompts");
    let config = dir.path().join("ocellus.toml");
    std::fs::write(
        &config,
        format!(
            "[[camera]]\nsource = \"synthetic\"\nfps = 30\n\n[model]\nmanifest = \"{}\"\n\n\
             [prompts]\nfile = \"prompts.txt\"\nmax = 4\n\n[budgets]\nend-to-end-ms = 1000\n",
            root().join("models/demo/manifest.toml").display()
        ),
    )
    .expect("write config");
    let mut guard = Guard {
        name: format!("ocellus-test-prompts-max-{}", std::process::id()),
        children: Vec::new(),
    };
    let name = guard.name.clone();
    guard.spawn(
        ocellus()
            .args(["-q", "run", "--status-interval", "0", "--duration", "60"])
            .arg("--config")
            .arg(&config)
            .args(["--shm", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let mut reader = wait_for(
        "the writer's first sample",
        || {
            let mut r = ShmReader::open(&name).ok()?;
            let mut s = r.new_sample();
            r.read_latest(0, &mut s).ok()?;
            Some(r)
        },
        || format!("segment {name}"),
    );
    let mut sample = reader.new_sample();
    let before = reader.read_latest(0, &mut sample).expect("read").sequence;
    assert_eq!(sample.num_scores, 2);

    std::fs::write(
        &prompts,
        "a red circle\na blue square\na green triangle\na yellow cross\na red square\na blue circle\n",
    )
    .expect("grow the prompts file");
    // The watcher polls every 250 ms: look at frames published over the next 2 s (about 60 frames).
    let until = Instant::now() + Duration::from_secs(2);
    let mut checked = 0;
    let mut last = before;
    while Instant::now() < until || checked < 10 {
        let info = reader.read_latest(0, &mut sample).expect("read");
        if info.sequence != last {
            last = info.sequence;
            checked += 1;
            assert_eq!(
                sample.meta.flags & layout::FLAG_DEGRADED,
                0,
                "frame {} published degraded after the prompts file outgrew prompts.max",
                info.sequence
            );
            assert_eq!(sample.num_scores, 2, "frame {}", info.sequence);
        }
        assert!(
            Instant::now() < until + WATCHDOG,
            "watchdog: too few new frames"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let table = reader.prompts().expect("prompt table");
    assert_eq!(table.labels, ["a red circle", "a blue square"]);
}
