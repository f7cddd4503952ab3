"""export -> quantize -> validate -> manifest from random Hugging Face CLIP and SigLIP checkpoints."""

from __future__ import annotations

import hashlib
import json
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from ocellus_tools.quantize import FORBIDDEN

ROLES = ("vision", "resampler", "text")


@pytest.mark.parametrize("family", ["clip", "siglip"])
@pytest.mark.parametrize("resampler", ["perceiver", "qformer"])
def test_pipeline(built, capsys, family, resampler):
    bundle, logs = built.get(family, resampler, capsys)
    m = tomllib.loads((bundle / "manifest.toml").read_text())

    assert m["format"] == 2 and m["name"] == f"{family}-{resampler}" and m["tools_version"] == "0.1.0"
    assert m["source"].startswith(f"hf-{family}:")
    pre = m["preprocess"]
    assert (pre["height"], pre["width"]) == (64, 64)
    if family == "clip":
        assert (pre["resize"], pre["crop"], pre["interpolation"]) == ("shortest_edge", "center", "bicubic")
        assert pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    else:
        assert (pre["resize"], pre["crop"], pre["interpolation"]) == ("squash", "none", "bilinear")
        assert pre["mean"] == [0.5, 0.5, 0.5]
    assert m["text"] == {"tokenizer": "tokenizer.json", "context_length": 16, "pad_id": 0}
    assert m["scores"]["logit_scale"] > 0
    assert m["resampler"] == {"kind": resampler, "num_latents": 8, "latent_dim": 64}

    # quantize writes a QOperator file for tract and, beside it, onnxruntime's faster form (QDQ or dynamic);
    # both are variant int8, told apart by their engines
    ort_files = [f for f in m["files"] if f.get("engines") == ["onnxruntime"]]
    assert all(f["variant"] == "int8" and f["quant"] in ("qdq", "dynamic") for f in ort_files), ort_files
    files = {(f["role"], f["variant"]): f for f in m["files"] if f not in ort_files}
    assert set(files) == {(r, v) for r in ROLES for v in ("fp32", "int8")}
    n_tokens = 17 if family == "clip" else 16  # CLIP keeps its class token
    for (role, variant), f in files.items():
        path = bundle / f["path"]
        data = path.read_bytes()
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i["name"] for i in f["inputs"]] == [i.name for i in sess.get_inputs()]
        assert [i["shape"] for i in f["inputs"]] == [i.shape for i in sess.get_inputs()]
        assert [o["name"] for o in f["outputs"]] == [o.name for o in sess.get_outputs()]
        assert [o["shape"] for o in f["outputs"]] == [o.shape for o in sess.get_outputs()]
        assert f["parity"]["reference"] == ("pytorch" if variant == "fp32" else "fp32")
        if variant == "int8":  # <role>.int8.onnx are tract's QOperator files
            assert f["engines"] == ["tract"] and f["quant"] == "qoperator"
        else:
            assert "engines" not in f and "quant" not in f
        for o in f["parity"]["outputs"]:
            assert o["cosine"] >= (0.99999 if variant == "fp32" else 0.999), (role, variant, o)
            assert 0 <= o["max_abs"] < (1e-3 if variant == "fp32" else 1.0)
    vis = files[("vision", "fp32")]
    assert vis["inputs"] == [{"name": "pixel_values", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert vis["outputs"][0] == {"name": "patch_tokens", "shape": [1, n_tokens, 64], "dtype": "float32"}
    assert vis["outputs"][1]["shape"] == [1, m["embed_dim"]]
    assert files[("resampler", "int8")]["inputs"][0]["shape"] == [1, n_tokens, 64]
    text_inputs = [i["name"] for i in files[("text", "fp32")]["inputs"]]
    assert text_inputs == (["input_ids", "attention_mask"] if family == "clip" else ["input_ids"])
    assert all(i["dtype"] == "int64" and i["shape"] == [1, 16] for i in files[("text", "int8")]["inputs"])

    for role in ROLES:  # the int8 files are in the one format tract runs correctly
        model = onnx.load(str(bundle / f"{role}.int8.onnx"))
        ops = {n.op_type for n in model.graph.node}
        assert {"QLinearMatMul", "QuantizeLinear", "DequantizeLinear"} <= ops
        assert not ops & FORBIDDEN and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
        for n in model.graph.node:
            if n.op_type == "QuantizeLinear":  # symmetric activations: zero point 0, int8
                zp = next(i for i in model.graph.initializer if i.name == n.input[2])
                assert onnx.numpy_helper.to_array(zp).dtype == np.int8 and not onnx.numpy_helper.to_array(zp).any()
    assert "parity ok" in logs["validate"]

    tract = json.loads((bundle / "parity.json").read_text())["tract"]  # the runtime's engine on the same files
    assert tract["version"] == "0.23.9"
    assert set(tract["files"]) == {f"{r}.{v}.onnx" for r in ROLES for v in ("fp32", "int8")}
    for name, f in tract["files"].items():
        assert all(o["cosine"] >= 0.9999 for o in f["onnxruntime"]), (name, f)
        if name.endswith("int8.onnx"):
            assert all(o["cosine"] >= 0.999 for o in f["fp32"]), (name, f)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_reference_data(built, capsys, family):
    bundle, _ = built.get(family, "qformer", capsys)
    index = tomllib.loads((bundle / "reference" / "index.toml").read_text())
    assert index["engine"] == f"onnxruntime {ort.__version__}"
    sizes = []
    sess = {f"{r}.{v}": ort.InferenceSession(str(bundle / f"{r}.{v}.onnx"), providers=["CPUExecutionProvider"])
            for r in ROLES for v in ("fp32", "int8")}
    for img in index["images"]:
        with Image.open(bundle / "reference" / img["file"]) as im:
            assert im.mode == "RGB"
            sizes.append(im.size)
        pv = np.load(bundle / "reference" / img["pixel_values"])
        assert pv.dtype == np.float32 and pv.shape == (1, 3, 64, 64)
        for v in ("fp32", "int8"):
            outs = {k: np.load(bundle / "reference" / p) for k, p in img["outputs"][v].items()}
            pt, ie = sess[f"vision.{v}"].run(None, {"pixel_values": pv})
            np.testing.assert_allclose(outs["patch_tokens"], pt, atol=1e-5)
            np.testing.assert_allclose(outs["image_embeds"], ie, atol=1e-5)
            lat = sess[f"resampler.{v}"].run(None, {"patch_tokens": outs["patch_tokens"]})[0]
            np.testing.assert_allclose(outs["latents"], lat, atol=1e-5)
    assert (64, 64) in sizes and any(w != h for w, h in sizes) and any(w > 64 for w, h in sizes)
    t = index["text"]
    ids = np.load(bundle / "reference" / t["input_ids"])
    mask = np.load(bundle / "reference" / t["attention_mask"])
    assert ids.dtype == np.int64 and ids.shape == (len(t["prompts"]), 16) and mask.shape == ids.shape
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    assert [e.ids for e in tok.encode_batch(t["prompts"])] == ids.tolist()
    emb = np.load(bundle / "reference" / t["outputs"]["int8"]["text_embeds"])
    assert emb.shape[0] == len(t["prompts"])
    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["images"] == len(index["images"])


def test_perceiver_and_qformer_differ(built, capsys):
    a, _ = built.get("clip", "perceiver", capsys)
    b, _ = built.get("clip", "qformer", capsys)
    assert (a / "vision.fp32.onnx").read_bytes() == (b / "vision.fp32.onnx").read_bytes()
    assert (a / "resampler.fp32.onnx").read_bytes() != (b / "resampler.fp32.onnx").read_bytes()
