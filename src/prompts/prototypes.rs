//! Few-shot image prototypes (`[prototypes]` of a bundle, written by `ocellus-tools prototypes`): labelled
//! image embeddings, scored against each frame exactly like text prompts. They are means of a few images'
//! embeddings, not language: they let a vision-only bundle (no text encoder) name what it sees.

use std::sync::atomic::Ordering;

use super::set::{PromptSet, NEXT_VERSION};
use super::PromptError;
use crate::infer::check_file;
use crate::manifest::Manifest;

/// The bundle's prototypes as a prompt set (verified: size and sha256, shape [K, E], K labels, finite rows
/// of unit length).
pub fn load_prototypes(manifest: &Manifest) -> Result<Option<PromptSet>, PromptError> {
    let Some(p) = &manifest.prototypes else {
        return Ok(None);
    };
    let path = manifest.dir.join(&p.file);
    check_file("prototypes", &path, p.size, &p.sha256)?;
    let bad = |message: String| PromptError::Prototypes {
        path: path.clone(),
        message,
    };
    let array: ndarray::Array2<f32> =
        ndarray_npy::read_npy(&path).map_err(|e| bad(format!("not an f32 [K, E] .npy: {e}")))?;
    let (k, e) = array.dim();
    if k != p.labels.len() || e != manifest.embed_dim {
        return Err(bad(format!(
            "holds [{k}, {e}] but the manifest has {} labels and embed_dim {}",
            p.labels.len(),
            manifest.embed_dim
        )));
    }
    let mut embeds: Vec<f32> = array.iter().copied().collect();
    for (label, row) in p.labels.iter().zip(embeds.chunks_exact_mut(e)) {
        if !crate::infer::l2_normalise(row) {
            return Err(bad(format!(
                "the prototype of '{label}' is zero or not finite"
            )));
        }
    }
    let Some(scores) = &manifest.scores else {
        return Err(bad("the manifest has [prototypes] but no [scores]".into()));
    };
    Ok(Some(PromptSet {
        labels: p.labels.clone(),
        version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
        dim: e,
        embeds,
        logit_scale: scores.logit_scale,
        logit_bias: scores.logit_bias,
    }))
}

impl PromptSet {
    /// A set with no prompts, for a bundle with neither a text encoder nor prototypes: frames are published
    /// with embeddings and latents and no scores.
    pub fn empty(dim: usize) -> PromptSet {
        PromptSet {
            labels: Vec::new(),
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            dim,
            embeds: Vec::new(),
            logit_scale: 1.0,
            logit_bias: 0.0,
        }
    }
}
