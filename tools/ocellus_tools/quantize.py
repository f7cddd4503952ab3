"""`ocellus-tools quantize`: fp32 ONNX -> int8 in the one format tract 0.23 runs fast and correctly
(../shared/notes/tract-quantization.md): static QOperator quantization of only the MatMul/Conv nodes whose weight
is a constant initializer, signed int8 activations (symmetric, zero point 0) and per-tensor int8 weights. The
result holds only QLinearMatMul, QLinearConv, QuantizeLinear and DequantizeLinear besides float ops; softmax and
everything else stays float, so tract never sees a quantized Softmax (which it turns into a wrong lookup table).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from .errors import ToolError
from .files import bundle_roles, commit_files, onnx_name, read_source, require_files, staging_dir

QUANTIZABLE = ("MatMul", "Conv")
QUANT_OPS = {"QLinearMatMul", "QLinearConv", "QuantizeLinear", "DequantizeLinear"}
FORBIDDEN = {"QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSoftmax", "QLinearSigmoid", "QLinearLeakyRelu",
             "QLinearAveragePool", "QLinearGlobalAveragePool", "QGemm", "QAttention", "MatMulInteger",
             "ConvInteger", "DynamicQuantizeLinear"}


def nodes_with_constant_weights(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul/Conv nodes whose second input (the weight) is a graph initializer."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZABLE and len(n.input) > 1 and n.input[1] in inits]


class _Reader:
    """onnxruntime CalibrationDataReader over a list of feeds, with a progress bar."""

    def __init__(self, feeds: list[dict], desc: str):
        self.feeds = feeds
        self.i = 0
        self.bar = tqdm(total=len(feeds), desc=desc, unit="sample", leave=True)

    def get_next(self):
        if self.i >= len(self.feeds):
            self.bar.close()
            return None
        feed = self.feeds[self.i]
        self.i += 1
        self.bar.update(1)
        return feed

    def rewind(self):
        self.i = 0


def check_quantized(path: Path, expected: int) -> int:
    """Checks that `path` is in the tract-friendly format; returns the number of quantized nodes."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    bad = sorted({n.op_type for n in model.graph.node if n.op_type in FORBIDDEN or n.domain not in ("", "ai.onnx")})
    if bad:
        raise ToolError(f"{path.name}: quantization produced operators tract cannot run correctly or fast: "
                        f"{', '.join(bad)}")
    q = sum(1 for n in model.graph.node if n.op_type in ("QLinearMatMul", "QLinearConv"))
    if q == 0 and expected:
        raise ToolError(f"{path.name}: no node was quantized (expected {expected}): onnxruntime skipped them all")
    return q


def _quantize(src: Path, dst: Path, nodes: list[str], cache: Path, reader) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    logging.getLogger().setLevel(logging.ERROR)
    quantize_static(
        str(src), str(dst), reader,
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=False,
        reduce_range=False,
        nodes_to_quantize=nodes,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True},
        calibration_cache_path=str(cache),
    )


def _min_cosine(path: Path, feeds: list[dict], reference: list[list[np.ndarray]]) -> float:
    from .validate import cosine

    s = _session(path)
    worst = 1.0
    for feed, ref in zip(feeds, reference):
        for got, want in zip(s.run(None, feed), ref):
            worst = min(worst, cosine(got, want))
    return worst


def quantize_file(src: Path, dst: Path, feeds: list[dict], desc: str, target: float = 0.9995,
                  check_feeds: list[dict] | None = None, check_samples: int = 32) -> dict:
    """Quantizes one file into `dst`.

    Every MatMul/Conv node with a constant weight is quantized, calibrated once (min/max over `feeds`). If the
    result's cosine to fp32 on `check_feeds` (held-out samples; default: a subset of `feeds`) is below `target`
    on any output, the nodes whose quantization alone costs the most are left in float, one at a time, until
    the target is met: the file keeps the same format, with fewer quantized nodes. Returns what was done."""
    model = onnx.load(str(src))
    nodes = nodes_with_constant_weights(model)
    if not nodes:
        raise ToolError(f"{src.name} has no MatMul or Conv node with a constant weight: nothing to quantize")
    if check_feeds:
        check = check_feeds
    else:
        step = max(1, len(feeds) // check_samples)
        check = feeds[::step][:check_samples]
    ref_sess = _session(src)
    reference = [ref_sess.run(None, f) for f in check]
    tmp = Path(tempfile.mkdtemp(prefix="ocellus-quant-"))
    try:
        cache = tmp / "calibration.json"
        _quantize(src, dst, nodes, cache, _Reader(feeds, desc))
        cos = _min_cosine(dst, check, reference)
        kept = list(nodes)
        if cos < target:
            sensitivity = {}
            probe = tmp / "probe.onnx"
            for n in tqdm(nodes, desc=f"{desc}: sensitivity (cosine {cos:.5f} < {target})", unit="node"):
                _quantize(src, probe, [n], cache, None)
                sensitivity[n] = _min_cosine(probe, check, reference)
            for n in sorted(nodes, key=lambda n: sensitivity[n]):
                kept.remove(n)
                if not kept:
                    break
                _quantize(src, dst, kept, cache, None)
                cos = _min_cosine(dst, check, reference)
                if cos >= target:
                    break
            if not kept:
                raise ToolError(f"{src.name}: int8 cannot reach cosine {target} to fp32 even with a single quantized "
                                "node: use the fp32 file")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    quantized = check_quantized(dst, len(kept))
    return {"quantized_nodes": quantized, "candidates": len(nodes), "float_nodes": sorted(set(nodes) - set(kept)),
            "check_cosine": cos, "samples": len(feeds),
            "check": f"{len(check)} held-out samples" if check_feeds else f"{len(check)} calibration samples"}


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def text_feeds(session, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[dict]:
    names = {i.name for i in session.get_inputs()}
    feeds = []
    for k in range(input_ids.shape[0]):
        feed = {"input_ids": input_ids[k:k + 1]}
        if "attention_mask" in names:
            feed["attention_mask"] = attention_mask[k:k + 1]
        feeds.append(feed)
    return feeds


def quantize_bundle(bundle: Path, pixel_values: list[np.ndarray], texts: list[str], target: float = 0.9995,
                    check_pixel_values: list[np.ndarray] | None = None) -> dict:
    """Writes vision/resampler/text int8 files beside the fp32 ones (which stay). `pixel_values` are prepared
    calibration images; the resampler is calibrated on the fp32 vision encoder's patch tokens of them."""
    from tokenizers import Tokenizer

    from .export import encode

    bundle = Path(bundle)
    roles = bundle_roles(bundle, read_source(bundle))  # text only when the bundle has a text encoder
    fp32 = {r: bundle / onnx_name(r, "fp32") for r in roles}
    require_files(bundle, [p.name for p in fp32.values()] + (["tokenizer.json"] if "text" in roles else []),
                  "export --out")
    if not pixel_values:
        raise ToolError("no calibration images: pass --images DIR with readable images or --scenes N (N > 0)")
    if not texts and "text" in roles:
        raise ToolError("no calibration texts")

    vision = _session(fp32["vision"])
    patch_tokens = [vision.run(["patch_tokens"], {"pixel_values": pv})[0]
                    for pv in tqdm(pixel_values, desc="patch tokens", unit="image")]
    check_pv = list(check_pixel_values or [])
    check_pt = [vision.run(["patch_tokens"], {"pixel_values": pv})[0] for pv in check_pv]
    jobs = [("vision", [{"pixel_values": pv} for pv in pixel_values], [{"pixel_values": pv} for pv in check_pv]),
            ("resampler", [{"patch_tokens": t} for t in patch_tokens], [{"patch_tokens": t} for t in check_pt])]
    if "text" in roles:
        tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        ids, mask = encode(tokenizer, texts)
        jobs.append(("text", text_feeds(_session(fp32["text"]), ids, mask), None))

    staging = staging_dir(bundle)
    report = {}
    try:
        for role, feeds, check in jobs:
            r = quantize_file(fp32[role], staging / onnx_name(role, "int8"), feeds, f"calibrating {role}", target,
                              check)
            r["size"] = os.path.getsize(staging / onnx_name(role, "int8"))
            report[role] = r
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_files(staging, bundle, [onnx_name(r, "int8") for r in roles])
    return report
