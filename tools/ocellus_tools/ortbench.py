"""`ocellus-tools ort-bench`: the bundle's vision encoder and resampler timed in onnxruntime.

`ocellus bench` runs this in the same run as the runtime's own pipeline, to report how tract (the runtime's engine)
compares with onnxruntime on the same files and inputs (docs/bench.md). Each model is timed in every form
onnxruntime can run it in, and the fastest counts:

* ``fp32``: the bundle's fp32 file;
* ``int8``: the bundle's int8 file (QOperator, the format tract runs correctly);
* ``int8-ort``: the bundle's int8 file for onnxruntime (QDQ or dynamic, whichever `ocellus-tools quantize` measured
  faster in onnxruntime), when the bundle has one (listed in the manifest, or in quantize.json): the file the
  runtime's onnxruntime engine runs;
* ``int8-dynamic``: onnxruntime's own ``quantize_dynamic`` of the fp32 file, made on the fly (cheap: no
  calibration);
* ``int8-qdq``: onnxruntime's ``quantize_static`` (QDQ, per-channel weights) of the fp32 file, calibrated on a few
  generated demo scenes (the resampler on the fp32 encoder's tokens for them).

Every run gets the same input: a generated scene prepared as the bundle's ``[preprocess]`` says (the input is
already the model's size, so preparation is rescale and normalise only), and for the resampler the fp32 encoder's
``patch_tokens`` for it. Timing: ``warmup`` runs, then ``runs`` runs each timed on its own with
``time.perf_counter_ns``; the median is the figure (the same protocol as the runtime's side). No torch import:
the command starts in well under a second.

The on-the-fly quantizations read the fp32 file through a symlink in a private temporary directory: onnxruntime's
quantizer writes ``<input>-inferred.onnx`` beside its input, and beside the bundle's own file it would collide with
`ocellus-tools quantize` (or another ort-bench) working on the same bundle.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from .errors import ToolError

#: Manifest role -> name in the report (the runtime's stage names).
MODELS = {"vision": "encoder", "resampler": "resampler"}
#: Inputs the runtime feeds each role.
INPUTS = {"vision": "pixel_values", "resampler": "patch_tokens"}


def _manifest(bundle: Path) -> dict:
    path = bundle / "manifest.toml"
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ToolError(f"{path} does not exist: give a bundle directory holding a manifest.toml "
                        "(ocellus-tools manifest writes it)") from None
    except tomllib.TOMLDecodeError as e:
        raise ToolError(f"{path} is not valid TOML: {e}") from None


def _file(manifest: dict, bundle: Path, role: str, variant: str) -> Path | None:
    """The bundle's `role` file of `variant`: "fp32", "int8" (the QOperator file, `<role>.int8.onnx`) or "int8-ort"
    (onnxruntime's int8 form). A manifest of format 2 can list two int8 files per role, told apart by `engines`."""
    entries = [e for e in manifest.get("files", []) if e.get("role") == role]
    if variant == "fp32":
        found = [e for e in entries if e.get("variant") == "fp32"]
    elif variant == "int8":
        found = [e for e in entries if e.get("variant") == "int8" and e.get("quant", "qoperator") == "qoperator"
                 and not str(e.get("path", "")).endswith(".int8-ort.onnx")]
    else:
        found = [e for e in entries if e.get("variant") == "int8"
                 and (e.get("quant") in ("qdq", "dynamic") or str(e.get("path", "")).endswith(".int8-ort.onnx"))]
        if not found:  # a format-1 manifest does not list it: quantize.json does
            found = [e for e in _quantize_json(bundle).get("files", []) if e.get("role") == role
                     and e.get("quant") in ("qdq", "dynamic") and (bundle / str(e.get("path"))).is_file()]
    return bundle / found[0]["path"] if found else None


def _quantize_json(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "quantize.json").read_text())
    except (OSError, ValueError):
        return {}


def _quant(bundle: Path, path: Path) -> str | None:
    for e in _quantize_json(bundle).get("files", []):
        if e.get("path") == path.name:
            return e.get("quant")
    return None


def _session(ort, path: Path, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _pixel_values(manifest: dict, count: int, seed: int) -> list[np.ndarray]:
    """`count` generated scenes at the model's input size, prepared per the manifest (float32 [1, 3, H, W])."""
    from .images import scene_frame

    pre = manifest["preprocess"]
    h, w = int(pre["height"]), int(pre["width"])
    rng = np.random.default_rng(seed)
    mean = np.asarray(pre["mean"], dtype=np.float32)
    std = np.asarray(pre["std"], dtype=np.float32)
    out = []
    for _ in range(count):
        frame = scene_frame(rng, w, h)
        if frame.shape[:2] != (h, w):
            raise ToolError(f"generated scene is {frame.shape[1]}x{frame.shape[0]}, not the model's {w}x{h}")
        x = (frame.astype(np.float32) * np.float32(pre["rescale"]) - mean) / std
        if pre.get("channel_order", "rgb") == "bgr":
            x = x[..., ::-1]
        out.append(np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32))
    return out


def _time(session, feed: dict, warmup: int, runs: int) -> dict:
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        t = time.perf_counter_ns()
        session.run(None, feed)
        samples.append(time.perf_counter_ns() - t)
    samples.sort()
    return {
        "median_ms": statistics.median(samples) / 1e6,
        "p90_ms": samples[min(len(samples) - 1, int(0.9 * len(samples)))] / 1e6,
        "mean_ms": statistics.fmean(samples) / 1e6,
        "min_ms": samples[0] / 1e6,
        "runs": runs,
    }


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self):  # pragma: no cover - only some onnxruntime versions call it
        pass


def _quantized(kind: str, src: Path, dst: Path, calibration: list[dict]) -> None:
    """`dst` (in a private directory) = onnxruntime's `kind` int8 form of `src`, read through a symlink beside
    `dst`, so nothing is written next to `src`."""
    import os

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    link = dst.parent / f"{dst.stem}.input" / src.name
    link.parent.mkdir()
    os.symlink(src.resolve(), link)
    src = link

    # The quantizers log advice ("consider pre-processing") and per-channel notes on 1-D LayerNorm weights to the
    # root logger; none of it concerns a timing run.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        if kind == "int8-dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        else:
            quantize_static(str(src), str(dst), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)


def ort_bench(bundle: Path, threads: int = 1, runs: int = 50, warmup: int = 5, on_the_fly: bool = True,
              calibration: int = 8, seed: int = 11) -> dict:
    """Times the bundle's encoder and resampler in onnxruntime; returns the report `ocellus bench` reads.

    The report: ``{"engine", "onnxruntime_version", "threads", "runs", "warmup", "input", "models": {"encoder":
    {"file": ..., "variants": {name: {"file", "quant", "median_ms", ...} | {"file", "error"}}, "best": name,
    "best_ms": ms}, "resampler": {...}}, "total_best_ms": encoder + resampler}``. Variant names: "fp32",
    "int8" (the bundle's QOperator file), "int8-ort" (the bundle's onnxruntime int8 file, when it has one),
    "int8-dynamic" and "int8-qdq" (made on the fly); "quant" is the int8 form (absent for fp32).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ToolError(f"onnxruntime is not importable in this Python ({e}): pip install onnxruntime") from None
    if threads <= 0:
        raise ToolError(f"--threads must be positive, got {threads}")
    if runs <= 0 or warmup < 0:
        raise ToolError(f"--runs must be positive and --warmup >= 0, got {runs} and {warmup}")
    manifest = _manifest(bundle)
    pixels = _pixel_values(manifest, max(1, calibration), seed)

    fp32_vision = _file(manifest, bundle, "vision", "fp32")
    if fp32_vision is None or not fp32_vision.is_file():
        raise ToolError(f"{bundle}: the manifest lists no readable fp32 vision file; the resampler's input comes "
                        "from it")
    vision = _session(ort, fp32_vision, threads)
    out_names = [o.name for o in vision.get_outputs()]
    if "patch_tokens" not in out_names:
        raise ToolError(f"{fp32_vision} has no output patch_tokens (it has {out_names}): re-export the bundle")
    tokens = [vision.run(["patch_tokens"], {"pixel_values": p})[0] for p in pixels]
    del vision
    feeds = {"vision": [{"pixel_values": p} for p in pixels], "resampler": [{"patch_tokens": t} for t in tokens]}

    models = {}
    with tempfile.TemporaryDirectory(prefix="ocellus-ortbench-") as tmp:
        for role, name in MODELS.items():
            variants: dict[str, dict] = {}
            for variant in ("fp32", "int8", "int8-ort"):
                path = _file(manifest, bundle, role, variant)
                if path is None:
                    continue
                quant = {"fp32": None, "int8": "qoperator"}.get(variant) or _quant(bundle, path)
                info = {"file": path.name, **({"quant": quant} if quant else {})}
                try:
                    variants[variant] = {**info, **_time(_session(ort, path, threads), feeds[role][0], warmup, runs)}
                except Exception as e:  # a file onnxruntime cannot run is reported, not fatal
                    variants[variant] = {**info, "error": f"{type(e).__name__}: {e}"}
            src = _file(manifest, bundle, role, "fp32")
            if on_the_fly and src is not None:
                for kind in ("int8-dynamic", "int8-qdq"):
                    dst = Path(tmp) / f"{role}.{kind}.onnx"
                    try:
                        t0 = time.perf_counter()
                        _quantized(kind, src, dst, feeds[role])
                        made_s = time.perf_counter() - t0
                        variants[kind] = {"file": f"{src.name} -> {kind} (made on the fly in {made_s:.2f} s)",
                                          "quant": kind.removeprefix("int8-"),
                                          **_time(_session(ort, dst, threads), feeds[role][0], warmup, runs)}
                    except Exception as e:
                        variants[kind] = {"file": f"{src.name} -> {kind}", "error": f"{type(e).__name__}: {e}"}
            timed = {k: v for k, v in variants.items() if "median_ms" in v}
            if not timed:
                errors = "; ".join(f"{k}: {v.get('error')}" for k, v in variants.items())
                raise ToolError(f"onnxruntime ran no {role} file of {bundle} ({errors or 'none listed'})")
            best = min(timed, key=lambda k: timed[k]["median_ms"])
            models[name] = {"variants": variants, "best": best, "best_ms": timed[best]["median_ms"]}
    return {
        "engine": "onnxruntime",
        "onnxruntime_version": ort.__version__,
        "bundle": str(bundle),
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "input": f"generated demo scene, seed {seed}, prepared per [preprocess]",
        "models": models,
        "total_best_ms": sum(m["best_ms"] for m in models.values()),
    }


def add_arguments(p) -> None:
    p.add_argument("bundle", type=Path, metavar="BUNDLE_DIR")
    p.add_argument("--runs", type=int, default=50, help="timed runs per file (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--no-on-the-fly", action="store_true",
                   help="time only the bundle's files (skip onnxruntime's own int8 quantizations)")
    p.add_argument("--json", type=Path, metavar="FILE", default=None,
                   help="write the report here (default: print it to stdout)")


def main(args) -> int:
    threads = args.threads if args.threads > 0 else 1
    report = ort_bench(args.bundle, threads=threads, runs=args.runs, warmup=args.warmup,
                       on_the_fly=not args.no_on_the_fly)
    text = json.dumps(report, indent=2)
    if args.json is None:
        print(text)
    else:
        args.json.write_text(text + "\n")
        m = report["models"]
        print(f"onnxruntime {report['onnxruntime_version']}, {threads} thread(s): encoder {m['encoder']['best_ms']:.3f} ms "
              f"({m['encoder']['best']}), resampler {m['resampler']['best_ms']:.3f} ms ({m['resampler']['best']}); "
              f"wrote {args.json}")
    return 0
