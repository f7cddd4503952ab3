"""`ocellus-tools prototypes BUNDLE DIR`: few-shot image prototypes, scored by the runtime like text prompts.

DIR holds one folder per label with a few example images (``DIR/<label>/*.png|jpg``). Each image goes through
the tools' preparation (the bundle's ``[preprocess]``) and the bundle's fp32 vision file in onnxruntime; its
``image_embeds`` are L2-normalised, averaged over the label's images and normalised again. The result is
``prototypes.npy`` (float32 [K, E], row k for label k, labels in sorted folder order) and ``prototypes.json``
(labels, image counts, the vision file's sha256 and, for bundles without a text encoder, the scores' logit scale
and bias), which `manifest` turns into the ``[prototypes]`` table (docs/manifest.md).

These are few-shot prototypes, not language: a label is whatever its images have in common for this encoder,
and the runtime scores a frame against them as softmax_k(logit_scale * cos(image, prototype_k) + logit_bias).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import ToolError
from .files import (PROTOTYPES_FILE, PROTOTYPES_RECORD, bundle_roles, commit_files, onnx_name, read_source,
                    require_files, staging_dir)
from .prepare import IMAGE_SUFFIXES, prepare_image

DEFAULT_LOGIT_SCALE = 100.0


def example_images(folder: Path) -> dict[str, list[Path]]:
    """label -> its image files, labels sorted; ToolError when the layout is not DIR/<label>/<images>."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ToolError(f"prototype folder {folder} does not exist: pass a directory holding one folder of example "
                        "images per label (DIR/<label>/*.png)")
    labels = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ToolError(f"label folder {d} holds no image files ({', '.join(IMAGE_SUFFIXES)}): add example "
                            "images of that label or remove the folder")
        labels[d.name] = files
    if not labels:
        raise ToolError(f"{folder} has no label folders: put each label's example images in DIR/<label>/")
    return labels


def compute_prototypes(bundle: Path, folder: Path, logit_scale: float | None = None,
                       logit_bias: float | None = None) -> dict:
    """Writes prototypes.npy and prototypes.json into `bundle` (atomically); returns the record."""
    from PIL import Image

    from .bundle import Preprocess
    from .manifest import sha256
    from .quantize import _session

    bundle = Path(bundle)
    rec = read_source(bundle)
    bundle_roles(bundle, rec)
    vision = bundle / onnx_name("vision", "fp32")
    require_files(bundle, [vision.name], "import" if rec["spec"].get("kind") == "import" else "export --out")
    if rec.get("scores") is not None and (logit_scale is not None or logit_bias is not None):
        raise ToolError(f"{bundle} has scores from its checkpoint (logit_scale {rec['scores']['logit_scale']:.4g}); "
                        "prototypes are scored with them: drop --logit-scale and --logit-bias")
    if logit_scale is not None and not logit_scale > 0:
        raise ToolError(f"--logit-scale must be positive, got {logit_scale}")
    pre = Preprocess.from_record(rec["preprocess"])
    sess = _session(vision)
    labels = example_images(folder)
    rows, counts = [], []
    for label, files in labels.items():
        embeds = []
        for f in files:
            try:
                with Image.open(f) as im:
                    pv = prepare_image(im.convert("RGB"), pre)
            except OSError as e:
                raise ToolError(f"cannot read image {f} ({e}): replace or remove it") from e
            e = sess.run(["image_embeds"], {"pixel_values": pv})[0][0].astype(np.float64)
            norm = np.linalg.norm(e)
            if not np.isfinite(norm) or norm == 0:
                raise ToolError(f"the vision encoder gives a zero or non-finite embedding for {f}: check the image and "
                                "the bundle (ocellus-tools validate)")
            embeds.append(e / norm)
        mean = np.mean(embeds, axis=0)
        norm = np.linalg.norm(mean)
        if norm < 1e-6:
            raise ToolError(f"the images of label {label!r} cancel out (their mean embedding is zero): give examples "
                            "that share what the label means")
        rows.append(mean / norm)
        counts.append(len(files))
    array = np.ascontiguousarray(np.stack(rows), dtype="<f4")
    record = {"file": PROTOTYPES_FILE, "labels": list(labels), "images": counts, "variant": "fp32",
              "vision_sha256": sha256(vision), "source": str(Path(folder).resolve())}
    if rec.get("scores") is None:
        record["scores"] = {"logit_scale": float(DEFAULT_LOGIT_SCALE if logit_scale is None else logit_scale),
                            "logit_bias": float(logit_bias or 0.0)}
    staging = staging_dir(bundle)
    try:
        np.save(staging / PROTOTYPES_FILE, array)
        (staging / PROTOTYPES_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_files(staging, bundle, [PROTOTYPES_FILE, PROTOTYPES_RECORD])
    record["array"] = array
    return record
