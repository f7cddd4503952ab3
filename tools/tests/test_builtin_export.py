"""The built-in demo source through the CLI (random init; the trained weights are the demo helper's), and the
manifest's [evaluation] table."""

from __future__ import annotations

import json
import tomllib

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    pytest.importorskip("ocellus_tools.demo")
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out


def test_builtin_demo_pipeline(demo_bundle, capsys):
    out = demo_bundle
    for step in (["export", "--builtin", "demo", "--out", str(out), "--seed", "1"],
                 ["quantize", str(out), "--scenes", "32", "--keep-slower"],
                 ["validate", str(out)]):
        rc, _, err = run_cli(step, capsys)
        assert rc == 0, f"{step[0]}: {err}"
        if step[0] == "quantize":  # demo scenes are the demo's own data: no warning
            assert "warning: calibrated on generated demo scenes" not in err
            assert "warning" not in json.loads((out / "quantize.json").read_text())["calibration"]
    ev = {"scenes": 200, "seed": 99,
          "fp32": {"top1": 0.5, "r1": 0.25, "r5": 0.75, "r10": 1.0, "median_rank": 2.0},
          "int8": {"top1": 0.5, "r1": 0.25, "r5": 0.75, "r10": 1.0, "median_rank": 2.5},
          "fp32_detail": {"ignored": True}}
    (out / "evaluation.json").write_text(json.dumps(ev))
    rc, _, err = run_cli(["manifest", str(out)], capsys)
    assert rc == 0, err
    m = tomllib.loads((out / "manifest.toml").read_text())
    assert m["source"] == "builtin:demo" and m["name"] == "demo"
    assert m["resampler"]["kind"] == "perceiver"
    assert m["evaluation"] == {"scenes": 200, "seed": 99, "fp32": ev["fp32"], "int8": ev["int8"]}
    # every ONNX file of the bundle, each once: the three fp32 files and the int8 files quantize kept on this
    # machine (an int8 form is written only where it is faster than fp32 for its engine)
    paths = sorted(f["path"] for f in m["files"])
    assert paths == sorted(p.name for p in out.glob("*.onnx"))
    assert {"vision.fp32.onnx", "resampler.fp32.onnx", "text.fp32.onnx"} <= set(paths)


def test_bad_evaluation_file(demo_bundle, tmp_path, capsys):
    if not (demo_bundle / "parity.json").exists():
        pytest.skip("needs test_builtin_demo_pipeline")
    bad = tmp_path / "ev.json"
    bad.write_text(json.dumps({"scenes": 10}))
    rc, _, err = run_cli(["manifest", str(demo_bundle), "--evaluation", str(bad)], capsys)
    assert rc == 2 and "evaluation figures lack" in err


def test_builtin_rejects_hf_options(tmp_path, capsys):
    rc, _, err = run_cli(["export", "--builtin", "demo", "--out", str(tmp_path / "o"), "--latents", "8"], capsys)
    assert rc == 2 and "--latents apply to --hf checkpoints only" in err


def test_missing_demo_checkpoint(tmp_path, capsys):
    pytest.importorskip("ocellus_tools.demo")
    gone = tmp_path / "demo.pt"
    rc, _, err = run_cli(["export", "--builtin", "demo", "--demo-checkpoint", str(gone), "--out", str(tmp_path / "o")],
                         capsys)
    assert rc == 2 and str(gone) in err and "train-demo" in err
