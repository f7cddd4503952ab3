//! The `ocellus` binary as the CLI tests drive it: a command in the source tree, and a run to completion under
//! a watchdog that kills the child and fails the test instead of hanging CI (no elapsed time is asserted).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The source tree (the tests run `ocellus` from it, so `models/demo` resolves).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `ocellus` in the source tree, stdin closed.
pub fn ocellus() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ocellus"));
    c.current_dir(root()).stdin(Stdio::null());
    c
}

/// Runs `cmd` to completion with its output captured; kills it and panics after `watchdog`.
pub fn finish(mut cmd: Command, watchdog: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait(child, &format!("{cmd:?}"), watchdog)
}

/// Waits for `child` and returns its output (what it captured); kills it and panics after `watchdog`.
pub fn wait(mut child: Child, what: &str, watchdog: Duration) -> Output {
    let until = Instant::now() + watchdog;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watchdog: {what} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
