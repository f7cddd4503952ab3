//! The tokenizer and the text encoder: prompts to embeddings, off the frame path.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::set::{PromptSet, NEXT_VERSION};
use super::PromptError;
use crate::infer::{self, l2_normalise, Executor, LoadError, Planned, Precision};
use crate::manifest::{Manifest, ModelRole, Variant};

/// The tokenizer and the text model of a bundle.
pub struct TextEncoder {
    tokenizer: tokenizers::Tokenizer,
    tokenizer_path: PathBuf,
    /// The id of the tokenizer's unknown token, when its model has one.
    unknown_id: Option<u32>,
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
        let (Some(text), Some(scores), Some(tokenizer_path)) =
            (&manifest.text, &manifest.scores, manifest.tokenizer_path())
        else {
            return Err(PromptError::NoText {
                dir: manifest.dir.clone(),
            });
        };
        infer::check_manifest(manifest, variant, &[ModelRole::Text])?;
        let verified = infer::read_verified(manifest, ModelRole::Text, variant)?;
        let files = vec![verified.size.clone()];
        let model = Planned::build(verified, Executor::SingleThread, Precision::AsFile)?;
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            PromptError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            }
        })?;
        let unknown_id = unknown_token_id(&tokenizer);
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
            unknown_id,
            tokenizer_path,
            input_ids,
            attention_mask,
            text_embeds,
            model,
            context_length: text.context_length,
            embed_dim: manifest.embed_dim,
            logit_scale: scores.logit_scale,
            logit_bias: scores.logit_bias,
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

    /// Whether the tokenizer maps `prompt` to nothing but its unknown token (and special tokens): every word is
    /// outside its vocabulary, so the prompt embeds like an empty one and cannot be told from another such
    /// prompt. `embed` warns about each one; `ocellus check` lists them.
    pub fn is_unknown_only(&self, prompt: &str) -> bool {
        let Some(unknown) = self.unknown_id else {
            return false;
        };
        let Ok(encoding) = self.tokenizer.encode(prompt, true) else {
            return false;
        };
        let mut content = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_special_tokens_mask())
            .zip(encoding.get_attention_mask())
            .filter(|((_, &special), &attend)| special == 0 && attend == 1)
            .map(|((&id, _), _)| id)
            .peekable();
        content.peek().is_some() && content.all(|id| id == unknown)
    }

    /// Embeds `prompts` (in order) into a new [`PromptSet`] with a new version.
    pub fn embed(&mut self, prompts: &[String]) -> Result<PromptSet, PromptError> {
        if prompts.is_empty() {
            return Err(PromptError::Empty { source_name: None });
        }
        let e = self.embed_dim;
        let mut embeds = vec![0.0f32; prompts.len() * e];
        for (prompt, row) in prompts.iter().zip(embeds.chunks_exact_mut(e)) {
            if self.is_unknown_only(prompt) {
                tracing::warn!(
                    prompt = %prompt,
                    tokenizer = %self.tokenizer_path.display(),
                    "every word of this prompt is outside the tokenizer's vocabulary: it scores as a prompt of unknown words; reword it"
                );
            }
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

/// The id of `tokenizer`'s unknown token: the model's `unk_token` (BPE, WordPiece, WordLevel). Unigram models
/// report none here.
fn unknown_token_id(tokenizer: &tokenizers::Tokenizer) -> Option<u32> {
    use tokenizers::models::ModelWrapper;
    let token = match tokenizer.get_model() {
        ModelWrapper::BPE(m) => m.unk_token.clone()?,
        ModelWrapper::WordPiece(m) => m.unk_token.clone(),
        ModelWrapper::WordLevel(m) => m.unk_token.clone(),
        ModelWrapper::Unigram(_) => return None,
    };
    tokenizer.token_to_id(&token)
}
