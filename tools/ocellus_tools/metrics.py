"""Contrastive loss and retrieval metrics for the demo model.

After CLIP (Radford et al. 2021) and the reference text ../shared/seed/vlm-foundation.md, with its mistakes fixed:

* The loss is CLIP's symmetric InfoNCE over cosine similarities times a *learned log* scale (``exp(s)``,
  clamped at 100), not similarity divided by a learned temperature (a raw temperature parameter can reach 0 or
  go negative). When a batch holds several captions that are true of an image (16 classes: a batch of 256
  has ~16 scenes per class), the one-hot "diagonal" target of the reference marks true pairs as negatives; here
  a ``positives`` mask spreads the target uniformly over all true pairs (multi-positive InfoNCE, as in SupCon).
  Without a mask it is exactly the reference's loss.
* Retrieval ranks count from 1 and a query's rank is the rank of its *best* true item, so with duplicated
  meanings (many "a red circle" captions) a query is not penalised for retrieving an equally true item first.
  Ties with a false item count against the query (a constant embedding scores R@1 = 0, not a lucky sort order).
  R@k are fractions in [0, 1] (the manifest's unit), not percentages; the median rank is per direction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

MAX_LOGIT_SCALE = 100.0


def logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """``logit_scale * cos(image_i, text_j)`` as [n_images, n_texts]; embeddings need not be normalised."""
    img = F.normalize(image_embeds, dim=-1)
    txt = F.normalize(text_embeds, dim=-1)
    return logit_scale * img @ txt.t()


def contrastive_loss(logits_per_image: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy.

    ``positives`` (bool [n_images, n_texts]) marks every true pair; each row (and column) must have at least
    one. Default: the diagonal (pair i is image i with text i; needs a square matrix).
    """
    n_img, n_txt = logits_per_image.shape
    if positives is None:
        if n_img != n_txt:
            raise ValueError(f"without a positives mask the logits must be square, got {n_img}x{n_txt}")
        labels = torch.arange(n_img, device=logits_per_image.device)
        return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels))
    pos = positives.to(dtype=logits_per_image.dtype, device=logits_per_image.device)
    if pos.shape != logits_per_image.shape:
        raise ValueError(f"positives {tuple(pos.shape)} do not match logits {tuple(logits_per_image.shape)}")
    rows, cols = pos.sum(1), pos.sum(0)
    if bool((rows == 0).any()) or bool((cols == 0).any()):
        raise ValueError("every image and every text needs at least one positive")
    i2t = -(pos / rows[:, None] * F.log_softmax(logits_per_image, dim=1)).sum(1).mean()
    t2i = -(pos / cols[None, :] * F.log_softmax(logits_per_image, dim=0)).sum(0).mean()
    return 0.5 * (i2t + t2i)


def ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Rank (1 = first) of the best-scoring true item of each query (row): 1 + the number of false items that
    score at least as high as it. ``scores`` and ``positives`` are [n_queries, n_items]."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} must be the same 2-D shape")
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one true item")
    best = np.where(positives, scores, -np.inf).max(axis=1)
    ahead = (~positives) & (scores >= best[:, None])
    return 1 + ahead.sum(axis=1)


def ranking_metrics(r: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """R@k (fraction of queries with rank <= k), median and mean rank."""
    r = np.asarray(r)
    out = {f"r{k}": float((r <= k).mean()) for k in ks}
    out["median_rank"] = float(np.median(r))
    out["mean_rank"] = float(r.mean())
    return out


def retrieval_metrics(scores: np.ndarray, positives: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Image->text (rows of ``scores`` [n_images, n_texts] as queries) and text->image (columns) metrics.
    ``positives`` defaults to the diagonal."""
    scores = np.asarray(scores)
    if positives is None:
        if scores.shape[0] != scores.shape[1]:
            raise ValueError("without a positives mask the scores must be square")
        positives = np.eye(scores.shape[0], dtype=bool)
    positives = np.asarray(positives, dtype=bool)
    return {
        "i2t": ranking_metrics(ranks(scores, positives)),
        "t2i": ranking_metrics(ranks(scores.T, positives.T)),
    }


def zero_shot_top1(image_embeds: np.ndarray, prompt_embeds: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose most similar prompt (cosine) is their class's."""
    return float((zero_shot_predict(image_embeds, prompt_embeds) == np.asarray(labels)).mean())


def zero_shot_predict(image_embeds: np.ndarray, prompt_embeds: np.ndarray) -> np.ndarray:
    img = np.asarray(image_embeds, dtype=np.float64)
    txt = np.asarray(prompt_embeds, dtype=np.float64)
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    return (img @ txt.T).argmax(axis=1)


def cosine_scores(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    img = np.asarray(image_embeds, dtype=np.float64)
    txt = np.asarray(text_embeds, dtype=np.float64)
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    return img @ txt.T
