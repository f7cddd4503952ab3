//! The text encoder, prompt parsing and the prompt-file watcher on the demo bundle.

use std::path::Path;
use std::time::{Duration, Instant};

use ocellus::manifest::{Manifest, Variant};
use ocellus::prompts::{parse_prompts, PromptError, PromptSettings, PromptWatcher, TextEncoder};

fn encoder() -> TextEncoder {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/manifest.toml");
    let manifest = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    TextEncoder::load(&manifest, Variant::Fp32).unwrap_or_else(|e| panic!("{e}"))
}

fn watched(file: &Path, labels: &[&str], max: usize) -> PromptSettings {
    PromptSettings {
        labels: labels.iter().map(|s| s.to_string()).collect(),
        file: Some(file.to_owned()),
        max,
        defaulted: false,
    }
}

/// Polls `cond` until it holds; fails the test after 20 s instead of hanging.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "watchdog: {what} did not happen");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn parse_skips_comments_and_blank_lines() {
    let text = "# shapes\n a red circle \n\n   # indented comment\na blue square\n";
    assert_eq!(parse_prompts(text), ["a red circle", "a blue square"]);
    assert!(parse_prompts("# only\n\n").is_empty());
}

#[test]
fn empty_prompt_list_is_an_error() {
    let err = encoder().embed(&[]).expect_err("empty list");
    assert!(matches!(err, PromptError::Empty { .. }));
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn embeddings_are_normalised_and_versions_increase() {
    let mut enc = encoder();
    let prompts = vec!["a red circle".to_string(), "a blue square".to_string()];
    let a = enc.embed(&prompts).unwrap_or_else(|e| panic!("{e}"));
    let b = enc.embed(&prompts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.len(), 2);
    assert_eq!(a.labels(), prompts.as_slice());
    assert!(b.version() > a.version());
    assert_eq!(
        a.embeddings(),
        b.embeddings(),
        "the same prompts embed identically"
    );
    for k in 0..a.len() {
        let norm: f32 = a.embedding(k).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
    assert_ne!(a.embedding(0), a.embedding(1));
}

#[test]
fn watcher_follows_the_file_and_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "a red circle\na blue square\n").expect("write");
    let mut watcher = PromptWatcher::start(
        encoder(),
        watched(&file, &[], 64),
        Duration::from_millis(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let handle = watcher.prompts();
    let first = watcher.current();
    assert_eq!(first.labels(), ["a red circle", "a blue square"]);

    std::fs::write(
        &file,
        "# now three\na red circle\na blue square\na green triangle\n",
    )
    .expect("write");
    wait_for("re-embedding after a change", || handle.load().len() == 3);
    let second = handle.load_full();
    assert!(second.version() > first.version());
    assert_eq!(second.labels()[2], "a green triangle");

    // A file with no prompts is rejected; the previous set stays in use.
    std::fs::write(&file, "# nothing\n").expect("write");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(handle.load().version(), second.version());

    // A good file afterwards is picked up again.
    std::fs::write(&file, "a yellow star\n").expect("write");
    wait_for("recovery after a bad file", || handle.load().len() == 1);
    watcher.stop();
}

#[test]
fn watcher_refuses_a_bad_file_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("absent.txt");
    let err = PromptWatcher::start(
        encoder(),
        watched(&missing, &[], 64),
        Duration::from_millis(20),
    )
    .expect_err("missing file");
    assert!(matches!(err, PromptError::Read { .. }), "{err}");
    assert!(err.to_string().contains("absent.txt"), "{err}");
}

/// The bug of issue 11: a prompts file that grew past `prompts.max` while running was accepted, and every
/// frame after it was published degraded, without scores. The watcher now holds a change to the start-up
/// rules (at most `max`, no duplicates, labels first), and keeps the previous set when a change breaks them.
#[test]
fn watcher_holds_changes_to_the_start_up_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "a red circle\na blue square\n").expect("write");
    let mut watcher = PromptWatcher::start(
        encoder(),
        watched(&file, &["a green cross"], 4),
        Duration::from_millis(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let handle = watcher.prompts();
    let first = watcher.current();
    assert_eq!(
        first.labels(),
        ["a green cross", "a red circle", "a blue square"],
        "the labels come first, then the file's prompts"
    );

    // Grown past max = 4 (1 label + 5 lines): refused, the previous set stays.
    std::fs::write(
        &file,
        "a red circle\na blue square\na green triangle\na yellow cross\na red square\n",
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        handle.load().version(),
        first.version(),
        "a set over prompts.max was swapped in"
    );
    assert_eq!(handle.load().len(), 3);

    // A duplicate (here of the label) is refused too.
    std::fs::write(&file, "a green cross\na red circle\n").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        handle.load().version(),
        first.version(),
        "a set with a duplicate was swapped in"
    );

    // A change within the rules is taken.
    std::fs::write(&file, "a red circle\na blue square\na yellow cross\n").expect("write");
    wait_for("a valid change", || handle.load().len() == 4);
    assert_eq!(handle.load().labels()[0], "a green cross");
    watcher.stop();
}

#[test]
fn start_refuses_a_file_over_prompts_max_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "a\nb\nc\n").expect("write");
    let err = PromptWatcher::start(encoder(), watched(&file, &[], 2), Duration::from_millis(20))
        .expect_err("3 prompts, max 2");
    assert!(err.to_string().contains("prompts.max"), "{err}");
}

/// A prompt made only of words outside the tokenizer's vocabulary embeds like any other such prompt: it is
/// flagged (a warning at embedding, a line in `ocellus check`), not silently scored.
#[test]
fn prompts_of_unknown_words_only_are_recognised() {
    // The demo's BPE knows the caption words and their letters; digits and symbols are unknown to it.
    let enc = encoder();
    assert!(!enc.is_unknown_only("a red circle"));
    assert!(
        !enc.is_unknown_only("a 42 circle"),
        "one known token is enough"
    );
    assert!(
        !enc.is_unknown_only("qwerty"),
        "known letters are known tokens"
    );
    assert!(enc.is_unknown_only("42"));
    assert!(enc.is_unknown_only("#@! 42"));
    assert!(
        !enc.is_unknown_only(""),
        "nothing at all is not 'unknown words'"
    );
}
