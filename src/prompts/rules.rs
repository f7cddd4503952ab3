//! What a prompt set may be, and where it comes from: `prompts.labels`, then the lines of `prompts.file`.
//!
//! The same rules hold for the set read at start-up and for every change of the watched file, so a file that
//! grows past `prompts.max` while running is refused (and the previous set kept), exactly as it would be
//! refused at start-up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::PromptError;

/// `[prompts]`: the labels given in the config, the watched file and the capacity of the score buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSettings {
    /// Prompts given in the config, first in every set.
    pub labels: Vec<String>,
    /// A file of prompts, one per line (blank lines and `#` comments skipped), added after the labels and
    /// watched: when it changes, the prompt set is re-embedded without a restart.
    pub file: Option<PathBuf>,
    /// Most prompts a set may hold (the score buffers and the shared-memory table are sized for it).
    pub max: usize,
    /// The config named no prompts, so `labels` are the demo scenes' prompts. A vision-only bundle then
    /// scores its prototypes (or nothing) instead; named prompts need a text encoder.
    pub defaulted: bool,
}

impl PromptSettings {
    /// The labels followed by `file_prompts`, checked against the rules.
    pub fn compose(&self, file_prompts: Vec<String>) -> Result<Vec<String>, PromptError> {
        let mut prompts = self.labels.clone();
        prompts.extend(file_prompts);
        check_prompts(&prompts, self.max)?;
        Ok(prompts)
    }

    /// The prompt set now: the labels, then the lines of the file (read here), checked against the rules.
    pub fn current(&self) -> Result<Vec<String>, PromptError> {
        let from_file = match &self.file {
            Some(path) => parse_prompts(&read_file(path)?),
            None => Vec::new(),
        };
        self.compose(from_file)
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

fn read_file(path: &Path) -> Result<String, PromptError> {
    std::fs::read_to_string(path).map_err(|source| PromptError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads and parses a prompts file on its own; an empty list is an error.
pub fn read_prompts(path: &Path) -> Result<Vec<String>, PromptError> {
    let prompts = parse_prompts(&read_file(path)?);
    if prompts.is_empty() {
        return Err(PromptError::Empty {
            source_name: Some(path.to_owned()),
        });
    }
    Ok(prompts)
}

/// The rules of a prompt set: not empty, at most `max`, no blank prompt, no prompt twice. The error names the
/// config key to change.
pub fn check_prompts(prompts: &[String], max: usize) -> Result<(), PromptError> {
    if prompts.is_empty() {
        return Err(PromptError::Rule {
            key: "prompts",
            message:
                "the prompt list is empty: give at least one prompt in prompts.labels or prompts.file"
                    .into(),
        });
    }
    if prompts.len() > max {
        return Err(PromptError::Rule {
            key: "prompts.max",
            message: format!(
                "{} prompts but max = {max}: remove prompts or raise prompts.max (fixed at start-up: it sizes the score buffers and the shared-memory table)",
                prompts.len()
            ),
        });
    }
    let mut seen = HashSet::new();
    for p in prompts {
        if p.trim().is_empty() {
            return Err(PromptError::Rule {
                key: "prompts.labels",
                message: "a prompt is blank: remove it".into(),
            });
        }
        if !seen.insert(p.as_str()) {
            return Err(PromptError::Rule {
                key: "prompts",
                message: format!("prompt '{p}' is given twice: remove the duplicate"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(labels: &[&str], max: usize) -> PromptSettings {
        PromptSettings {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            file: None,
            max,
            defaulted: false,
        }
    }

    #[test]
    fn the_file_comes_after_the_labels_under_the_same_rules() {
        let s = settings(&["a door"], 3);
        let lines = parse_prompts("# objects\n a cup \n\na chair\n");
        assert_eq!(s.compose(lines).unwrap(), ["a door", "a cup", "a chair"]);
        let too_many = s.compose(parse_prompts("a\nb\nc\n")).unwrap_err();
        assert!(too_many.to_string().contains("prompts.max"), "{too_many}");
        let twice = s.compose(vec!["a door".into()]).unwrap_err();
        assert!(twice.to_string().contains("given twice"), "{twice}");
        let none = settings(&[], 3).compose(Vec::new()).unwrap_err();
        assert!(none.to_string().contains("empty"), "{none}");
    }
}
