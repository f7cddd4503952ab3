import argparse

import numpy as np
import pytest
import torch

from ocellus_tools import demo, scenes, train_demo
from ocellus_tools import tokenizer as T


def test_builtin_bundle_shapes_and_contract():
    b = demo.build_demo_bundle(None, seed=0)
    assert b.source == "builtin:demo" and b.resampler_kind == "perceiver" and b.embed_dim == 64
    assert (b.preprocess.height, b.preprocess.width, b.preprocess.resize) == (64, 64, "shortest_edge")
    assert b.context_length == 16 and b.pad_id == 0
    with torch.no_grad():
        patch, emb = b.vision(torch.zeros(1, 3, 64, 64))
        lat = b.resampler(patch)
        ids = torch.from_numpy(T.encode_batch(b.tokenizer, ["a red circle"])[0])
        txt = b.text(ids, torch.ones_like(ids))
    assert patch.shape == (1, 65, 96) and emb.shape == (1, 64)
    assert lat.shape == (1, 16, 96) and txt.shape == (1, 64)


def test_seeded_initialisation_is_reproducible_and_seed_dependent():
    a = demo.DemoModel(demo.DemoConfig()).init_weights(3).state_dict()
    b = demo.DemoModel(demo.DemoConfig()).init_weights(3).state_dict()
    c = demo.DemoModel(demo.DemoConfig()).init_weights(4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["vision.proj.weight"], c["vision.proj.weight"])


def test_text_pools_at_eos_and_ignores_what_follows():
    torch.manual_seed(0)
    model = demo.DemoModel(demo.DemoConfig()).init_weights(0).eval()
    ids = torch.tensor([[1, 4, 50, 53, 2] + [0] * 11])
    other_tail = ids.clone()
    other_tail[0, 7:] = 9  # after EOS: causal attention cannot carry it back to the EOS position
    other_head = ids.clone()
    other_head[0, 2] = 51
    with torch.no_grad():
        e = model.text(ids)
        assert torch.allclose(e, model.text(other_tail), atol=1e-6)
        assert not torch.allclose(e, model.text(other_head), atol=1e-4)


def test_checkpoint_round_trip(tmp_path):
    model = demo.DemoModel(demo.DemoConfig()).init_weights(1).eval()
    tok = T.train_tokenizer()
    demo.save_checkpoint(tmp_path / "demo.pt", model, tok, {"seed": 1})
    b = demo.build_demo_bundle(tmp_path / "demo.pt", seed=99)
    assert b.source == "train-demo"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.vision(x)[1], b.vision(x)[1])
    assert b.tokenizer.to_str() == tok.to_str()
    assert b.logit_scale == pytest.approx(float(model.scale().detach()))
    with pytest.raises(FileNotFoundError):
        demo.build_demo_bundle(tmp_path / "missing.pt", seed=0)


def test_yuyv_roundtrip_keeps_greys_and_subsamples_chroma():
    grey = np.full((1, 2, 4, 3), 0.5)
    out = train_demo.yuyv_roundtrip(grey, full_range=False)
    assert np.allclose(out, 0.5, atol=2 / 255)
    # A red and a blue pixel sharing one chroma pair come back with the same, mixed chroma.
    pair = np.array([[[[0.9, 0.1, 0.1], [0.1, 0.1, 0.9]]]])
    for full in (False, True):
        out = train_demo.yuyv_roundtrip(pair, full_range=full)
        assert out[0, 0, 0, 0] < 0.9 - 0.1 and out[0, 0, 1, 2] < 0.9 - 0.1


def test_training_batches_mark_every_true_caption():
    tok = T.train_tokenizer()
    batches = train_demo.Batches(np.random.default_rng(0), tok, 32, 0.25)
    x, ids, pos = batches.next()
    assert x.shape == (32, 3, 64, 64) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert ids.shape[1] == 16 and pos.shape == (32, ids.shape[0])
    assert bool(pos.any(1).all()) and bool(pos.any(0).all())


def _args(tmp_path, seed):
    ap = train_demo.add_arguments(argparse.ArgumentParser())
    return ap.parse_args(["--out", str(tmp_path), "--seed", str(seed), "--steps", "3", "--batch", "8",
                          "--warmup", "1", "--log-every", "1"])


def test_training_is_reproducible_with_a_seed(tmp_path):
    a, _, meta_a = train_demo.train(_args(tmp_path, 5), log=lambda _: None)
    b, _, meta_b = train_demo.train(_args(tmp_path, 5), log=lambda _: None)
    c, _, _ = train_demo.train(_args(tmp_path, 6), log=lambda _: None)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["loss"] for h in meta_a["history"]] == [h["loss"] for h in meta_b["history"]]
    assert not torch.equal(sa["vision.proj.weight"], sc["vision.proj.weight"])


def test_figures_on_a_perfect_and_a_blind_embedding():
    labels = np.array([0, 1, 2, 3])
    xs, ys = np.array([0, 1, 2, 0]), np.array([0, 1, 2, 1])
    caps = [scenes.caption_for(int(k), 0.2 + 0.3 * int(x), 0.5, 0) for k, x in zip(labels, xs)]
    prompts = np.eye(16)[:, :16]
    perfect = train_demo.figures(np.eye(16)[labels], np.eye(16)[labels], prompts, labels, xs, ys, caps)
    assert perfect["top1"] == 1.0 and perfect["r1"] == 1.0 and perfect["median_rank"] == 1.0
    blind = train_demo.figures(np.ones((4, 16)), np.eye(16)[labels], prompts, labels, xs, ys, caps)
    assert blind["r1"] == 0.0 and blind["median_rank"] == 4.0
