//! A prompt set: labels and their embeddings, and scoring against it.

use std::sync::atomic::AtomicU64;

pub(super) static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// Labels and their L2-normalised text embeddings, with the manifest's score parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSet {
    pub(super) labels: Vec<String>,
    pub(super) version: u64,
    pub(super) dim: usize,
    pub(super) embeds: Vec<f32>,
    pub(super) logit_scale: f32,
    pub(super) logit_bias: f32,
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
