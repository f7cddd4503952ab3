//! Where the binary's logs go (docs/service.md, "Logs and the journal"): text on stderr without colour codes
//! off a terminal; journald natively when `JOURNAL_STREAM` names the stream stderr is (systemd's convention),
//! or when asked; text with a warning when journald's socket cannot be reached. The journald entries
//! themselves are checked under a real systemd by tests/hil/systemd/driver.sh (`journal`).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

// `finish` captures stderr through a pipe; these tests give the child a file instead and use `wait`.
#[allow(dead_code)]
#[path = "common/cli.rs"]
mod cli;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
const FALLBACK: &str =
    "cannot reach journald's socket (/run/systemd/journal/socket); logging text to stderr";

/// `ocellus check` (the built-in default config, or `config`) with stderr in a file, and that file's text.
fn check_with_stderr_file(
    config: Option<&Path>,
    journal_stream: Option<&str>,
    dir: &Path,
) -> String {
    let path = dir.join("stderr");
    let file = std::fs::File::create(&path).expect("stderr file");
    let id = file.metadata().expect("stat stderr file");
    let mut cmd = cli::ocellus();
    cmd.arg("check").env_remove("JOURNAL_STREAM");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    match journal_stream {
        Some("this file") => {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", id.dev(), id.ino()));
        }
        Some(other) => {
            cmd.env("JOURNAL_STREAM", other);
        }
        None => {}
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn ocellus check");
    cli::wait(child, "ocellus check", Duration::from_secs(120));
    std::fs::read_to_string(&path).expect("read stderr")
}

#[test]
fn text_logs_off_a_terminal_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    // JOURNAL_STREAM naming another stream (a shell redirected stderr under systemd): text, as without it.
    for stream in [None, Some("1:1")] {
        let err = check_with_stderr_file(None, stream, dir.path());
        assert!(
            err.contains(" INFO "),
            "{stream:?}: no text log line in {err}"
        );
        assert!(
            !err.contains('\u{1b}'),
            "{stream:?}: escape codes in {err:?}"
        );
        assert!(!err.contains(FALLBACK), "{stream:?}: journald tried: {err}");
    }
}

#[test]
fn stderr_named_by_journal_stream_or_format_journald_goes_to_journald() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("journald.toml");
    let manifest = cli::root().join("models/demo/manifest.toml");
    std::fs::write(
        &config,
        format!(
            "[[camera]]\nname = \"synthetic\"\nsource = \"synthetic\"\n\n[model]\nmanifest = {:?}\n\n\
             [logging]\nformat = \"journald\"\n",
            manifest.display().to_string()
        ),
    )
    .unwrap();
    let cases = [
        (
            "auto, JOURNAL_STREAM = stderr's device:inode",
            None,
            Some("this file"),
        ),
        ("format = \"journald\"", Some(config.as_path()), None),
    ];
    for (what, config, stream) in cases {
        let err = check_with_stderr_file(config, stream, dir.path());
        if Path::new(JOURNAL_SOCKET).exists() {
            // A machine with journald: the log lines went there, not to stderr.
            assert!(
                !err.contains(" INFO "),
                "{what}: text logs on stderr: {err}"
            );
        } else {
            // No journald here: said once, then text.
            assert_eq!(err.matches(FALLBACK).count(), 1, "{what}: {err}");
            assert!(
                err.contains(" INFO "),
                "{what}: no text after the fallback: {err}"
            );
        }
    }
}
