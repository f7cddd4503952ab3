//! The prompts file, watched: a change is read, checked against the same rules as at start-up, embedded on
//! this thread and swapped in; a rejected change keeps the previous set.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::rules::{read_prompts, PromptSettings};
use super::{PromptError, PromptSet, TextEncoder};

/// How often [`PromptWatcher`] looks at the file.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Watches a prompts file and re-embeds the set (the labels, then the file's prompts) when it changes, on its
/// own thread, which owns the [`TextEncoder`]. The current set is published through an `ArcSwap`: readers
/// never wait.
///
/// A change is a different modification time or length followed by different prompts. A file that cannot
/// be read, breaks the rules ([`super::check_prompts`]: too many prompts for `prompts.max`, a duplicate, none
/// at all) or fails to embed keeps the previous set in place and is logged (once per distinct error).
/// Dropping the watcher stops and joins the thread.
pub struct PromptWatcher {
    current: Arc<ArcSwap<PromptSet>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PromptWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptWatcher")
            .field("version", &self.current.load().version())
            .finish_non_exhaustive()
    }
}

struct FileState {
    stamp: Option<(SystemTime, u64)>,
    prompts: Vec<String>,
    last_error: Option<String>,
}

impl PromptWatcher {
    /// Embeds the set now (errors are returned: start-up refuses a bad prompts file), then starts the
    /// thread that polls the file every `interval` ([`POLL_INTERVAL`] in the runtime). `settings.file` must
    /// be set.
    pub fn start(
        mut encoder: TextEncoder,
        settings: PromptSettings,
        interval: Duration,
    ) -> Result<PromptWatcher, PromptError> {
        let path = settings.file.clone().ok_or(PromptError::Rule {
            key: "prompts.file",
            message: "no prompts file to watch".into(),
        })?;
        let stamp = stamp(&path);
        let file_prompts = read_prompts(&path)?;
        let prompts = settings.compose(file_prompts.clone())?;
        let set = encoder.embed(&prompts)?;
        tracing::info!(
            file = %path.display(),
            prompts = set.len(),
            version = set.version(),
            "prompts embedded"
        );
        let current = Arc::new(ArcSwap::from_pointee(set));
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = FileState {
            stamp,
            prompts: file_prompts,
            last_error: None,
        };
        let thread = {
            let current = Arc::clone(&current);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ocellus-prompts".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(interval);
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        poll(&path, &settings, &mut encoder, &mut state, &current);
                    }
                })
                .map_err(PromptError::Thread)?
        };
        Ok(PromptWatcher {
            current,
            stop,
            thread: Some(thread),
        })
    }

    /// The shared handle the frame path loads the current set from.
    pub fn prompts(&self) -> Arc<ArcSwap<PromptSet>> {
        Arc::clone(&self.current)
    }

    /// The current set.
    pub fn current(&self) -> Arc<PromptSet> {
        self.current.load_full()
    }

    /// Stops and joins the thread (also done on drop).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!("the prompt watcher thread panicked");
            }
        }
    }
}

impl Drop for PromptWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn poll(
    path: &Path,
    settings: &PromptSettings,
    encoder: &mut TextEncoder,
    state: &mut FileState,
    current: &ArcSwap<PromptSet>,
) {
    let now = stamp(path);
    if now.is_some() && now == state.stamp {
        return;
    }
    let result = read_prompts(path).and_then(|file_prompts| {
        if file_prompts == state.prompts {
            return Ok(None);
        }
        let prompts = settings.compose(file_prompts.clone())?;
        encoder.embed(&prompts).map(|set| Some((file_prompts, set)))
    });
    match result {
        Ok(changed) => {
            state.stamp = now;
            state.last_error = None;
            if let Some((file_prompts, set)) = changed {
                tracing::info!(
                    file = %path.display(),
                    prompts = set.len(),
                    version = set.version(),
                    labels = ?set.labels(),
                    "prompts changed; new set in use"
                );
                state.prompts = file_prompts;
                current.store(Arc::new(set));
            }
        }
        Err(e) => {
            let message = e.to_string();
            if state.last_error.as_deref() != Some(message.as_str()) {
                tracing::warn!(file = %path.display(), error = %message, "prompts file rejected; keeping the previous prompts");
                state.last_error = Some(message);
            }
            // Retried only when the file changes again.
            state.stamp = now;
        }
    }
}
