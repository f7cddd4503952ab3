"""Perceiver Resampler (Flamingo) and Q-Former (BLIP-2): structure, behaviour and clean ONNX export."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ocellus_tools.resamplers import PerceiverResampler, QFormer, build_resampler, init_resampler

torch.set_num_threads(1)


def test_perceiver_shapes_and_projection():
    m = init_resampler(PerceiverResampler(dim=32, depth=2, heads=4, num_latents=6, in_dim=48), seed=0).eval()
    assert isinstance(m.proj_in, torch.nn.Linear)
    out = m(torch.randn(2, 10, 48))
    assert out.shape == (2, 6, 32)


def test_perceiver_keys_values_include_latents():
    """Flamingo: the latents attend to concat(media, latents), so the attention weights span N + L keys."""
    m = init_resampler(PerceiverResampler(dim=32, depth=1, heads=4, num_latents=5), seed=0).eval()
    seen = {}
    attn = m.layers[0].attn

    def hook(mod, inp, out):
        seen["kv"] = out.shape

    attn.to_k.register_forward_hook(hook)
    m(torch.randn(1, 7, 32))
    assert seen["kv"] == (1, 7 + 5, 32)
    # separate LayerNorms for media and latents; the layer owns a feed-forward after the attention
    assert attn.norm_media is not attn.norm_latents and hasattr(m.layers[0], "ff")


@pytest.mark.parametrize("kind", ["perceiver", "qformer"])
def test_invariant_to_token_order_and_count_independent(kind):
    """Neither resampler adds positions to the vision tokens: permuting them leaves the latents unchanged, and
    any number of tokens gives the same number of latents."""
    m = build_resampler(kind, 24, num_latents=4, depth=2, dim=32, seed=1).eval()
    x = torch.randn(1, 9, 24)
    perm = torch.randperm(9)
    with torch.no_grad():
        a, b = m(x), m(x[:, perm])
        c = m(torch.randn(1, 20, 24))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert a.shape == c.shape == (1, 4, 32)


def test_qformer_cross_every():
    q = QFormer(dim=32, depth=4, heads=4, num_queries=3, in_dim=16, cross_every=2)
    assert [layer.cross_attn is not None for layer in q.layers] == [True, False, True, False]
    assert q.layers[0].cross_attn.key.in_features == 16  # keys/values from the vision width
    assert q(torch.randn(1, 5, 16)).shape == (1, 3, 32)


def test_qformer_reads_image_tokens():
    q = build_resampler("qformer", 16, num_latents=3, depth=2, dim=32, seed=2).eval()
    with torch.no_grad():
        assert not torch.allclose(q(torch.randn(1, 5, 16)), q(torch.randn(1, 5, 16)))


def test_seeded_init_is_deterministic():
    a = build_resampler("perceiver", 16, num_latents=4, depth=1, seed=9)
    b = build_resampler("perceiver", 16, num_latents=4, depth=1, seed=9)
    c = build_resampler("perceiver", 16, num_latents=4, depth=1, seed=10)
    for (n, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), n
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))


@pytest.mark.parametrize("kind", ["perceiver", "qformer"])
def test_exports_with_torchscript_opset17(kind):
    m = build_resampler(kind, 32, num_latents=4, depth=2, dim=48, seed=0).eval()
    x = torch.randn(1, 11, 32)
    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(m, (x,), f, dynamo=False, opset_version=17, input_names=["patch_tokens"],
                          output_names=["latents"])
        want = m(x).numpy()
    model = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert "Softmax" in ops and "MatMul" in ops and not any("Attention" in o for o in ops)
    got = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"patch_tokens": x.numpy()})
    np.testing.assert_allclose(got[0], want, atol=1e-5)
