"""`export --resampler-only`: a Perceiver Resampler or Q-Former for any N x D tokens, from a seed or a trained state
dict, standalone or replacing a bundle's resampler."""

from __future__ import annotations

import json
import shutil
import tomllib

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import run_cli
from ocellus_tools.resampler_io import build_from_spec, make_spec
from ocellus_tools.resamplers import build_resampler


def _run(path, tokens):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"patch_tokens": tokens})[0]


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("kind", ["perceiver", "qformer"])
def test_any_width(tmp_path, kind, capsys):
    """50 tokens of width 96 (not the 64 of the test encoders), 8 latents of width 32."""
    out = tmp_path / "r"
    rc, so, err = run_cli(["export", "--resampler-only", "--tokens", "50", "--width", "96", "--resampler", kind,
                           "--latents", "8", "--latent-dim", "32", "--resampler-depth", "2", "--seed", "3",
                           "--out", str(out)], capsys)
    assert rc == 0, err
    assert "holds no vision encoder" in so
    rec = json.loads((out / "source.json").read_text())
    spec = rec["resampler"]["spec"]
    assert spec == {"kind": kind, "tokens": 50, "in_dim": 96, "latents": 8, "latent_dim": 32, "depth": 2,
                    "heads": 2, "seed": 3, "state_dict": None, "state_dict_sha256": None}
    x = np.random.default_rng(0).standard_normal((1, 50, 96)).astype(np.float32)
    got = _run(out / "resampler.fp32.onnx", x)
    with torch.no_grad():
        want = build_resampler(kind, 96, num_latents=8, depth=2, dim=32, heads=2, seed=3)(torch.from_numpy(x))
    assert got.shape == (1, 8, 32)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    rc, _, err = run_cli(["manifest", str(out)], capsys)  # a resampler alone is no bundle
    _one_line_error(rc, err, "holds only a resampler", "import")


def test_replaces_a_bundles_resampler(tmp_path, imported, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    rc, _, err = run_cli(["validate", str(bundle)], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["export", "--resampler-only", "--out", str(bundle), "--width", "32"], capsys)
    _one_line_error(rc, err, "patch_tokens [1, 17, 64]", "--width 32", "drop --width")
    rc, so, err = run_cli(["export", "--resampler-only", "--out", str(bundle), "--resampler", "perceiver",
                           "--latents", "4", "--seed", "9"], capsys)
    assert rc == 0, err
    assert "reading 17 tokens of width 64" in so and "parity.json" in so and "reference" in so
    assert not (bundle / "parity.json").exists() and not (bundle / "manifest.toml").exists()
    rec = json.loads((bundle / "source.json").read_text())
    assert rec["source"] == "import:vit.onnx; resampler-only:perceiver" and rec["resampler"]["num_latents"] == 4
    for step in (["validate", str(bundle)], ["manifest", str(bundle)]):
        rc, _, err = run_cli(step, capsys)
        assert rc == 0, err
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    assert m["resampler"] == {"kind": "perceiver", "num_latents": 4, "latent_dim": 64}


def _trained(kind, **kw):
    """A resampler whose weights are not any seed's: init, then perturbed (as training would)."""
    m = build_resampler(kind, 64, seed=0, **kw)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return m.eval()


def test_state_dict_good(tmp_path, capsys):
    """Weights saved under a training wrapper's prefix; latents, width and depth read from them."""
    m = _trained("qformer", num_latents=6, depth=3, dim=48, heads=4)
    sd = {f"model.resampler.{k}": v for k, v in m.state_dict().items()}
    sd["model.head.weight"] = torch.zeros(2, 2)  # other parts of the training model are ignored
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "trained.pt")
    out = tmp_path / "r"
    rc, so, err = run_cli(["export", "--resampler-only", "--tokens", "17", "--width", "64", "--resampler", "qformer",
                           "--resampler-heads", "4", "--state-dict", str(tmp_path / "trained.pt"), "--out", str(out)],
                          capsys)
    assert rc == 0, err
    assert "3 layers, 6 latents of width 48, 4 heads" in so and "weights trained.pt" in so
    x = np.random.default_rng(1).standard_normal((1, 17, 64)).astype(np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(out / "resampler.fp32.onnx", x), want, atol=1e-5)
    spec = json.loads((out / "source.json").read_text())["resampler"]["spec"]
    assert spec["seed"] is None and len(spec["state_dict_sha256"]) == 64
    with torch.no_grad():  # validate's rebuild gives the same module
        np.testing.assert_allclose(build_from_spec(spec, rebuild=True)(torch.from_numpy(x)).numpy(), want, atol=1e-6)


def test_state_dict_mismatches(tmp_path, capsys):
    m = _trained("perceiver", num_latents=8, depth=2)
    torch.save(m.state_dict(), tmp_path / "p8.pt")
    base = ["export", "--resampler-only", "--tokens", "17", "--width", "64", "--out", str(tmp_path / "r")]
    rc, _, err = run_cli([*base, "--state-dict", str(tmp_path / "p8.pt"), "--latents", "16", "--resampler-depth",
                          "3"], capsys)
    _one_line_error(rc, err, "p8.pt does not fit a perceiver resampler", "missing layers.2.", "shapes: latents is "
                    "[8, 64] in the file, [16, 64] here", "--latents")
    rc, _, err = run_cli([*base, "--state-dict", str(tmp_path / "p8.pt"), "--resampler", "qformer"], capsys)
    _one_line_error(rc, err, "no 'query_tokens' tensor", "looks like a perceiver", "--resampler perceiver")
    rc, _, err = run_cli([*base[:-4], "--width", "32", "--tokens", "17", "--out", str(tmp_path / "r"),
                          "--state-dict", str(tmp_path / "p8.pt")], capsys)
    _one_line_error(rc, err, "reading tokens of width 64", "have width 32")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    rc, _, err = run_cli([*base, "--state-dict", str(tmp_path / "junk.pt")], capsys)
    _one_line_error(rc, err, "cannot read", "torch.save")
    assert not (tmp_path / "r").exists()
    # through the import too: its resampler reads the imported tokens
    spec = make_spec("perceiver", tokens=17, in_dim=64, state_dict=tmp_path / "p8.pt")
    assert (spec["latents"], spec["depth"], spec["latent_dim"]) == (8, 2, 64)


def test_resampler_only_flag_checks(tmp_path, capsys):
    rc, _, err = run_cli(["export", "--resampler-only", "--out", str(tmp_path / "r")], capsys)
    _one_line_error(rc, err, "--tokens N and --width D")
    rc, _, err = run_cli(["export", "--builtin", "demo", "--out", str(tmp_path / "r"), "--tokens", "4"], capsys)
    _one_line_error(rc, err, "--tokens", "--resampler-only")
    rc, _, err = run_cli(["export", "--resampler-only", "--tokens", "5", "--width", "30", "--latent-dim", "30",
                          "--resampler-heads", "4", "--out", str(tmp_path / "r")], capsys)
    _one_line_error(rc, err, "not divisible by heads 4")
    assert not (tmp_path / "r").exists()
