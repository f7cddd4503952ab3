"""Manifest format 2 on an imported (vision-only) bundle: int8 files for both engines from a hand-written
quantize.json, each validated against fp32; few-shot prototypes; prompts the tokenizer cannot see."""

from __future__ import annotations

import json
import shutil
import tomllib

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from conftest import run_cli
from ocellus_tools.bundle import Preprocess
from ocellus_tools.prepare import prepare_image


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def _quantize_both_forms(bundle, capsys):
    """tract's QOperator files by `quantize`, onnxruntime's by quantize_dynamic, listed in a quantize.json written
    by hand the way the spec describes it (the real one comes from the rewritten quantize)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rc, _, err = run_cli(["quantize", str(bundle), "--scenes", "16", "--keep-slower"], capsys)
    assert rc == 0, err
    for role in ("vision", "resampler"):
        quantize_dynamic(str(bundle / f"{role}.fp32.onnx"), str(bundle / f"{role}.int8-ort.onnx"),
                         weight_type=QuantType.QInt8)
    files = []
    for role in ("vision", "resampler"):
        files.append({"role": role, "variant": "int8", "path": f"{role}.int8.onnx", "quant": "qoperator",
                      "engines": ["tract"], "cosine": {}, "kept_float": [],
                      "speed_ms": {"engine": "tract", "fp32": 2.0, "int8": 1.5, "threads": 1}})
        files.append({"role": role, "variant": "int8", "path": f"{role}.int8-ort.onnx", "quant": "dynamic",
                      "engines": ["onnxruntime"], "cosine": {}, "kept_float": [],
                      "speed_ms": {"engine": "onnxruntime", "fp32": 2.0, "int8": 1.1, "threads": 1}})
    q = {"tools_version": "0.1.0", "cpu": {"model": "test", "features": []},
         "calibration": {"source": "scenes:16", "samples": 16}, "files": files,
         "skipped": [{"role": "text", "engine": "tract", "reason": "no text encoder"}]}
    (bundle / "quantize.json").write_text(json.dumps(q))
    return q


def test_quantize_json_both_engines(tmp_path, imported, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    _quantize_both_forms(bundle, capsys)
    rc, out, err = run_cli(["validate", str(bundle)], capsys)
    assert rc == 0, err
    for name in ("vision.int8.onnx", "vision.int8-ort.onnx", "resampler.int8.onnx", "resampler.int8-ort.onnx"):
        assert f"{name} vs fp32" in out
    assert "int8 chain (vision.int8.onnx -> resampler.int8.onnx)" in out
    assert "int8-ort chain (vision.int8-ort.onnx -> resampler.int8-ort.onnx)" in out
    parity = json.loads((bundle / "parity.json").read_text())
    assert set(parity["files"]) == {f"{r}.{v}.onnx" for r in ("vision", "resampler")
                                    for v in ("fp32", "int8", "int8-ort")}
    assert all(o["cosine"] >= 0.999 for f in parity["files"].values() for o in f["outputs"])
    # tract runs the files meant for it; onnxruntime's dynamic int8 files are not
    assert set(parity["tract"]["files"]) == {f"{r}.{v}.onnx" for r in ("vision", "resampler") for v in ("fp32", "int8")}

    index = tomllib.loads((bundle / "reference" / "index.toml").read_text())
    sess = {n: ort.InferenceSession(str(bundle / n), providers=["CPUExecutionProvider"]) for n in parity["files"]}
    for img in index["images"]:
        assert set(img["outputs"]) == {"fp32", "int8", "int8-ort"}
        pv = np.load(bundle / "reference" / img["pixel_values"])
        for key, suffix in (("int8", "int8"), ("int8-ort", "int8-ort")):
            outs = {k: np.load(bundle / "reference" / p) for k, p in img["outputs"][key].items()}
            pt, ie = sess[f"vision.{suffix}.onnx"].run(None, {"pixel_values": pv})
            np.testing.assert_allclose(outs["patch_tokens"], pt, atol=1e-5)
            lat = sess[f"resampler.{suffix}.onnx"].run(None, {"patch_tokens": pt})[0]  # the chain, as the runtime
            np.testing.assert_allclose(outs["latents"], lat, atol=1e-5)

    rc, _, err = run_cli(["manifest", str(bundle)], capsys)
    assert rc == 0, err
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    got = [(f["path"], f.get("engines"), f.get("quant"), f["parity"]["reference"]) for f in m["files"]]
    assert got == [("vision.fp32.onnx", None, None, "onnxruntime:vit.onnx"),
                   ("resampler.fp32.onnx", None, None, "pytorch"),
                   ("vision.int8.onnx", ["tract"], "qoperator", "fp32"),
                   ("vision.int8-ort.onnx", ["onnxruntime"], "dynamic", "fp32"),
                   ("resampler.int8.onnx", ["tract"], "qoperator", "fp32"),
                   ("resampler.int8-ort.onnx", ["onnxruntime"], "dynamic", "fp32")]


def test_quantize_json_errors(tmp_path, imported, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    q = _quantize_both_forms(bundle, capsys)
    rc, _, err = run_cli(["validate", str(bundle)], capsys)
    assert rc == 0, err
    (bundle / "vision.int8-ort.onnx").unlink()
    rc, _, err = run_cli(["manifest", str(bundle)], capsys)
    _one_line_error(rc, err, "quantize.json lists vision.int8-ort.onnx", "not a file", "quantize")
    q["files"] = [f for f in q["files"] if f["path"] != "vision.int8-ort.onnx"]
    q["files"][0]["engines"] = ["tensorrt"]
    (bundle / "quantize.json").write_text(json.dumps(q))
    rc, _, err = run_cli(["validate", str(bundle)], capsys)
    _one_line_error(rc, err, "engines ['tensorrt']", "quantize")
    q["files"][0]["engines"] = ["tract"]
    (bundle / "quantize.json").write_text(json.dumps(q))
    rc, _, err = run_cli(["manifest", str(bundle)], capsys)  # the files left are the ones validate measured
    assert rc == 0, err
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    assert [f["path"] for f in m["files"] if f["role"] == "vision"] == ["vision.fp32.onnx", "vision.int8.onnx"]


def test_manifest_without_parity_but_with_stale_parity(tmp_path, imported, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    rc, _, err = run_cli(["validate", str(bundle)], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["quantize", str(bundle), "--scenes", "16", "--keep-slower"], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["manifest", str(bundle)], capsys)  # int8 files the figures do not cover
    _one_line_error(rc, err, "no figures for vision.int8.onnx", "validate")
    (bundle / "parity.json").unlink()
    rc, _, err = run_cli(["manifest", str(bundle)], capsys)  # no figures at all: the manifest lists what exists
    assert rc == 0, err
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    # fp32 and, per role, tract's int8 file and onnxruntime's
    assert len(m["files"]) == 6 and all("parity" not in f for f in m["files"])


def _example_images(root, rng):
    colours = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}
    for label, colour in colours.items():
        (root / label).mkdir(parents=True)
        for i in range(3):
            a = np.clip(rng.normal(0, 25, (40 + 9 * i, 70 - 5 * i, 3)) + colour, 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / label / f"{i}.{'png' if i % 2 else 'jpg'}")
    return colours


def test_prototypes(tmp_path, imported, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    _example_images(tmp_path / "examples", np.random.default_rng(0))
    rc, out, err = run_cli(["prototypes", str(bundle), str(tmp_path / "examples"), "--logit-scale", "30"], capsys)
    assert rc == 0, err
    assert "3 few-shot prototypes of width 64" in out
    protos = np.load(bundle / "prototypes.npy")
    assert protos.dtype == np.float32 and protos.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0, atol=1e-6)

    src = json.loads((bundle / "source.json").read_text())
    pre = Preprocess.from_record(src["preprocess"])
    sess = ort.InferenceSession(str(bundle / "vision.fp32.onnx"), providers=["CPUExecutionProvider"])
    for k, label in enumerate(["blue", "green", "red"]):  # sorted folder order
        embeds = []
        for f in sorted((tmp_path / "examples" / label).iterdir()):
            with Image.open(f) as im:
                e = sess.run(["image_embeds"], {"pixel_values": prepare_image(im.convert("RGB"), pre)})[0][0]
            embeds.append(e / np.linalg.norm(e))
        want = np.mean(embeds, axis=0)
        np.testing.assert_allclose(protos[k], want / np.linalg.norm(want), atol=1e-5)

    rc, _, err = run_cli(["manifest", str(bundle)], capsys)
    assert rc == 0, err
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    p = m["prototypes"]
    import hashlib

    data = (bundle / "prototypes.npy").read_bytes()
    assert p == {"file": "prototypes.npy", "labels": ["blue", "green", "red"], "size": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(), "images": [3, 3, 3], "variant": "fp32"}
    assert m["scores"] == {"logit_scale": 30.0, "logit_bias": 0.0} and "text" not in m

    rc, _, err = run_cli(["import", str(json.loads((bundle / "source.json").read_text())["spec"]["path"]), "--out",
                          str(bundle), "--resize", "squash", "--latents", "4"], capsys)
    assert rc == 0, err
    assert not (bundle / "prototypes.npy").exists()  # they described the old vision file


def test_prototypes_errors(tmp_path, imported, built, capsys):
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    rc, _, err = run_cli(["prototypes", str(bundle), str(tmp_path / "none")], capsys)
    _one_line_error(rc, err, "does not exist", "DIR/<label>")
    (tmp_path / "ex" / "empty").mkdir(parents=True)
    rc, _, err = run_cli(["prototypes", str(bundle), str(tmp_path / "ex")], capsys)
    _one_line_error(rc, err, "empty holds no image files")
    shutil.rmtree(tmp_path / "ex")
    _example_images(tmp_path / "ex", np.random.default_rng(1))
    rc, _, err = run_cli(["prototypes", str(bundle), str(tmp_path / "ex")], capsys)
    assert rc == 0, err
    src = json.loads((bundle / "source.json").read_text())  # a vision file other than the one they came from
    rc, _, err = run_cli(["import", src["spec"]["path"], "--out", str(tmp_path / "other"), "--pool", "mean"], capsys)
    assert rc == 0, err
    shutil.copy(tmp_path / "other" / "vision.fp32.onnx", bundle / "vision.fp32.onnx")
    rc, _, err = run_cli(["manifest", str(bundle)], capsys)
    _one_line_error(rc, err, "prototypes were computed with another vision.fp32.onnx", "prototypes")
    clip = built.copy("clip", "qformer", capsys, tmp_path / "clip")  # scores come from the checkpoint
    rc, _, err = run_cli(["prototypes", str(clip), str(tmp_path / "ex"), "--logit-scale", "10"], capsys)
    _one_line_error(rc, err, "scores from its checkpoint", "drop --logit-scale")
    rc, _, err = run_cli(["prototypes", str(clip), str(tmp_path / "ex")], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["manifest", str(clip)], capsys)
    assert rc == 0, err
    m = tomllib.loads((clip / "manifest.toml").read_text())
    assert m["prototypes"]["labels"] == ["blue", "green", "red"] and "text" in m


def test_unknown_prompts(tmp_path, built, capsys):
    from tokenizers import Tokenizer

    from ocellus_tools.prompts import unknown_prompts

    clip, _ = built.get("clip", "qformer", capsys)
    tok = Tokenizer.from_file(str(clip / "tokenizer.json"))  # word-level: unknown words become <unk>
    prompts = ["a red circle", "zebra giraffe", "zebra cup", "", "<unk> <pad>"]
    assert unknown_prompts(tok, prompts) == ["zebra giraffe", "", "<unk> <pad>"]
    rc, out, err = run_cli(["check-prompts", str(clip), "a red circle", "zebra giraffe"], capsys)
    assert rc == 0, err
    assert "ok       'a red circle': a red circle" in out and "UNKNOWN  'zebra giraffe': <unk> <unk>" in out
    assert "warning: prompt 'zebra giraffe'" in err and "reword it" in err
    (tmp_path / "prompts.txt").write_text("# robot prompts\na cup\nxylophone\n")
    rc, _, err = run_cli(["check-prompts", str(clip), "--file", str(tmp_path / "prompts.txt"), "--strict"], capsys)
    _one_line_error(rc, err, "1 of 2 prompts are unknown")
    demo = Tokenizer.from_file(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "models" / "demo" /
                                   "tokenizer.json"))  # BPE: unknown characters, known ones still seen
    assert unknown_prompts(demo, ["a red circle", "ZZZ", "zebra"]) == ["ZZZ"]


def test_vision_only_check_prompts(imported, capsys):
    rc, _, err = run_cli(["check-prompts", str(imported[0]), "a cup"], capsys)
    _one_line_error(rc, err, "no text encoder", "prototypes")


@pytest.mark.parametrize("what", ["parity", "reference"])
def test_fp32_only_bundle_from_export(tmp_path, checkpoints, what, capsys):
    """An exported (text) bundle needs no int8 files, parity or reference data either."""
    out = tmp_path / "b"
    rc, _, err = run_cli(["export", "--hf", str(checkpoints["siglip"]), "--out", str(out), "--latents", "4",
                          "--resampler-depth", "1"], capsys)
    assert rc == 0, err
    if what == "reference":
        rc, _, err = run_cli(["validate", str(out)], capsys)
        assert rc == 0, err
    rc, _, err = run_cli(["manifest", str(out)], capsys)
    assert rc == 0, err
    m = tomllib.loads((out / "manifest.toml").read_text())
    assert [(f["role"], f["variant"]) for f in m["files"]] == [("vision", "fp32"), ("resampler", "fp32"),
                                                               ("text", "fp32")]
    assert m["text"]["context_length"] == 16 and "scores" in m
    assert all(("parity" in f) == (what == "reference") for f in m["files"])
    if what == "reference":
        index = tomllib.loads((out / "reference" / "index.toml").read_text())
        assert set(index["text"]["outputs"]) == {"fp32"} and set(index["images"][0]["outputs"]) == {"fp32"}


def test_export_without_text(tmp_path, checkpoints, capsys):
    """export --hf --no-text: a vision-only bundle validated against PyTorch, quantized and manifested."""
    out = tmp_path / "b"
    rc, so, err = run_cli(["export", "--hf", str(checkpoints["clip"]), "--out", str(out), "--no-text", "--latents",
                           "4", "--resampler-depth", "1"], capsys)
    assert rc == 0, err
    assert "no text encoder" in so and not (out / "text.fp32.onnx").exists() and not (out / "tokenizer.json").exists()
    steps = (["quantize", str(out), "--scenes", "16", "--keep-slower"], ["validate", str(out)], ["manifest", str(out)])
    for step in steps:
        rc, _, err = run_cli(step, capsys)
        assert rc == 0, f"{step[0]}: {err}"
    m = tomllib.loads((out / "manifest.toml").read_text())
    assert "text" not in m and m["scores"]["logit_scale"] > 0  # the checkpoint's scores stay (for prototypes)
    assert sorted((f["role"], f["variant"], tuple(f.get("engines", []))) for f in m["files"]) == [
        ("resampler", "fp32", ()), ("resampler", "int8", ("onnxruntime",)), ("resampler", "int8", ("tract",)),
        ("vision", "fp32", ()), ("vision", "int8", ("onnxruntime",)), ("vision", "int8", ("tract",))]
    assert m["files"][0]["parity"]["reference"] == "pytorch"
    assert "text" not in tomllib.loads((out / "reference" / "index.toml").read_text())


def test_int8_files_without_quantize_json(tmp_path, imported, capsys):
    """No quantize.json: <role>.int8.onnx are tract's QOperator files, <role>.int8-ort.onnx onnxruntime's (their
    format read from their operators); with quantize.json, a file it does not list is left out, with a warning."""
    bundle = shutil.copytree(imported[0], tmp_path / "b")
    q = _quantize_both_forms(bundle, capsys)
    (bundle / "quantize.json").unlink()
    for step in (["validate", str(bundle)], ["manifest", str(bundle)]):
        rc, _, err = run_cli(step, capsys)
        assert rc == 0, err
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    assert [(f["path"], f.get("engines"), f.get("quant")) for f in m["files"] if f["variant"] == "int8"] == [
        ("vision.int8.onnx", ["tract"], "qoperator"), ("resampler.int8.onnx", ["tract"], "qoperator"),
        ("vision.int8-ort.onnx", ["onnxruntime"], "dynamic"), ("resampler.int8-ort.onnx", ["onnxruntime"], "dynamic")]
    q["files"] = [f for f in q["files"] if f["path"] != "resampler.int8-ort.onnx"]
    (bundle / "quantize.json").write_text(json.dumps(q))
    rc, _, err = run_cli(["manifest", str(bundle)], capsys)
    assert rc == 0, err
    assert "resampler.int8-ort.onnx is not listed in quantize.json" in err
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    assert "resampler.int8-ort.onnx" not in [f["path"] for f in m["files"]]
