//! Prompts: the tokenizer and text encoder, prompt sets and scoring, and the prompt-file watcher.
//!
//! The text encoder runs off the frame path. A [`PromptSet`] is immutable once embedded; the frame path
//! reads the current one through an [`arc_swap::ArcSwap`] (a lock-free load) and scores against it with
//! [`PromptSet::score`] and [`PromptSet::top`], neither of which allocates.
//!
//! How prompts change at run time: a **watched file** ([`PromptWatcher`]), one prompt per line. A file works
//! with every tool a robot developer already has (an editor, `echo >`, configuration management, a ROS node
//! writing a file) and needs no extra process or protocol; its cost is a 250 ms poll on a background thread.
//! A command over the shared-memory segment can be added later as a second writer of the same `ArcSwap`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::infer::{self, l2_normalise, Executor, LoadError, Planned};
use crate::manifest::{Manifest, Role, Variant};

/// Why prompts could not be loaded, read or embedded.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("tokenizer {path} cannot be loaded ({message}): re-export the bundle (`ocellus-tools export`)")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenizer {path} yields {actual} ids for {prompt:?} but the text model takes exactly {expected}: configure padding and truncation to context_length in tokenizer.json (re-export the bundle)")]
    TokenCount {
        path: PathBuf,
        prompt: String,
        expected: usize,
        actual: usize,
    },
    #[error("the prompt list{} is empty: give at least one prompt (one per line; `#` starts a comment)", .source_name.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    Empty { source_name: Option<PathBuf> },
    #[error("prompts file {path} cannot be read ({source}): create it or fix prompts.file in the config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the text model failed on {prompt:?}: {message}")]
    Tract { prompt: String, message: String },
    #[error("the text model produced a zero or non-finite embedding for {prompt:?}: re-export the text model")]
    NonFinite { prompt: String },
    #[error("cannot start the prompt watcher thread: {0}")]
    Thread(std::io::Error),
}

static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// Labels and their L2-normalised text embeddings, with the manifest's score parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSet {
    labels: Vec<String>,
    version: u64,
    dim: usize,
    embeds: Vec<f32>,
    logit_scale: f32,
    logit_bias: f32,
}

/// One entry of [`PromptSet::top`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Index into [`PromptSet::labels`].
    pub index: usize,
    pub score: f32,
}

impl PromptSet {
    /// K prompts.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Never true for a set made by [`TextEncoder::embed`].
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Unique per embedding in this process, increasing: tells a reader that the set changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// E: embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Prompt `k`'s normalised embedding (E values).
    pub fn embedding(&self, k: usize) -> &[f32] {
        &self.embeds[k * self.dim..(k + 1) * self.dim]
    }

    /// All K x E embeddings, row-major.
    pub fn embeddings(&self) -> &[f32] {
        &self.embeds
    }

    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    pub fn logit_bias(&self) -> f32 {
        self.logit_bias
    }

    /// softmax_k(logit_scale * cos(image, text_k) + logit_bias) into `out[..len()]`; no allocation.
    /// `image_embeds` must be L2-normalised (as [`crate::infer::Engine::run`] writes it).
    ///
    /// # Panics
    /// If `image_embeds.len() != self.dim()` or `out.len() < self.len()`: both sizes are fixed at start-up
    /// by the manifest, so a mismatch is a programming error.
    pub fn score(&self, image_embeds: &[f32], out: &mut [f32]) {
        assert_eq!(
            image_embeds.len(),
            self.dim,
            "image embedding width differs from the prompt set's"
        );
        assert!(
            out.len() >= self.len(),
            "score buffer shorter than the prompt set"
        );
        let out = &mut out[..self.len()];
        let mut max = f32::NEG_INFINITY;
        for (k, o) in out.iter_mut().enumerate() {
            let cos: f32 = self
                .embedding(k)
                .iter()
                .zip(image_embeds)
                .map(|(a, b)| a * b)
                .sum();
            *o = self.logit_scale * cos + self.logit_bias;
            max = max.max(*o);
        }
        let mut sum = 0.0;
        for o in out.iter_mut() {
            *o = (*o - max).exp();
            sum += *o;
        }
        let inv = 1.0 / sum;
        out.iter_mut().for_each(|o| *o *= inv);
    }

    /// The `min(n, N, len())` best of `scores` (as written by [`PromptSet::score`]), best first, ties by
    /// lower index; on the stack, no allocation.
    pub fn top<const N: usize>(&self, scores: &[f32], n: usize) -> heapless::Vec<Ranked, N> {
        let mut best: heapless::Vec<Ranked, N> = heapless::Vec::new();
        let n = n.min(N);
        if n == 0 {
            return best;
        }
        for (index, &score) in scores.iter().take(self.len()).enumerate() {
            let candidate = Ranked { index, score };
            let pos = best
                .iter()
                .position(|r| score > r.score)
                .unwrap_or(best.len());
            if pos >= n {
                continue;
            }
            if best.len() == n {
                best.pop();
            }
            // Cannot fail: one element was popped if the vector was at n <= N.
            let _ = best.insert(pos, candidate);
        }
        best
    }
}

/// The tokenizer and the text model of a bundle.
pub struct TextEncoder {
    tokenizer: tokenizers::Tokenizer,
    tokenizer_path: PathBuf,
    model: Planned,
    input_ids: usize,
    attention_mask: Option<usize>,
    text_embeds: usize,
    context_length: usize,
    embed_dim: usize,
    logit_scale: f32,
    logit_bias: f32,
    files: Vec<infer::FileSize>,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("model", &self.model.path)
            .field("tokenizer", &self.tokenizer_path)
            .finish_non_exhaustive()
    }
}

impl TextEncoder {
    /// Verifies and loads the text model of `variant` (single-threaded: it runs off the frame path) and
    /// the bundle's tokenizer, and checks that the tokenizer pads and truncates to `context_length`.
    pub fn load(manifest: &Manifest, variant: Variant) -> Result<TextEncoder, PromptError> {
        infer::check_manifest(manifest, variant, &[Role::Text])?;
        let verified = infer::read_verified(manifest, Role::Text, variant)?;
        let files = vec![verified.size.clone()];
        let model = Planned::build(verified, Executor::SingleThread)?;
        let tokenizer_path = manifest.tokenizer_path();
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            PromptError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            }
        })?;
        let missing = |what: &str| LoadError::Signature {
            path: model.path.clone(),
            problem: format!("the optimised model has no {what}"),
        };
        let input_ids = model
            .input_index("input_ids")
            .ok_or_else(|| missing("input input_ids"))?;
        let text_embeds = model
            .output_index("text_embeds")
            .ok_or_else(|| missing("output text_embeds"))?;
        let attention_mask = model.input_index("attention_mask");
        let encoder = TextEncoder {
            tokenizer,
            tokenizer_path,
            input_ids,
            attention_mask,
            text_embeds,
            model,
            context_length: manifest.text.context_length,
            embed_dim: manifest.embed_dim,
            logit_scale: manifest.scores.logit_scale,
            logit_bias: manifest.scores.logit_bias,
            files,
        };
        let long = "a ".repeat(2 * encoder.context_length + 2);
        for probe in ["a", long.as_str()] {
            encoder.tokenize(probe)?;
        }
        Ok(encoder)
    }

    /// Size of the text model file, for the memory budget.
    pub fn files(&self) -> &[infer::FileSize] {
        &self.files
    }

    /// Per-run tensor sizes of the text model.
    pub fn memory(&self) -> infer::PlanMemory {
        self.model.memory
    }

    /// Whether the text model reads `attention_mask`.
    pub fn uses_attention_mask(&self) -> bool {
        self.attention_mask.is_some()
    }

    /// Token ids and attention mask of `prompt`, exactly `context_length` of each.
    pub fn tokenize(&self, prompt: &str) -> Result<(Vec<i64>, Vec<i64>), PromptError> {
        let encoding = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| PromptError::Tokenizer {
                path: self.tokenizer_path.clone(),
                message: format!("encoding {prompt:?}: {e}"),
            })?;
        let ids = encoding.get_ids();
        if ids.len() != self.context_length {
            return Err(PromptError::TokenCount {
                path: self.tokenizer_path.clone(),
                prompt: prompt.to_owned(),
                expected: self.context_length,
                actual: ids.len(),
            });
        }
        Ok((
            ids.iter().map(|&i| i64::from(i)).collect(),
            encoding
                .get_attention_mask()
                .iter()
                .map(|&m| i64::from(m))
                .collect(),
        ))
    }

    /// Embeds `prompts` (in order) into a new [`PromptSet`] with a new version.
    pub fn embed(&mut self, prompts: &[String]) -> Result<PromptSet, PromptError> {
        if prompts.is_empty() {
            return Err(PromptError::Empty { source_name: None });
        }
        let e = self.embed_dim;
        let mut embeds = vec![0.0f32; prompts.len() * e];
        for (prompt, row) in prompts.iter().zip(embeds.chunks_exact_mut(e)) {
            let (ids, mask) = self.tokenize(prompt)?;
            let failed = |e: anyhow::Error| PromptError::Tract {
                prompt: prompt.clone(),
                message: format!("{e:#}"),
            };
            self.model
                .with_input(self.input_ids, |t: &mut [i64]| t.copy_from_slice(&ids))
                .map_err(failed)?;
            if let Some(ix) = self.attention_mask {
                self.model
                    .with_input(ix, |t: &mut [i64]| t.copy_from_slice(&mask))
                    .map_err(failed)?;
            }
            let outputs = self.model.run().map_err(failed)?;
            let value = outputs
                .get(self.text_embeds)
                .ok_or_else(|| failed(anyhow::anyhow!("no text_embeds output")))?;
            let view = value.try_as_plain_ram().map_err(failed)?;
            row.copy_from_slice(view.as_slice::<f32>().map_err(failed)?);
            if !l2_normalise(row) {
                return Err(PromptError::NonFinite {
                    prompt: prompt.clone(),
                });
            }
        }
        Ok(PromptSet {
            labels: prompts.to_vec(),
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            dim: e,
            embeds,
            logit_scale: self.logit_scale,
            logit_bias: self.logit_bias,
        })
    }
}

/// Prompts from a file's text: one per line, surrounding white space trimmed, blank lines and lines whose
/// first non-blank character is `#` ignored.
pub fn parse_prompts(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Reads and parses a prompts file; an empty list is an error.
pub fn read_prompts(path: &Path) -> Result<Vec<String>, PromptError> {
    let text = std::fs::read_to_string(path).map_err(|source| PromptError::Read {
        path: path.to_owned(),
        source,
    })?;
    let prompts = parse_prompts(&text);
    if prompts.is_empty() {
        return Err(PromptError::Empty {
            source_name: Some(path.to_owned()),
        });
    }
    Ok(prompts)
}

/// How often [`PromptWatcher`] looks at the file.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Watches a prompts file and re-embeds it when it changes, on its own thread, which owns the
/// [`TextEncoder`]. The current set is published through an `ArcSwap`: readers never wait.
///
/// A change is a different modification time or length followed by different prompts. A file that cannot
/// be read, is empty, or fails to embed keeps the previous set in place and is logged (once per distinct
/// error). Dropping the watcher stops and joins the thread.
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
    /// Embeds the file now (errors are returned: start-up refuses a bad prompts file), then starts the
    /// thread that polls it every `interval` ([`POLL_INTERVAL`] in the runtime).
    pub fn start(
        mut encoder: TextEncoder,
        path: PathBuf,
        interval: Duration,
    ) -> Result<PromptWatcher, PromptError> {
        let stamp = stamp(&path);
        let prompts = read_prompts(&path)?;
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
            prompts,
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
                        poll(&path, &mut encoder, &mut state, &current);
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
    encoder: &mut TextEncoder,
    state: &mut FileState,
    current: &ArcSwap<PromptSet>,
) {
    let now = stamp(path);
    if now.is_some() && now == state.stamp {
        return;
    }
    let result = read_prompts(path).and_then(|prompts| {
        if prompts == state.prompts {
            return Ok(None);
        }
        encoder.embed(&prompts).map(|set| Some((prompts, set)))
    });
    match result {
        Ok(changed) => {
            state.stamp = now;
            state.last_error = None;
            if let Some((prompts, set)) = changed {
                tracing::info!(
                    file = %path.display(),
                    prompts = set.len(),
                    version = set.version(),
                    labels = ?set.labels(),
                    "prompts changed; new set in use"
                );
                state.prompts = prompts;
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
