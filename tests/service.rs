//! `ocellus run` as a systemd service, without systemd: the test owns the notification socket (a real unix
//! datagram socket, path or abstract name) and sets `NOTIFY_SOCKET` and `WATCHDOG_USEC` as systemd would.
//!
//! * READY=1, STATUS= and WATCHDOG=1 at half the interval while frames flow; SIGTERM gives STOPPING=1, exit 0,
//!   the shared-memory segment marked stopped and every thread joined;
//! * a stalled inference thread (`[testing] stall-after-frames`) stops the pings while the process lives on;
//! * `[realtime]` is applied to the real threads (affinity and SCHED_FIFO read back from the kernel), and a
//!   refused setting is a warning, or exit 2 with `strict = true`.
//!
//! Counts are asserted with wide margins, never durations; every wait has a generous limit that fails the test
//! (and kills the child) instead of hanging CI.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ocellus::rt::{self, SchedPolicy};
use ocellus::shm::ShmReader;

/// Limit of any one wait (start-up loads the model; CI machines are slow and busy).
const LIMIT: Duration = Duration::from_secs(180);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config for a small synthetic camera and the demo model on `threads` threads, with `extra` TOML appended.
fn write_config(dir: &Path, threads: usize, extra: &str) -> PathBuf {
    let text = format!(
        "[[camera]]\nname = \"cam\"\nsource = \"synthetic\"\npixel-format = \"yuyv\"\nwidth = 160\n\
         height = 120\nfps = 30\n\n[model]\nmanifest = {:?}\nvariant = \"fp32\"\nthreads = {threads}\n\n\
         [prompts]\nlabels = [\"a red circle\", \"a blue square\"]\n\n{extra}\n",
        root()
            .join("models/demo/manifest.toml")
            .display()
            .to_string()
    );
    let path = dir.join("ocellus.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// One received datagram.
#[derive(Debug, Clone)]
struct Message {
    at: Instant,
    text: String,
}

/// The systemd side: a datagram socket and a thread collecting what arrives.
struct NotifySocket {
    address: String,
    messages: Arc<Mutex<Vec<Message>>>,
    _dir: Option<tempfile::TempDir>,
}

impl NotifySocket {
    fn bind(socket: UnixDatagram, address: String, dir: Option<tempfile::TempDir>) -> Self {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test (and its Arc) is gone: the strong count drops to this thread's alone.
            while Arc::strong_count(&sink) > 1 {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().expect("messages").push(Message {
                        at: Instant::now(),
                        text,
                    });
                }
            }
        });
        NotifySocket {
            address,
            messages,
            _dir: dir,
        }
    }

    /// A socket at a path in a temporary directory.
    fn path() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        Self::bind(socket, path.display().to_string(), Some(dir))
    }

    /// A socket with an abstract name (`@...` in NOTIFY_SOCKET).
    fn abstract_name(tag: &str) -> Self {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ocellus-test-{}-{tag}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
        Self::bind(socket, format!("@{name}"), None)
    }

    fn messages(&self) -> Vec<Message> {
        self.messages.lock().expect("messages").clone()
    }

    /// Assignments (`KEY=VALUE` lines) received so far, with their arrival times.
    fn assignments(&self) -> Vec<(Instant, String)> {
        self.messages()
            .into_iter()
            .flat_map(|m| {
                m.text
                    .lines()
                    .map(|l| (m.at, l.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.assignments().iter().filter(|(_, l)| l == line).count()
    }

    fn last_status(&self) -> Option<String> {
        self.assignments()
            .into_iter()
            .rev()
            .find_map(|(_, l)| l.strip_prefix("STATUS=").map(str::to_owned))
    }
}

/// A field of a `STATUS=` line (`fps 29.8, frames 120, late 0, dropped 2`).
fn status_field(status: &str, key: &str) -> Option<f64> {
    status
        .split(", ")
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

/// The `ocellus run` child; killed on drop if still running.
struct Service {
    child: Child,
    stderr: PathBuf,
    shm: String,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(format!("/dev/shm/{}", self.shm));
    }
}

impl Service {
    /// Starts `ocellus run` with `config_extra`, notifying `socket`, with a watchdog of `watchdog`.
    fn start(
        tag: &str,
        config_extra: &str,
        socket: &NotifySocket,
        watchdog: Option<Duration>,
        wrap: &[&str],
    ) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        // With [realtime], two model threads: the engine's worker threads must get the inference settings.
        let threads = if config_extra.contains("[realtime]") {
            2
        } else {
            1
        };
        let config = write_config(dir.path(), threads, config_extra);
        let stderr = dir.path().join("stderr.txt");
        let shm = format!("ocellus-test-{}-svc-{tag}", std::process::id());
        let bin = env!("CARGO_BIN_EXE_ocellus");
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["run", "--status-interval", "0", "--shm", &shm, "--config"])
            .arg(&config)
            .current_dir(root())
            .env("NOTIFY_SOCKET", &socket.address)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                std::fs::File::create(dir.path().join("stdout.txt")).expect("stdout file"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("stderr file"),
            ));
        if let Some(w) = watchdog {
            cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
        }
        let child = cmd.spawn().expect("spawn ocellus run");
        Service {
            child,
            stderr,
            shm,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stdout.txt")).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits until `done` holds; panics (the child is killed on drop) after `LIMIT` or if the child exits.
    fn wait_until(&mut self, what: &str, socket: &NotifySocket, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + LIMIT;
        while !done() {
            if !self.running() {
                panic!(
                    "ocellus run exited while waiting for {what}\nmessages: {:?}\n{}",
                    socket.assignments(),
                    self.stderr()
                );
            }
            if Instant::now() > until {
                panic!(
                    "watchdog: no {what} within {LIMIT:?}\nmessages: {:?}\n{}",
                    socket.assignments(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (panics after `LIMIT`).
    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) with a valid signal on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        let until = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > until {
                panic!(
                    "watchdog: ocellus run ignored SIGTERM for {LIMIT:?}\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the child to exit by itself (panics after `LIMIT`).
    fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > until {
                panic!("watchdog: ocellus run did not exit\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn ready_status_and_watchdog_while_frames_flow_then_a_clean_sigterm() {
    let socket = NotifySocket::path();
    let watchdog = Duration::from_millis(1000);
    let mut svc = Service::start("flow", "", &socket, Some(watchdog), &[]);
    svc.wait_until("READY=1", &socket, || socket.count("READY=1") == 1);

    // Over a window of 8 watchdog periods (half intervals), count the pings.
    let window = watchdog * 4;
    let t0 = Instant::now();
    let pings_before = socket.count("WATCHDOG=1");
    svc.wait_until("the observation window", &socket, || t0.elapsed() >= window);
    let pings = socket.count("WATCHDOG=1") - pings_before;
    let periods = (window.as_secs_f64() / (watchdog.as_secs_f64() / 2.0)) as usize;
    assert!(
        pings >= periods / 4,
        "{pings} pings in {periods} half intervals while frames flow: {:?}\n{}",
        socket.assignments(),
        svc.stderr()
    );
    assert!(
        pings <= periods + 2,
        "{pings} pings in {periods} half intervals: more often than half the interval"
    );

    let status = socket.last_status().expect("a STATUS= line");
    eprintln!(
        "watchdog {watchdog:?}: {pings} pings in {periods} half intervals; last STATUS={status}"
    );
    assert!(status.starts_with("fps "), "{status}");
    let frames = status_field(&status, "frames").expect("frames in STATUS");
    assert!(frames > 0.0, "{status}");
    assert!(status_field(&status, "late").is_some(), "{status}");
    assert!(status_field(&status, "dropped").is_some(), "{status}");
    // The segment is live while running.
    let reader = ShmReader::open(&format!("/{}", svc.shm)).expect("open the segment");
    assert!(reader.writer().alive, "{:?}", reader.writer());

    let status = svc.terminate();
    let stderr = svc.stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(socket.count("STOPPING=1"), 1, "{:?}", socket.assignments());
    // STOPPING=1 is the last thing sent, after the READY=1 and the pings.
    let all = socket.assignments();
    let stopping = all
        .iter()
        .position(|(_, l)| l == "STOPPING=1")
        .expect("STOPPING=1");
    assert!(
        all[stopping..]
            .iter()
            .all(|(_, l)| l != "WATCHDOG=1" && l != "READY=1"),
        "{all:?}"
    );
    // Shut down cleanly: the segment says stopped, every thread was joined (none left behind blocked in a
    // source), the capture released its camera, and the summary was printed.
    let writer = reader.writer();
    assert!(writer.stopped && !writer.alive, "{writer:?}");
    assert!(
        !Path::new("/dev/shm").join(&svc.shm).exists(),
        "the writer removes its segment's name at exit (mapped readers keep the memory)"
    );
    assert!(!stderr.contains("did not stop in time"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = svc.stdout();
    assert!(stdout.contains(" frames in "), "{stdout}");
}

#[test]
fn a_stalled_pipeline_stops_the_watchdog_while_the_process_lives_on() {
    let socket = NotifySocket::abstract_name("stall");
    let watchdog = Duration::from_millis(600);
    let mut svc = Service::start(
        "stall",
        "[testing]\nstall-after-frames = 15\n",
        &socket,
        Some(watchdog),
        &[],
    );
    svc.wait_until("READY=1", &socket, || socket.count("READY=1") == 1);
    // The stall: STATUS= keeps coming but says 15 frames, twice in a row (so the count has settled).
    let mut settled = 0;
    let mut seen = 0;
    svc.wait_until("the stall in STATUS=", &socket, || {
        let statuses: Vec<String> = socket
            .assignments()
            .into_iter()
            .filter_map(|(_, l)| l.strip_prefix("STATUS=").map(str::to_owned))
            .collect();
        for s in &statuses[seen..] {
            if status_field(s, "frames") == Some(15.0) {
                settled += 1;
            }
        }
        seen = statuses.len();
        settled >= 2
    });
    let pings_while_flowing = socket.count("WATCHDOG=1");
    assert!(
        pings_while_flowing >= 1,
        "no WATCHDOG=1 while the first 15 frames flowed: {:?}",
        socket.assignments()
    );
    let stalled_at = Instant::now();
    let dropped_before = socket
        .last_status()
        .and_then(|s| status_field(&s, "dropped"))
        .unwrap_or(0.0);
    // Ten half intervals later: the process still runs, STATUS= still comes, not one more ping.
    let statuses_before = socket
        .assignments()
        .iter()
        .filter(|(_, l)| l.starts_with("STATUS="))
        .count();
    svc.wait_until("ten half intervals of stall", &socket, || {
        stalled_at.elapsed() >= watchdog * 5
    });
    assert!(svc.running());
    let late_pings: Vec<_> = socket
        .assignments()
        .into_iter()
        .filter(|(at, l)| l == "WATCHDOG=1" && *at > stalled_at)
        .collect();
    assert!(
        late_pings.is_empty(),
        "WATCHDOG=1 while stalled: {:?}",
        socket.assignments()
    );
    let statuses_after = socket
        .assignments()
        .iter()
        .filter(|(_, l)| l.starts_with("STATUS="))
        .count();
    assert!(statuses_after > statuses_before, "no STATUS= while stalled");
    let status = socket.last_status().expect("STATUS=");
    assert_eq!(status_field(&status, "frames"), Some(15.0), "{status}");
    // Capture goes on and its frames are dropped, newest wins: nothing queues up.
    assert!(
        status_field(&status, "dropped").unwrap_or(0.0) > dropped_before,
        "{status}"
    );
    assert!(svc.stderr().contains("stall-after-frames"));

    // Stalled or not, SIGTERM stops it cleanly; a reader that has the segment mapped sees it stopped.
    let reader = ShmReader::open(&format!("/{}", svc.shm)).expect("open the segment");
    let status = svc.terminate();
    assert_eq!(status.code(), Some(0), "{}", svc.stderr());
    assert_eq!(socket.count("STOPPING=1"), 1);
    assert!(reader.writer().stopped, "{:?}", reader.writer());
}

/// The thread ids of `pid`'s threads named `name`, waiting until there is one.
fn thread_of(svc: &mut Service, socket: &NotifySocket, name: &str) -> i32 {
    let pid = svc.pid().to_string();
    let mut tid = None;
    svc.wait_until(name, socket, || {
        tid = rt::threads_of_process_named(&pid, name)
            .ok()
            .and_then(|t| t.first().copied());
        tid.is_some()
    });
    tid.expect("thread id")
}

#[test]
fn realtime_settings_are_applied_to_the_running_threads() {
    let cpus = rt::thread_affinity(0).expect("sched_getaffinity");
    let (first, last) = (cpus[0], cpus[cpus.len() - 1]);
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let priorities = if root {
        "capture-priority = 20\ninference-priority = 10\n"
    } else {
        ""
    };
    let socket = NotifySocket::path();
    let mut svc = Service::start(
        "rt",
        &format!(
            "[realtime]\ncapture-cpus = [{first}]\ninference-cpus = [{last}]\n{priorities}strict = true\n"
        ),
        &socket,
        None,
        &[],
    );
    svc.wait_until("READY=1", &socket, || socket.count("READY=1") == 1);
    let infer = thread_of(&mut svc, &socket, "ocellus-infer");
    let cam = thread_of(&mut svc, &socket, "ocellus-cam0");
    let workers = [
        thread_of(&mut svc, &socket, "ocellus-mm-0"),
        thread_of(&mut svc, &socket, "ocellus-mm-1"),
    ];
    for w in workers {
        assert_eq!(rt::thread_affinity(w).expect("affinity"), vec![last]);
        if root {
            assert_eq!(rt::thread_policy(w).expect("policy"), SchedPolicy::Fifo(10));
        }
    }
    assert_eq!(rt::thread_affinity(infer).expect("affinity"), vec![last]);
    assert_eq!(rt::thread_affinity(cam).expect("affinity"), vec![first]);
    if root {
        assert_eq!(
            rt::thread_policy(infer).expect("policy"),
            SchedPolicy::Fifo(10)
        );
        assert_eq!(
            rt::thread_policy(cam).expect("policy"),
            SchedPolicy::Fifo(20)
        );
    } else {
        eprintln!("not root: SCHED_FIFO not checked");
    }
    // The main thread keeps the process's CPUs and policy.
    let main = svc.pid();
    assert_eq!(rt::thread_affinity(main).expect("affinity"), cpus);
    assert_eq!(rt::thread_policy(main).expect("policy"), SchedPolicy::Other);
    assert!(
        svc.stderr().contains("real-time settings applied"),
        "{}",
        svc.stderr()
    );
    assert_eq!(svc.terminate().code(), Some(0), "{}", svc.stderr());
}

#[test]
fn a_cpu_that_does_not_exist_is_a_warning_or_with_strict_exit_2() {
    let socket = NotifySocket::path();
    let mut lenient = Service::start(
        "nocpu",
        "[realtime]\ninference-cpus = [1000]\n",
        &socket,
        None,
        &[],
    );
    lenient.wait_until("READY=1", &socket, || socket.count("READY=1") == 1);
    let stderr = lenient.stderr();
    assert!(
        stderr.contains("real-time setting not applied")
            && stderr.contains("realtime.inference-cpus: CPU 1000 does not exist"),
        "{stderr}"
    );
    assert_eq!(lenient.terminate().code(), Some(0), "{}", lenient.stderr());

    let socket = NotifySocket::path();
    let mut strict = Service::start(
        "nocpu-strict",
        "[realtime]\ninference-cpus = [1000]\nstrict = true\n",
        &socket,
        None,
        &[],
    );
    let status = strict.wait_exit();
    let stderr = strict.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("realtime.strict = true")
            && stderr.contains("ocellus-infer: realtime.inference-cpus: CPU 1000 does not exist"),
        "{stderr}"
    );
    assert_eq!(socket.count("READY=1"), 0, "READY=1 before a refused start");
}

#[test]
fn sched_fifo_without_permission_is_a_warning_or_with_strict_exit_2() {
    // Run the binary without CAP_SYS_NICE (and RLIMIT_RTPRIO 0): the kernel answers EPERM.
    let setpriv = [
        "setpriv",
        "--bounding-set=-sys_nice",
        "--inh-caps=-sys_nice",
    ];
    // SAFETY: getrlimit writes one rlimit into the live struct given; no other memory is touched.
    let rtprio = unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_RTPRIO, &mut r);
        r.rlim_cur
    };
    if rtprio > 0 {
        eprintln!("RLIMIT_RTPRIO is {rtprio}: SCHED_FIFO would be permitted without CAP_SYS_NICE; skipped");
        return;
    }
    let socket = NotifySocket::path();
    let mut strict = Service::start(
        "eperm",
        "[realtime]\ninference-priority = 10\nstrict = true\n",
        &socket,
        None,
        &setpriv,
    );
    let status = strict.wait_exit();
    let stderr = strict.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("realtime.inference-priority: cannot run the inference thread at SCHED_FIFO priority 10")
            && stderr.contains("not permitted"),
        "{stderr}"
    );

    let socket = NotifySocket::path();
    let mut lenient = Service::start(
        "eperm-lenient",
        "[realtime]\ninference-priority = 10\n",
        &socket,
        None,
        &setpriv,
    );
    lenient.wait_until("READY=1", &socket, || socket.count("READY=1") == 1);
    let infer = thread_of(&mut lenient, &socket, "ocellus-infer");
    assert_eq!(
        rt::thread_policy(infer).expect("policy"),
        SchedPolicy::Other
    );
    assert!(
        lenient.stderr().contains("real-time setting not applied"),
        "{}",
        lenient.stderr()
    );
    assert_eq!(lenient.terminate().code(), Some(0), "{}", lenient.stderr());
}
