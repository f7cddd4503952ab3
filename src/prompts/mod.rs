//! Prompts: the tokenizer and text encoder, prompt sets and scoring, and the prompt-file watcher.
//!
//! The text encoder runs off the frame path. A [`PromptSet`] is immutable once embedded; the frame path
//! reads the current one through an [`arc_swap::ArcSwap`] (a lock-free load) and scores against it with
//! [`PromptSet::score`] and [`PromptSet::top`], neither of which allocates.
//!
//! The prompt set is `prompts.labels` followed by the lines of `prompts.file` ([`PromptSettings`]); the same
//! rules ([`check_prompts`]: not empty, at most `prompts.max`, no blank prompt, no duplicate) hold at start-up
//! and for every change of the file.
//!
//! How prompts change at run time: a **watched file** ([`PromptWatcher`]), one prompt per line. A file works
//! with every tool a robot developer already has (an editor, `echo >`, configuration management, a ROS node
//! writing a file) and needs no extra process or protocol; its cost is a 250 ms poll on a background thread.
//! A command over the shared-memory segment can be added later as a second writer of the same `ArcSwap`.

use std::path::PathBuf;

use crate::infer::LoadError;

mod encoder;
mod prototypes;
mod rules;
mod set;
mod watcher;

pub use encoder::TextEncoder;
pub use prototypes::load_prototypes;
pub use rules::{check_prompts, parse_prompts, read_prompts, PromptSettings};
pub use set::{PromptSet, Ranked};
pub use watcher::{PromptWatcher, POLL_INTERVAL};

/// Why prompts could not be loaded, read or embedded.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("prototypes {path}: {message}; re-run `ocellus-tools prototypes` and `ocellus-tools manifest`")]
    Prototypes { path: PathBuf, message: String },
    #[error("model bundle {dir} has no text encoder (no [text] in its manifest): it is vision-only; prompts need a text encoder, or prototypes ([prototypes], `ocellus-tools prototypes`)")]
    NoText { dir: PathBuf },
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
    #[error("{key}: {message}")]
    Rule { key: &'static str, message: String },
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
