"""models/vit-import (tools/scripts/make-import-model.sh), the imported bundle the Rust tests load: its manifest
describes its files, and its reference data is what onnxruntime computes on them (the original ONNX file lives
only while the script runs, so `validate` cannot be re-run on it)."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from ocellus_tools.bundle import Preprocess
from ocellus_tools.prepare import prepare_image

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "vit-import"


def test_manifest_describes_the_files():
    m = tomllib.loads((BUNDLE / "manifest.toml").read_text())
    assert m["format"] == 2 and m["preprocess"]["resize"] == "letterbox" and "text" not in m
    assert [(f["role"], f["variant"]) for f in m["files"]] == [("vision", "fp32"), ("resampler", "fp32")]
    for entry in m["files"] + [m["prototypes"]]:
        data = (BUNDLE / entry["file" if "file" in entry else "path"]).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert m["files"][0]["parity"]["reference"].startswith("onnxruntime:")
    protos = np.load(BUNDLE / m["prototypes"]["file"])
    assert protos.shape == (len(m["prototypes"]["labels"]), m["embed_dim"])
    assert sum(BUNDLE.joinpath(p).stat().st_size for p in BUNDLE.rglob("*") if p.is_file()) < 2_000_000


def test_reference_is_what_onnxruntime_computes():
    m = tomllib.loads((BUNDLE / "manifest.toml").read_text())
    pre = Preprocess.from_record(m["preprocess"])
    index = tomllib.loads((BUNDLE / "reference" / "index.toml").read_text())
    vision = ort.InferenceSession(str(BUNDLE / "vision.fp32.onnx"), providers=["CPUExecutionProvider"])
    resampler = ort.InferenceSession(str(BUNDLE / "resampler.fp32.onnx"), providers=["CPUExecutionProvider"])
    sizes = set()
    for img in index["images"]:
        with Image.open(BUNDLE / "reference" / img["file"]) as im:
            sizes.add(im.size)
            pv = prepare_image(im, pre)
        np.testing.assert_array_equal(np.load(BUNDLE / "reference" / img["pixel_values"]), pv)
        outs = {k: np.load(BUNDLE / "reference" / p) for k, p in img["outputs"]["fp32"].items()}
        pt, ie = vision.run(None, {"pixel_values": pv})
        np.testing.assert_allclose(outs["patch_tokens"], pt, atol=1e-5)
        np.testing.assert_allclose(outs["image_embeds"], ie, atol=1e-5)
        np.testing.assert_allclose(outs["latents"], resampler.run(None, {"patch_tokens": pt})[0], atol=1e-5)
    assert {(64, 64), (128, 97), (49, 33)} <= sizes  # model size, a rounding tie, an upscaled image
