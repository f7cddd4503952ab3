//! `model.engine = "onnxruntime"` through the `ocellus` binary (`ocellus check`), in both builds: a plain
//! build says the feature is missing; a build with the `onnxruntime` feature names what is wrong with the
//! library and how to fix it, and checks a good configuration. Each case is its own process, because a
//! process loads onnxruntime once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config on the demo bundle with `model.engine = "onnxruntime"` and `onnxruntime` appended.
fn config(dir: &Path, onnxruntime: &str) -> PathBuf {
    let path = dir.join("ocellus.toml");
    let text = format!(
        "[[camera]]\nsource = \"synthetic\"\npixel-format = \"yuyv\"\nwidth = 160\nheight = 120\n\n\
         [model]\nmanifest = \"{}\"\nengine = \"onnxruntime\"\n\n{onnxruntime}\n",
        root().join("models/demo/manifest.toml").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// `ocellus check --config F`; `ORT_DYLIB_PATH` removed unless `keep_env`. `check` runs no frames and exits.
fn check(config: &Path, keep_env: bool) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocellus"));
    cmd.args(["check", "--config"])
        .arg(config)
        .current_dir(root())
        .stdin(Stdio::null());
    if !keep_env {
        cmd.env_remove("ORT_DYLIB_PATH");
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run ocellus check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.code(), text)
}

#[cfg(not(feature = "onnxruntime"))]
#[test]
fn a_plain_build_says_how_to_get_onnxruntime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, text) = check(&config(dir.path(), ""), false);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("model.engine = \"onnxruntime\" is not available"),
        "{text}"
    );
    assert!(text.contains("--features onnxruntime"), "{text}");
}

#[cfg(feature = "onnxruntime")]
#[test]
fn no_library_configured_says_how_to_set_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, text) = check(&config(dir.path(), ""), false);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no library is configured"), "{text}");
    assert!(text.contains("ORT_DYLIB_PATH"), "{text}");
    assert!(text.contains("[onnxruntime] table"), "{text}");
}

#[cfg(feature = "onnxruntime")]
#[test]
fn a_file_that_is_not_a_library_cannot_be_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not an ELF file").expect("write");
    let (code, text) = check(
        &config(
            dir.path(),
            &format!("[onnxruntime]\nlibrary = \"{}\"", fake.display()),
        ),
        false,
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("cannot be loaded"), "{text}");
    assert!(text.contains(&fake.display().to_string()), "{text}");
}

#[test]
fn an_unknown_provider_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, text) = check(
        &config(dir.path(), "[onnxruntime]\nproviders = [\"rocm\"]"),
        false,
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("onnxruntime.providers"), "{text}");
    assert!(text.contains("unknown execution provider 'rocm'"), "{text}");
}

/// With the library from `ORT_DYLIB_PATH` (as `make test-ort` sets it), the configuration checks.
#[cfg(feature = "onnxruntime")]
#[test]
fn the_library_from_the_environment_checks() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "set ORT_DYLIB_PATH to a libonnxruntime.so (make test-ort does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, text) = check(&config(dir.path(), ""), true);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("engine onnxruntime, variant"), "{text}");
    assert!(text.contains("runs onnxruntime"), "{text}");
    assert!(text.contains("engine's own memory"), "{text}");
}
