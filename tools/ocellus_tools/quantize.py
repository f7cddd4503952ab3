"""`ocellus-tools quantize`: the int8 files of a bundle, each for the engine that runs it fast, written only where
it is faster than fp32 in that engine on this CPU and within the target cosine of fp32.

* ``<role>.int8.onnx`` (``quant = "qoperator"``, engines ``["tract"]``): the one format tract 0.23 runs fast and
  correctly (../shared/notes/tract-quantization.md): static QOperator quantization of only the MatMul/Conv nodes
  whose weight is a constant initializer, signed int8 activations (symmetric, zero point 0) and per-tensor int8
  weights. The file holds only QLinearMatMul, QLinearConv, QuantizeLinear and DequantizeLinear besides float ops;
  Softmax and everything else stay float, so tract never sees a quantized Softmax (which it turns into a wrong
  lookup table). Its cosine is measured in tract.
* ``<role>.int8-ort.onnx`` (``"qdq"`` or ``"dynamic"``, engines ``["onnxruntime"]``): whichever of onnxruntime's
  two fast forms runs faster in onnxruntime (onnxruntime runs the QOperator file 3x slower than fp32): static QDQ
  (same nodes, per-channel int8 weights, uint8 activations) or dynamic (MatMulInteger/ConvInteger, activation
  ranges measured at run time, no calibration). Its cosine is measured in onnxruntime.

The search (per file, when quantizing every candidate node misses the target cosine): one pass over a few
calibration samples computes, for every candidate node, what its int8 version would change in the model's
outputs when it alone is quantized (its output error emulated from its fp32 input, the calibrated ranges and its
int8 weights, then added to its output in a single fp32 session with one extra input per node); the nodes are
ranked by that, and a bisection over "quantize the k least harmful nodes" builds real files and runs them end to
end in their engine until the largest k that meets the target is found (the first guess is the k whose summed
per-node losses fit the budget 1 - target). See tools/README.md for the measured effect.

Every temporary file (onnxruntime's ``*-inferred.onnx`` and augmented models, candidate files) lives in a private
``tempfile.mkdtemp`` directory: onnxruntime's quantizer writes ``<input>-inferred.onnx`` next to its input, so the
fp32 files are handed to it as symlinks inside that directory. The bundle only ever sees complete files renamed
into place.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from . import __version__
from .errors import ToolError
from .files import bundle_roles, commit_files, onnx_name, read_source, require_files, staging_dir

QUANTIZABLE = ("MatMul", "Conv")
QUANT_OPS = {"QLinearMatMul", "QLinearConv", "QuantizeLinear", "DequantizeLinear"}
FORBIDDEN = {"QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSoftmax", "QLinearSigmoid", "QLinearLeakyRelu",
             "QLinearAveragePool", "QLinearGlobalAveragePool", "QGemm", "QAttention", "MatMulInteger",
             "ConvInteger", "DynamicQuantizeLinear"}
QUANTIZE_FILE = "quantize.json"
ROLES = ("vision", "resampler", "text")
DEFAULT_TARGET = 0.9995
#: int8 counts as faster when its median is at least this much below fp32's: alternating warm medians on a shared
#: 2-core VM still differ by a few per cent between repeats, so a smaller gain is not a measured one
MIN_SPEEDUP = 1.05


@dataclass(frozen=True)
class Format:
    """One int8 form: how it is made, which engine runs it, which file it goes to."""

    quant: str  # "qoperator" | "qdq" | "dynamic"
    engine: str  # "tract" | "onnxruntime"
    suffix: str  # file name: <role>.<suffix>.onnx

    def file(self, role: str) -> str:
        return f"{role}.{self.suffix}.onnx"


QOPERATOR = Format("qoperator", "tract", "int8")
QDQ = Format("qdq", "onnxruntime", "int8-ort")
DYNAMIC = Format("dynamic", "onnxruntime", "int8-ort")
ORT_FORMATS = (QDQ, DYNAMIC)


def int8_file_names(role: str) -> list[str]:
    """Every int8 file quantize may write for `role` (export removes them, quantize replaces or removes them)."""
    return [QOPERATOR.file(role), QDQ.file(role)]


def nodes_with_constant_weights(model: onnx.ModelProto) -> list[str]:
    """Names of the MatMul/Conv nodes whose second input (the weight) is a graph initializer."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZABLE and len(n.input) > 1 and n.input[1] in inits]


# ---------------------------------------------------------------------------------------------------------------
# The CPU and the engines


def cpu_info() -> dict:
    """{"model", "features" (the ones that decide int8 speed), "isa" (one phrase)} of this machine."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware") and model in ("", platform.machine(), platform.processor()):
                    model = val.strip()
                elif key in ("flags", "features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "asimd",
              "asimddp", "asimdhp", "i8mm", "sve")
    features = [f for f in wanted if f in flags]
    return {"model": model, "features": features, "isa": isa_phrase(features, platform.machine())}


def isa_phrase(features, machine: str = "x86_64") -> str:
    """What decides tract's int8 speed, in words: "AVX-512 with VNNI", "AVX2 without VNNI", "arm64 with dotprod"."""
    f = set(features)
    if machine in ("aarch64", "arm64") or "asimd" in f:
        return "arm64 " + ("with dotprod" if "asimddp" in f else "without dotprod")
    amx = " and AMX" if "amx_int8" in f else ""
    if "avx512_vnni" in f:
        return f"AVX-512 with VNNI{amx}"
    if "avx_vnni" in f:
        return f"AVX2 with AVX-VNNI{amx}"
    if "avx512f" in f:
        return "AVX-512 without VNNI"
    if "avx2" in f:
        return "AVX2 without VNNI"
    return "no AVX2"


def _ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _session(path: Path):
    """An onnxruntime session on one thread (validate uses it too)."""
    return _ort_session(path)


class Runner:
    """One loaded file in one engine: run(feed dict) -> list of outputs (numpy), in the file's output order."""

    def __init__(self, engine: str, path: Path, input_names: list[str]):
        self.engine = engine
        self.input_names = input_names
        if engine == "onnxruntime":
            sess = _ort_session(path)
            self.run = lambda feed: sess.run(None, feed)
        elif engine == "tract":
            try:
                import tract
            except ImportError as e:
                raise ToolError(f"the tract Python bindings are not importable ({e}): pip install tract==0.23.9 "
                                "(quantize measures the int8 file for tract in tract)") from None
            try:
                runnable = tract.onnx().load(str(path)).into_model().into_runnable()
            except Exception as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ToolError(f"tract cannot load {path.name} ({first}): quantize made a file outside the format "
                                "tract runs; report this with the bundle") from None
            self.run = lambda feed: [t.to_numpy() for t in runnable.run([feed[n] for n in input_names])]
        else:
            raise ValueError(engine)


def _input_names(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _output_names(path: Path) -> list[str]:
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0 or not np.all(np.isfinite(a)):
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def min_cosines(runner: Runner, feeds: list[dict], reference: list[list[np.ndarray]], names: list[str]) -> dict:
    """Per output, the smallest cosine to the reference over `feeds`."""
    worst = {n: 1.0 for n in names}
    for feed, ref in zip(feeds, reference):
        for n, got, want in zip(names, runner.run(feed), ref):
            worst[n] = min(worst[n], cosine(got, want))
    return worst


def _clock_ns() -> int:
    return time.perf_counter_ns()


def compare_speed(engine: str, fp32: Path, int8: Path, feed: dict, input_names: list[str], *,
                  min_runs: int = 5, max_runs: int = 30, budget_s: float = 3.0) -> dict:
    """Median run time of the fp32 and the int8 file in `engine` on one thread, warm, on the same input: two
    warm-up runs each, then timed runs alternating fp32 and int8 (so a change in the machine's load hits both)
    until both have `min_runs` and `budget_s` passed, or `max_runs`."""
    a, b = Runner(engine, fp32, input_names), Runner(engine, int8, input_names)
    for _ in range(2):
        a.run(feed)
        b.run(feed)
    ta, tb = [], []
    start = _clock_ns()
    while len(ta) < max_runs and (len(ta) < min_runs or (_clock_ns() - start) / 1e9 < budget_s):
        for r, acc in ((a, ta), (b, tb)):
            t = _clock_ns()
            r.run(feed)
            acc.append(_clock_ns() - t)
    return {"engine": engine, "fp32": statistics.median(ta) / 1e6, "int8": statistics.median(tb) / 1e6,
            "threads": 1, "runs": len(ta)}


# ---------------------------------------------------------------------------------------------------------------
# Building int8 files with onnxruntime's quantizer, in a private directory


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizer logs advice ("consider pre-processing") to the root logger: not ours to show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class Workspace:
    """A private temporary directory (tempfile.mkdtemp: unique per run, mode 0700) for everything onnxruntime's
    quantizer writes. `link(src)` hands it a file through a symlink inside the directory, so its
    `<input>-inferred.onnx` lands here and not beside the bundle's files, where another run could collide."""

    def __init__(self, prefix: str = "ocellus-quantize-"):
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self._n = 0

    def link(self, src: Path) -> Path:
        d = self.dir / f"in{self._n}"
        self._n += 1
        d.mkdir()
        dst = d / Path(src).name
        try:
            os.symlink(Path(src).resolve(), dst)
        except OSError:
            shutil.copyfile(src, dst)
        return dst

    def path(self, name: str) -> Path:
        return self.dir / name

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of feeds, advancing a progress bar."""

    def __init__(self, feeds: list[dict], bar=None):
        self.feeds = feeds
        self.i = 0
        self.bar = bar

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        feed = self.feeds[self.i]
        self.i += 1
        if self.bar is not None:
            self.bar.update(1)
        return feed

    def rewind(self):
        self.i = 0


def build(fmt: Format, link: Path, dst: Path, nodes: list[str], cache: Path, reader=None) -> None:
    """Writes `dst`: `link` (an fp32 file in the workspace) with `nodes` quantized in `fmt`. Static formats read
    activation ranges from the calibration `cache` (written on the first call, which needs `reader`)."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)

    if not nodes:
        raise ValueError("no node to quantize")  # onnxruntime reads an empty list as "every node"
    with _quiet_quantizer():
        if fmt.quant == "dynamic":
            quantize_dynamic(str(link), str(dst), weight_type=QuantType.QInt8, per_channel=False,
                             reduce_range=False, nodes_to_quantize=nodes, op_types_to_quantize=list(QUANTIZABLE))
            return
        static = dict(calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                      nodes_to_quantize=nodes, reduce_range=False, weight_type=QuantType.QInt8)
        if fmt.quant == "qoperator":
            quantize_static(str(link), str(dst), reader, quant_format=QuantFormat.QOperator,
                            activation_type=QuantType.QInt8, per_channel=False,
                            extra_options={"ActivationSymmetric": True}, **static)
        else:
            quantize_static(str(link), str(dst), reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, per_channel=True, **static)


def check_quantized(path: Path, fmt: Format = QOPERATOR, expected: int = 1) -> int:
    """Checks that `path` is in the form `fmt` promises; returns the number of quantized nodes."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    if fmt.quant == "qoperator":
        bad = sorted({n.op_type for n in model.graph.node if n.op_type in FORBIDDEN or n.domain not in ("", "ai.onnx")})
        if bad:
            raise ToolError(f"{path.name}: quantization produced operators tract cannot run correctly or fast: "
                            f"{', '.join(bad)}: report this with the bundle")
        q = sum(1 for o in ops if o in ("QLinearMatMul", "QLinearConv"))
    elif fmt.quant == "dynamic":
        q = sum(1 for o in ops if o in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"))
    else:
        # QDQ: one DequantizeLinear per quantized weight (activations get theirs too)
        inits = {i.name for i in model.graph.initializer}
        q = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    if q == 0 and expected:
        raise ToolError(f"{path.name}: no node was quantized (expected {expected}): onnxruntime skipped them all; "
                        "report this with the bundle")
    return q


# ---------------------------------------------------------------------------------------------------------------
# Sensitivity: every node's effect on the outputs when it alone is int8, from one fp32 session


def _fake_quant(x: np.ndarray, rmin: float, rmax: float, qtype, symmetric: bool) -> np.ndarray:
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=symmetric)
    zp, scale = compute_scale_zp(np.array(rmin, dtype=np.float32), np.array(rmax, dtype=np.float32), qmin, qmax,
                                 symmetric=symmetric)
    scale, zp = float(scale), float(zp)
    q = np.clip(np.rint(x / scale) + zp, float(qmin), float(qmax))
    return ((q - zp) * scale).astype(np.float32)


def _fake_quant_weight(w: np.ndarray, per_channel_axis: int | None) -> np.ndarray:
    """Symmetric int8 weights (what onnxruntime stores: [-127, 127], scale max|w| / 127), per tensor or per
    channel along `per_channel_axis`."""
    if per_channel_axis is None:
        m = np.max(np.abs(w)) if w.size else np.float32(0)
    else:
        axes = tuple(a for a in range(w.ndim) if a != per_channel_axis % w.ndim)
        m = np.max(np.abs(w), axis=axes, keepdims=True)
    scale = np.where(m > 0, m / 127.0, 1.0).astype(np.float32)
    return (np.clip(np.rint(w / scale), -127, 127) * scale).astype(np.float32)


def _apply(node: onnx.NodeProto, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    if node.op_type == "MatMul":
        return np.matmul(x, w)
    import torch
    import torch.nn.functional as F

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    nd = w.ndim - 2
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    if pads[:nd] != pads[nd:] or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError("asymmetric or automatic padding")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    with torch.no_grad():
        y = conv(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(w)),
                 None if bias is None else torch.from_numpy(bias), stride=list(attrs.get("strides", [1] * nd)),
                 padding=pads[:nd], dilation=list(attrs.get("dilations", [1] * nd)), groups=int(attrs.get("group", 1)))
    return y.numpy()


def int8_weight(fmt: Format, node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """The node's weight as `fmt` stores it in int8, back in float: per channel (output channels) for QDQ, per
    tensor otherwise."""
    if fmt.quant == "qdq":
        return _fake_quant_weight(w, 0 if node.op_type == "Conv" else w.ndim - 1)
    return _fake_quant_weight(w, None)


def emulate(fmt: Format, node: onnx.NodeProto, x: np.ndarray, weights: dict, ranges: dict,
            wq: np.ndarray | None = None) -> np.ndarray:
    """The node's output when it runs in int8 form `fmt`, computed in float from its fp32 input `x` (`wq`: its
    int8_weight, when already computed)."""
    from onnx import TensorProto

    if wq is None:
        wq = int8_weight(fmt, node, weights[node.input[1]])
    bias = weights.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if fmt.quant == "qoperator":
        xq = _fake_quant(x, *ranges[node.input[0]], TensorProto.INT8, True)
        return _fake_quant(_apply(node, xq, wq, bias), *ranges[node.output[0]], TensorProto.INT8, True)
    if fmt.quant == "qdq":
        xq = _fake_quant(x, *ranges[node.input[0]], TensorProto.UINT8, False)
        # a Q/DQ pair follows the node's output too (onnxruntime fuses DQ -> MatMul -> Q into QLinearMatMul)
        return _fake_quant(_apply(node, xq, wq, bias), *ranges[node.output[0]], TensorProto.UINT8, False)
    xq = _fake_quant(x, float(x.min()), float(x.max()), TensorProto.UINT8, False)  # dynamic: this input's range
    return _apply(node, xq, wq, bias)


class Probe:
    """What quantizing each candidate node alone does to the model's outputs, from two fp32 sessions: one with the
    candidates' inputs and outputs exposed (run once per sample: every node's fp32 input), and one with an Add of
    an extra input after every candidate (a broadcasting zero, except the probed node's emulated int8 error): one
    run per node and sample. Nothing is exposed in the second, so onnxruntime optimises it as it would the file."""

    PREFIX = "ocellus_probe_noise_"
    PRE = "__ocellus_pre"

    def __init__(self, inferred: onnx.ModelProto, nodes: list[str], ws: Workspace):
        by_name = {n.name: n for n in inferred.graph.node}
        self.nodes = [copy.deepcopy(by_name[n]) for n in nodes]
        self.outputs = [o.name for o in inferred.graph.output]
        graph_inputs = {i.name for i in inferred.graph.input}

        collect = copy.deepcopy(inferred)
        exposed = []
        for n in self.nodes:
            for t in (n.input[0], n.output[0]):
                if t not in graph_inputs and t not in exposed and t not in self.outputs:
                    collect.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
                    exposed.append(t)
        path = ws.path("probe-collect.onnx")
        onnx.save(collect, str(path))
        del collect
        self.collect = _ort_session(path)
        self.collect_names = [o.name for o in self.collect.get_outputs()]

        inject = copy.deepcopy(inferred)
        g = inject.graph
        self.noise = {}
        wanted = set(nodes)
        new_nodes = []
        for n in g.node:
            new_nodes.append(n)
            if n.name not in wanted:
                continue
            out = n.output[0]
            n.output[0] = out + self.PRE
            noise = self.PREFIX + str(len(self.noise))
            self.noise[n.name] = noise
            new_nodes.append(onnx.helper.make_node("Add", [out + self.PRE, noise], [out],
                                                   name=f"{n.name}__ocellus_probe"))
            # no declared shape: a broadcasting [1] zero, or the node's full error
            g.input.append(onnx.helper.make_tensor_value_info(noise, onnx.TensorProto.FLOAT, None))
        del g.node[:]
        g.node.extend(new_nodes)
        path = ws.path("probe-inject.onnx")
        onnx.save(inject, str(path))
        del inject
        self.inject = _ort_session(path)
        self.zeros = {noise: np.zeros((1,), np.float32) for noise in self.noise.values()}
        self._baselines: dict[int, tuple[list[np.ndarray], dict]] = {}

    def baseline(self, k: int, feed: dict) -> tuple[list[np.ndarray], dict]:
        """(the outputs, every exposed tensor) of sample `k`, computed once and shared by every format."""
        if k not in self._baselines:
            values = dict(zip(self.collect_names, self.collect.run(None, feed)))
            values.update(feed)
            self._baselines[k] = ([values[o] for o in self.outputs], values)
        return self._baselines[k]

    def losses(self, fmt: Format, feeds: list[dict], weights: dict, ranges: dict, bar=None) -> dict:
        """Per candidate node, 1 - cosine of the outputs with that node alone in int8 (mean over `feeds`,
        worst output)."""
        acc = {n.name: np.zeros(len(self.outputs)) for n in self.nodes}
        wq = {n.name: int8_weight(fmt, n, weights[n.input[1]]) for n in self.nodes}
        for k, feed in enumerate(feeds):
            ref, values = self.baseline(k, feed)
            for node in self.nodes:
                try:
                    err = (emulate(fmt, node, values[node.input[0]], weights, ranges, wq[node.name])
                           - values[node.output[0]])
                except (KeyError, ValueError):
                    acc[node.name] += 1.0  # cannot emulate: rank it as the most harmful (it is kept float first)
                else:
                    got = self.inject.run(self.outputs, {**feed, **self.zeros,
                                                         self.noise[node.name]: err.astype(np.float32)})
                    acc[node.name] += [1.0 - cosine(g, r) for g, r in zip(got, ref)]
                if bar is not None:
                    bar.update(1)
        return {n: float(np.max(v / len(feeds))) for n, v in acc.items()}


# ---------------------------------------------------------------------------------------------------------------
# One role: calibrate, search each format, time, decide


@dataclass
class Outcome:
    """What quantize decided for one (role, format)."""

    role: str
    fmt: Format
    path: Path | None = None  # the built file in the workspace, None when nothing meets the target
    quantized: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # every candidate node, in graph order
    cosine: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    speed: dict | None = None
    written: bool = False
    forced: bool = False
    reason: str = ""
    all_int8: dict = field(default_factory=dict)  # {"cosine", "speed_ms", "path"} of the file with every node int8
    alternatives: dict = field(default_factory=dict)  # onnxruntime: what each form gave

    @property
    def kept_float(self) -> list[str]:
        q = set(self.quantized)
        return [n for n in self.nodes if n not in q]


class RoleJob:
    """Quantizes one fp32 file in every format, with the shared calibration, references and probe session."""

    def __init__(self, role: str, src: Path, calib: list[dict], check: list[dict], ws: Workspace, target: float,
                 probe_samples: int = 2):
        self.role, self.src, self.calib, self.check, self.ws, self.target = role, src, calib, check, ws, target
        self.probe_feeds = calib[:: max(1, len(calib) // probe_samples)][:probe_samples]
        self.link = ws.link(src)
        self.inputs = _input_names(src)
        self.outputs = _output_names(src)
        model = onnx.load(str(src))
        self.nodes = nodes_with_constant_weights(model)
        self.node_protos = {n.name: n for n in model.graph.node if n.name in set(self.nodes)}
        self.weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer
                        if any(i.name in n.input[1:] for n in self.node_protos.values())}
        del model
        ref = _ort_session(src)
        t0 = time.perf_counter()
        self.reference = [ref.run(None, f) for f in check]
        self.fp32_ms = 1e3 * (time.perf_counter() - t0) / max(1, len(check))
        self.cache = ws.path(f"{role}.calibration.json")
        self._probe = None
        self._ranges = None
        self.builds = 0

    def _ranges_dict(self) -> dict:
        if self._ranges is None:
            from onnxruntime.quantization.calibrate import load_tensors_data

            data = load_tensors_data(self.cache)
            self._ranges = {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1])))
                            for k, v in data.data.items()}
        return self._ranges

    def _evaluate(self, fmt: Format, path: Path) -> dict:
        return min_cosines(Runner(fmt.engine, path, self.inputs), self.check, self.reference, self.outputs)

    def _build_eval(self, fmt: Format, nodes: list[str], tag: str, reader=None) -> tuple[Path, dict]:
        dst = self.ws.path(f"{self.role}.{fmt.quant}.{tag}.onnx")
        build(fmt, self.link, dst, nodes, self.cache, reader)
        self.builds += 1
        check_quantized(dst, fmt, len(nodes))
        return dst, self._evaluate(fmt, dst)

    def meets(self, cos: dict) -> bool:
        return all(c >= self.target for c in cos.values())

    def calibrate(self, desc: str) -> tuple[Path, dict]:
        """Builds the all-int8 QOperator file, which calibrates (min/max over every calibration sample) and writes
        the ranges every static build then reads."""
        with tqdm(total=len(self.calib), desc=desc, unit="sample", leave=False) as bar:
            return self._build_eval(QOPERATOR, self.nodes, "all", _Reader(self.calib, bar))

    def timed(self, fmt: Format, path: Path) -> dict:
        sp = compare_speed(fmt.engine, self.src, path, self.check[0], self.inputs)
        sp["speedup"] = round(sp["fp32"] / sp["int8"], 3)
        return sp

    def all_int8(self, fmt: Format, first: tuple[Path, dict] | None = None) -> Outcome:
        """Every candidate node in int8: built (unless `first` is that file), measured and timed. The Outcome
        holds the file if it meets the target, else only the figures."""
        t0 = time.perf_counter()
        out = Outcome(self.role, fmt, nodes=list(self.nodes))
        path, cos = first if first is not None else self._build_eval(fmt, self.nodes, "all")
        out.all_int8 = {"cosine": cos, "speed_ms": self.timed(fmt, path), "path": path}
        out.search = {"method": "all candidates", "files_built": 1}
        if self.meets(cos):
            out.path, out.quantized, out.cosine, out.speed = path, list(self.nodes), cos, out.all_int8["speed_ms"]
        out.search["seconds"] = round(time.perf_counter() - t0, 1)
        return out

    def search(self, out: Outcome) -> Outcome:
        """For a form whose all-int8 file misses the target: rank the nodes by what each alone costs (one probe
        pass), then find the largest k such that the k least harmful nodes in int8 meet the target, building and
        measuring real files: first the k whose summed losses fit the budget 1 - target, then galloping away from
        it (1, 2, 4, ... nodes) until the answer is bracketed, then bisecting. The result is timed."""
        fmt = out.fmt
        t0 = time.perf_counter()
        builds0 = self.builds
        n = len(self.nodes)
        with tqdm(total=len(self.probe_feeds) * n, desc=f"{self.role} {fmt.quant}: sensitivity of {n} nodes",
                  unit="probe", leave=False) as bar:
            if self._probe is None:
                from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

                self._probe = Probe(load_model_with_shape_infer(self.link), self.nodes, self.ws)
            loss = self._probe.losses(fmt, self.probe_feeds, self.weights,
                                      self._ranges_dict() if fmt.quant != "dynamic" else {}, bar)
        order = sorted(self.nodes, key=lambda k: (loss[k], self.nodes.index(k)))
        budget, total, guess = 1.0 - self.target, 0.0, 0
        for name in order:
            if total + loss[name] > budget:
                break
            total += loss[name]
            guess += 1
        lo, hi, best = 0, n, None  # lo: largest k known to meet the target (0 = fp32); hi: smallest k known not to
        tried = []
        with tqdm(total=2 * math.ceil(math.log2(max(2, n))), desc=f"{self.role} {fmt.quant}: search ({fmt.engine})",
                  unit="file", leave=False) as bar:

            def test(k: int) -> bool:
                nonlocal lo, hi, best
                path, cos = self._build_eval(fmt, order[:k], f"k{k}")
                ok = self.meets(cos)
                tried.append({"quantized": k, "cosine": round(min(cos.values()), 7), "meets": ok})
                bar.update(1)
                bar.set_postfix_str(f"{k}/{n} int8, cosine {min(cos.values()):.5f}")
                if ok:
                    lo, best = k, (path, cos)
                else:
                    hi = k
                return ok

            k = min(max(guess, 1), n - 1)
            step = 1
            if test(k):
                while lo + step < hi and test(lo + step):
                    step *= 2
            else:
                while hi - step > lo and not test(hi - step):
                    step *= 2
            while hi - lo > 1:
                test((lo + hi) // 2)
            bar.update(max(0, bar.total - bar.n))
        out.search = {"method": "sensitivity + search", "files_built": 1 + self.builds - builds0,
                      "predicted_quantized": guess, "tried": tried, "probe_samples": len(self.probe_feeds)}
        if best is None:
            out.reason = (f"no int8 file reaches cosine {self.target}: even the least harmful node alone in int8 "
                          f"gives {tried[-1]['cosine']:.5f}")
        else:
            out.path, out.quantized, out.cosine = best[0], order[:lo], best[1]
            out.speed = self.timed(fmt, best[0])
        out.search["seconds"] = round(time.perf_counter() - t0, 1)
        return out


def _slower(o: Outcome, speed: dict, isa: str, note: str = "") -> str:
    sp = speed["speedup"]
    return (f"{o.fmt.engine} int8 ({o.fmt.quant}) {sp:.2f}x the speed of fp32 on this CPU ({isa}): "
            f"{speed['int8']:.3g} ms vs {speed['fp32']:.3g} ms"
            + ("" if sp <= 1.0 else f", below the {MIN_SPEEDUP}x that counts as faster") + note)


def _gate(o: Outcome, keep_slower: bool, isa: str) -> Outcome:
    """Written when it exists and is faster than fp32 in its engine; if slower, only with --keep-slower (forced)."""
    if o.path is None:
        return o
    if o.speed["speedup"] >= MIN_SPEEDUP:
        o.written = True
    else:
        o.reason = _slower(o, o.speed, isa)
        o.written = o.forced = keep_slower
    return o


def _hopeless(o: Outcome, keep_slower: bool, isa: str) -> bool:
    """An all-int8 file that misses the target and is already not faster than fp32: keeping nodes in float only
    makes it slower, so the search is skipped (unless --keep-slower asks for the file anyway)."""
    sp = o.all_int8["speed_ms"]
    if keep_slower or sp["speedup"] >= MIN_SPEEDUP:
        return False
    o.speed = sp
    o.reason = _slower(o, sp, isa, " with every candidate node in int8; fewer would be slower still, so no search")
    return True


def quantize_role(role: str, src: Path, calib: list[dict], check: list[dict], ws: Workspace, target: float,
                  keep_slower: bool, isa: str) -> list[Outcome]:
    """Every int8 form of one file: the QOperator file for tract, and the faster of QDQ and dynamic for
    onnxruntime. Returns one Outcome per output file (written or not)."""
    job = RoleJob(role, src, calib, check, ws, target)
    if not job.nodes:
        return [Outcome(role, f, reason=f"{src.name} has no MatMul or Conv node with a constant weight")
                for f in (QOPERATOR, QDQ)]
    first = job.calibrate(f"{role}: calibrating")
    tract_out = job.all_int8(QOPERATOR, first)
    if tract_out.path is None and not _hopeless(tract_out, keep_slower, isa):
        job.search(tract_out)
    results = [_gate(tract_out, keep_slower, isa)]

    # onnxruntime: the form whose all-int8 file is fastest first; another only if it could beat what was found
    alls = sorted((job.all_int8(f) for f in ORT_FORMATS), key=lambda o: o.all_int8["speed_ms"]["int8"])
    best = None
    for o in alls:
        if o.path is None:
            if best is not None and o.all_int8["speed_ms"]["int8"] * MIN_SPEEDUP > best.speed["int8"]:
                o.reason = (f"not searched: with every node in int8 it already runs no faster than the "
                            f"{best.fmt.quant} file found")
                continue
            if best is None and _hopeless(o, keep_slower, isa):
                continue
            job.search(o)
        if o.path is not None and (best is None or o.speed["int8"] < best.speed["int8"]):
            best = o
    chosen = best or alls[0]
    if best is None:
        chosen.reason = "; ".join(f"{o.fmt.quant}: {o.reason}" for o in alls)
    chosen.alternatives = {o.fmt.quant: {"all_int8": {"cosine": o.all_int8["cosine"],
                                                      "int8_ms": o.all_int8["speed_ms"]["int8"]},
                                         **({"quantized": len(o.quantized), "cosine": o.cosine,
                                             "int8_ms": o.speed["int8"]} if o.path is not None else {}),
                                         **({"note": o.reason} if o.reason and o is not chosen else {})}
                           for o in alls}
    results.append(_gate(chosen, keep_slower, isa))
    return results


# ---------------------------------------------------------------------------------------------------------------
# The bundle


def text_feeds(session, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[dict]:
    names = {i.name for i in session.get_inputs()}
    feeds = []
    for k in range(input_ids.shape[0]):
        feed = {"input_ids": input_ids[k:k + 1]}
        if "attention_mask" in names:
            feed["attention_mask"] = attention_mask[k:k + 1]
        feeds.append(feed)
    return feeds


def estimate(plan: list[dict]) -> tuple[float, float]:
    """(expected, worst) seconds for `plan` (per role: fp32 ms, nodes, file MB, sample counts). The constants come
    from the ViT-B/32 bundle on a 2-core AVX-512 VNNI machine (tools/README.md); the progress bars refine it."""
    best = worst = 0.0
    for p in plan:
        t = p["fp32_ms"] / 1e3
        build = 1.0 + 0.015 * p["mb"]  # quantizer: load + shape inference + save
        evaluate = 0.5 + 0.005 * p["mb"] + p["check"] * t  # load in the engine, run the check samples
        timing = 2 * 2.0  # compare_speed's budget, twice per form
        base = p["calib"] * t * 1.5 + 3 * (build + evaluate + timing) + 0.02 * p["mb"]
        probe = 5.0 + 0.03 * p["mb"] + 2 * t * p["nodes"]  # two probe samples, one run per node
        search = probe + 4 * (build + evaluate) + timing
        best += base
        worst += base + 3 * search
    return best, worst


def quantize_bundle(bundle: Path, pixel_values: list[np.ndarray], texts: list[str], target: float = DEFAULT_TARGET,
                    check_pixel_values: list[np.ndarray] | None = None, *, keep_slower: bool = False,
                    calibration: dict | None = None, say=print) -> dict:
    """Writes the int8 files that pass the gates (and removes those of an earlier run that do not), plus
    quantize.json. `pixel_values` are prepared calibration images; the resampler is calibrated on the fp32 vision
    encoder's patch tokens of them; `check_pixel_values` are held-out images the cosine is measured on (default:
    a subset of the calibration images). Returns the quantize.json document."""
    from tokenizers import Tokenizer

    from .export import encode

    bundle = Path(bundle)
    roles = bundle_roles(bundle, read_source(bundle))  # text only when the bundle has a text encoder
    require_files(bundle, [onnx_name(r, "fp32") for r in roles] + (["tokenizer.json"] if "text" in roles else []),
                  "export --out")
    if not pixel_values:
        raise ToolError("no calibration images: pass --images DIR with readable images or --scenes N (N > 0)")
    if "text" in roles and not texts:
        raise ToolError("no calibration texts")
    if not 0.0 <= target <= 1.0:
        raise ToolError(f"--target-cosine must be between 0 and 1, got {target}")
    cpu = cpu_info()

    def subset(feeds, n=32):
        return feeds[:: max(1, len(feeds) // n)][:n]

    vision = _ort_session(bundle / onnx_name("vision", "fp32"))
    check_pv = list(check_pixel_values or [])
    feeds, checks, descs = {}, {}, {}
    feeds["vision"] = [{"pixel_values": pv} for pv in pixel_values]
    checks["vision"] = [{"pixel_values": pv} for pv in check_pv] or subset(feeds["vision"])
    descs["vision"] = f"{len(check_pv)} held-out images" if check_pv else f"{len(checks['vision'])} calibration images"
    if "resampler" in roles:
        tokens = [vision.run(["patch_tokens"], f)[0]
                  for f in tqdm(feeds["vision"] + [f for f in checks["vision"] if check_pv],
                                desc="patch tokens for the resampler", unit="image", leave=False)]
        feeds["resampler"] = [{"patch_tokens": t} for t in tokens[:len(pixel_values)]]
        checks["resampler"] = ([{"patch_tokens": t} for t in tokens[len(pixel_values):]] if check_pv
                               else subset(feeds["resampler"]))
        descs["resampler"] = descs["vision"] + "' patch tokens"
    if "text" in roles:
        tokenizer = Tokenizer.from_file(str(bundle / "tokenizer.json"))
        ids, mask = encode(tokenizer, texts)
        feeds["text"] = text_feeds(_ort_session(bundle / onnx_name("text", "fp32")), ids, mask)
        checks["text"] = subset(feeds["text"])
        descs["text"] = f"{len(checks['text'])} calibration texts"
    del vision

    ws = Workspace()
    staging = None
    try:
        jobs_plan = []
        for r in roles:
            src = bundle / onnx_name(r, "fp32")
            sess = _ort_session(src)
            t0 = time.perf_counter()
            for f in checks[r][:3]:
                sess.run(None, f)
            ms = 1e3 * (time.perf_counter() - t0) / min(3, len(checks[r]))
            n = len(nodes_with_constant_weights(onnx.load(str(src), load_external_data=False)))
            jobs_plan.append({"role": r, "nodes": n, "fp32_ms": ms, "mb": src.stat().st_size / 1e6,
                              "calib": len(feeds[r]), "check": len(checks[r])})
        best_s, worst_s = estimate(jobs_plan)
        say("plan: " + ", ".join(f"{p['role']} {p['nodes']} MatMul/Conv nodes ({p['fp32_ms']:.0f} ms fp32)"
                                 for p in jobs_plan)
            + f"; for tract (QOperator) and onnxruntime (QDQ or dynamic, the faster); each form tries every node "
              f"in int8, and if cosine < {target} ranks the nodes in one sensitivity pass and bisects with real files; "
              f"expected {_duration(best_s)} (up to {_duration(worst_s)} if every form needs the search)")
        t_all = time.perf_counter()
        outcomes: list[Outcome] = []
        for r in roles:
            t0 = time.perf_counter()
            outcomes += quantize_role(r, bundle / onnx_name(r, "fp32"), feeds[r], checks[r], ws, target,
                                      keep_slower, cpu["isa"])
            say(f"{r}: done in {time.perf_counter() - t0:.0f} s")
        doc = _document(outcomes, cpu, calibration or {}, descs, target, keep_slower,
                        round(time.perf_counter() - t_all, 1))
        staging = staging_dir(bundle)
        written = []
        for o in outcomes:
            if o.written:
                name = o.fmt.file(o.role)
                shutil.copyfile(o.path, staging / name)
                written.append(name)
        (staging / QUANTIZE_FILE).write_text(json.dumps(doc, indent=2) + "\n")
        commit_files(staging, bundle, written + [QUANTIZE_FILE])
        staging = None
        for r in ROLES:
            for name in int8_file_names(r):
                if name not in written:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(bundle / name)  # an earlier run's file that this run did not confirm
        return doc
    finally:
        ws.close()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def _rounded(d: dict) -> dict:
    return {k: (round(v, 7 if k != "int8" and k != "fp32" else 3) if isinstance(v, float) else
                _rounded(v) if isinstance(v, dict) else v) for k, v in d.items()}


def _document(outcomes: list[Outcome], cpu: dict, calibration: dict, descs: dict, target: float, keep_slower: bool,
              seconds: float) -> dict:
    """quantize.json (../notes/manifest-v2.md): every file written, and under "skipped" those that were not,
    with the reason."""
    files, skipped = [], []
    for o in outcomes:
        entry = {"role": o.role, "variant": "int8", "path": o.fmt.file(o.role), "quant": o.fmt.quant,
                 "engines": [o.fmt.engine]}
        if o.path is not None:
            entry.update({"cosine": _rounded(o.cosine), "checked_on": descs.get(o.role, ""),
                          "kept_float": o.kept_float, "quantized_nodes": len(o.quantized)})
        entry["candidates"] = len(o.nodes)
        if o.speed is not None:
            entry["speed_ms"] = _rounded(o.speed)
        if o.all_int8:
            entry["all_int8"] = {"cosine": _rounded(o.all_int8["cosine"]),
                                 "speed_ms": _rounded(o.all_int8["speed_ms"])}
        if o.search:
            entry["search"] = o.search
        if o.alternatives:
            entry["alternatives"] = _rounded(o.alternatives)
        if o.written:
            if o.forced:
                entry["forced"] = True
                entry["forced_reason"] = o.reason
            files.append(entry)
        else:
            skipped.append({**entry, "engine": o.fmt.engine, "reason": o.reason or "not written"})
    return {"tools_version": __version__, "cpu": cpu, "calibration": calibration, "target_cosine": target,
            "keep_slower": keep_slower, "seconds": seconds, "files": files, "skipped": skipped}
