import math

import numpy as np
import pytest
import torch

from ocellus_tools import metrics


def test_symmetric_infonce_on_the_diagonal_by_hand():
    # Each row and column: -log(e / (e + 1)) = log(1 + 1/e).
    loss = metrics.contrastive_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_symmetric_infonce_averages_both_directions():
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    i2t = (math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 2
    t2i = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    assert metrics.contrastive_loss(logits).item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)


def test_multi_positive_loss_spreads_the_target_over_true_pairs():
    # One image, two true captions with softmax [1/4, 3/4]: i2t = -(ln(1/4) + ln(3/4)) / 2; t2i = 0.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    loss = metrics.contrastive_loss(logits, torch.tensor([[True, True]]))
    assert loss.item() == pytest.approx(0.5 * -(math.log(0.25) + math.log(0.75)) / 2, abs=1e-6)


def test_identity_mask_equals_the_diagonal_loss_and_marked_duplicates_are_not_pushed_apart():
    torch.manual_seed(0)
    logits = torch.randn(6, 6) * 3
    eye = torch.eye(6, dtype=torch.bool)
    assert metrics.contrastive_loss(logits, eye).item() == pytest.approx(metrics.contrastive_loss(logits).item())
    # Images 0 and 1 show the same class and both captions are true of both. Scoring all four pairs equally
    # is then right: with the mask it is a minimum (zero gradient); the diagonal target pushes the true
    # off-diagonal pairs down.
    marked = torch.full((2, 2), 5.0, requires_grad=True)
    metrics.contrastive_loss(marked, torch.ones(2, 2, dtype=torch.bool)).backward()
    assert torch.allclose(marked.grad, torch.zeros(2, 2), atol=1e-7)
    diag = torch.full((2, 2), 5.0, requires_grad=True)
    metrics.contrastive_loss(diag).backward()
    assert diag.grad[0, 1].item() > 0.1 and diag.grad[0, 0].item() < -0.1


def test_loss_rejects_queries_without_positives():
    with pytest.raises(ValueError):
        metrics.contrastive_loss(torch.zeros(2, 2), torch.tensor([[True, False], [True, False]]))
    with pytest.raises(ValueError):
        metrics.contrastive_loss(torch.zeros(2, 3))


def test_logits_use_cosine_times_scale():
    img = torch.tensor([[3.0, 0.0]])
    txt = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    out = metrics.logits(img, txt, 10.0)
    assert out.tolist()[0] == pytest.approx([10 / math.sqrt(2), 0.0], abs=1e-5)


def test_ranks_by_hand_with_pessimistic_ties():
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.5, 0.7], [0.3, 0.3, 0.3]])
    r = metrics.ranks(scores, np.eye(3, dtype=bool))
    assert r.tolist() == [1, 2, 3]
    m = metrics.ranking_metrics(r)
    assert m["r1"] == pytest.approx(1 / 3) and m["r5"] == 1.0 and m["r10"] == 1.0
    assert m["median_rank"] == 2.0 and m["mean_rank"] == 2.0


def test_rank_is_that_of_the_best_true_item():
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert metrics.ranks(scores, np.array([[True, False, True, False]])).tolist() == [3]
    assert metrics.ranks(scores, np.array([[True, True, True, False]])).tolist() == [1]


def test_retrieval_metrics_in_both_directions():
    # Text->image reads the columns: text 0's true image 0 scores 0.2 < image 1's 0.6 -> rank 2.
    scores = np.array([[0.2, 0.1], [0.6, 0.9]])
    out = metrics.retrieval_metrics(scores)
    assert out["i2t"]["r1"] == 1.0 and out["i2t"]["median_rank"] == 1.0
    assert out["t2i"]["r1"] == 0.5 and out["t2i"]["median_rank"] == 1.5
    r10 = metrics.ranking_metrics(np.arange(1, 21))
    assert r10["r1"] == 0.05 and r10["r5"] == 0.25 and r10["r10"] == 0.5 and r10["median_rank"] == 10.5


def test_ranks_reject_queries_without_true_items():
    with pytest.raises(ValueError):
        metrics.ranks(np.zeros((2, 2)), np.array([[True, False], [False, False]]))


def test_zero_shot_top1_uses_cosine_not_dot_product():
    prompts = np.array([[1.0, 0.0], [10.0, 10.0]])  # the long second prompt must not win on length
    images = np.array([[2.0, 0.1], [0.1, 0.2], [1.0, 1.2]])
    assert metrics.zero_shot_predict(images, prompts).tolist() == [0, 1, 1]
    assert metrics.zero_shot_top1(images, prompts, np.array([0, 1, 0])) == pytest.approx(2 / 3)
