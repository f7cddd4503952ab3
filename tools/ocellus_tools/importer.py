"""`ocellus-tools import`: an existing ONNX vision encoder -> a bundle's vision.fp32.onnx (docs/manifest.md,
"Bring your own ONNX").

The file is edited, not re-traced, so any exporter's output works (a third-party file with a dynamic batch,
in-graph position-embedding interpolation, extra heads or outputs):

1. **Input**: the image input (``--input``, else the file's single float input) becomes ``pixel_values`` f32
   [1, 3, H, W]: batch 1, the size from ``--size``, the preprocessor config or the file's static dims.
2. **Outputs**: ``patch_tokens`` = the token sequence [1, N, D] (``--tokens``, else the file's single 3-D float
   output; any tensor or node in the graph may be named) and ``image_embeds`` [1, E] = ``--pool``: ``cls``
   (token 0: a Gather), ``mean`` (a ReduceMean over the tokens) or a named tensor (a pooled or projected
   embedding the graph computes). ``--pool-after`` pools another token tensor than ``--tokens`` (e.g. the output
   of a final LayerNorm when ``--tokens`` takes the tokens before it).
3. **Static shapes**: the file's own intermediate and output shapes are dropped (a stale declaration such as
   197 tokens where the graph computes 257 passes onnx.checker and would otherwise stick), shapes are inferred
   again from the fixed input (ONNX shape inference with data propagation), and the graph is cut to what the two
   outputs need (``onnx.utils.Extractor``, which needs those inferred types).
4. **Constant folding**: onnxruntime's offline basic optimisation (``ORT_ENABLE_BASIC``, written with
   ``optimized_model_filepath``) folds the shape arithmetic and the position interpolation of the fixed size into
   constants. ``MatMulAddFusion`` is turned off so that MatMuls stay MatMuls (the int8 quantizer works on
   MatMul/Conv nodes); the result must hold standard ONNX operators only. ``--no-fold`` skips this step.
5. **Checks**: the file is run in onnxruntime *and* in tract (the runtime's engine): N, D and E are what the
   engines compute, never only what shape inference says; both engines must agree with each other (cosine
   >= 0.9999) and with the original file run in onnxruntime (the tokens tensor and the pooled embedding, pooled
   in numpy for cls and mean). A shape the original file declares for the chosen tensors that differs from what
   the engines compute is refused (``--ignore-declared-shapes`` accepts the computed one).
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .bundle import Preprocess
from .errors import ToolError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: tract against onnxruntime, and the edited file against the original, on the same input
COS_IMPORT = 0.9999
#: onnxruntime basic-level optimisers left out: MatMul + Add -> Gemm (with reshapes) would hide the MatMuls from the
#: int8 quantizer
DISABLED_OPTIMIZERS = ["MatMulAddFusion"]
STANDARD_DOMAINS = ("", "ai.onnx")
_FLOAT = TensorProto.FLOAT


@dataclass
class ImportOptions:
    input: str | None = None
    tokens: str | None = None
    pool: str = "cls"
    pool_after: str | None = None
    size: tuple[int, int] | None = None
    fold: bool = True
    ignore_declared_shapes: bool = False


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` or ``S`` (square) -> (H, W)."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise ToolError(f"--size {text!r} is not HxW: pass the model input size, e.g. --size 224x224 (or 224)")
    return dims[0], dims[1]


def _dims(vi: onnx.ValueInfoProto) -> list | None:
    """The declared dims (int, or a str/None for a dynamic one), None when no shape is declared."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _shape_text(dims) -> str:
    if dims is None:
        return "[?]"
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def _sha256(path: Path) -> str:
    from .manifest import sha256

    return sha256(path)


def load_original(path: Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"ONNX file {path} does not exist: pass the path of the vision encoder's .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise ToolError(f"cannot read {path} as an ONNX model ({str(e).splitlines()[0] if str(e) else e}): pass "
                        "an .onnx file") from e
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ToolError(f"{path} fails the ONNX checker ({str(e).splitlines()[0]}): re-export it; ocellus-tools "
                        "only edits valid files") from e
    return model


def opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _elem(vi: onnx.ValueInfoProto) -> int:
    return vi.type.tensor_type.elem_type


def choose_input(model: onnx.ModelProto, name: str | None, src: Path) -> onnx.ValueInfoProto:
    inputs = graph_inputs(model)
    listing = ", ".join(f"{i.name} {_shape_text(_dims(i))} "
                        f"{onnx.helper.tensor_dtype_to_np_dtype(_elem(i)).name}" for i in inputs) or "none"
    if name is not None:
        match = [i for i in inputs if i.name == name]
        if not match:
            raise ToolError(f"{src.name} has no input named {name!r} (its inputs: {listing}): pass one of them "
                            "with --input")
        chosen = match[0]
    else:
        floats = [i for i in inputs if _elem(i) == _FLOAT]
        if len(floats) != 1:
            raise ToolError(f"{src.name} has {len(floats)} float inputs ({listing}): pass the image input with "
                            "--input NAME")
        chosen = floats[0]
    if _elem(chosen) != _FLOAT:
        raise ToolError(f"input {chosen.name} of {src.name} is not float32: ocellus feeds pixel_values as float32; "
                        "re-export the model with a float32 image input")
    others = [i.name for i in inputs if i.name != chosen.name]
    if others:
        raise ToolError(f"{src.name} has inputs besides {chosen.name} ({', '.join(others)}): ocellus feeds only "
                        "the image; re-export the encoder with the image as its only input (constant other inputs "
                        "can become initializers)")
    dims = _dims(chosen)
    if dims is not None and len(dims) != 4:
        raise ToolError(f"input {chosen.name} of {src.name} has shape {_shape_text(dims)}, not [batch, 3, height, "
                        "width]: ocellus feeds NCHW images; pass the image input with --input")
    return chosen


def input_size(chosen: onnx.ValueInfoProto, src: Path, size: tuple[int, int] | None,
               hint: tuple[int, int] | None, hint_from: str) -> tuple[int, int]:
    """(H, W): --size, else the preprocessor's size, else the input's static dims; checked against static dims."""
    dims = _dims(chosen) or [None] * 4
    batch, channels, h, w = dims
    if isinstance(batch, int) and batch not in (0, 1):
        raise ToolError(f"input {chosen.name} of {src.name} has a static batch of {batch}: ocellus runs batch 1; "
                        "re-export the model with batch 1 or a dynamic batch")
    if isinstance(channels, int) and channels not in (0, 3):
        raise ToolError(f"input {chosen.name} of {src.name} has {channels} channels: ocellus feeds 3 (RGB or "
                        "BGR); pass the image input with --input")
    static = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    want, given = (size, "--size") if size is not None else (hint, hint_from)
    if want is None:
        if static is None:
            raise ToolError(f"input {chosen.name} of {src.name} has a dynamic size {_shape_text(dims)}: pass --size "
                            "HxW, the resolution the model was trained at (e.g. --size 224x224)")
        return static
    if static is not None and tuple(want) != static:
        raise ToolError(f"input {chosen.name} of {src.name} is static {static[0]}x{static[1]} but {given} says "
                        f"{want[0]}x{want[1]}: pass --size {static[0]}x{static[1]} or re-export the model with a "
                        "dynamic height and width")
    return tuple(want)


def _names(model: onnx.ModelProto) -> tuple[set[str], dict[str, list[str]]]:
    """(tensor names: inputs, initializers, node outputs; node name -> its outputs)."""
    g = model.graph
    tensors = {i.name for i in g.input} | {i.name for i in g.initializer}
    nodes = {}
    for n in g.node:
        tensors.update(o for o in n.output if o)
        if n.name:
            nodes[n.name] = [o for o in n.output if o]
    return tensors, nodes


def resolve(model: onnx.ModelProto, name: str, flag: str, src: Path) -> str:
    """The tensor `name` denotes: a tensor of that name, else the single output of the node of that name."""
    tensors, nodes = _names(model)
    if name in tensors:
        return name
    if name in nodes:
        outs = nodes[name]
        if len(outs) == 1:
            return outs[0]
        raise ToolError(f"node {name!r} of {src.name} has {len(outs)} outputs ({', '.join(outs)}): pass one of "
                        f"them to {flag}")
    close = difflib.get_close_matches(name, sorted(tensors | set(nodes)), n=3, cutoff=0.6)
    outputs = ", ".join(f"{o.name} {_shape_text(_dims(o))}" for o in model.graph.output)
    hint = f" (close: {', '.join(close)})" if close else ""
    raise ToolError(f"{src.name} has no tensor or node named {name!r}{hint}: pass to {flag} one of its outputs "
                    f"({outputs}) or the name of a tensor inside the graph")


def _declared(model: onnx.ModelProto, name: str) -> list | None:
    for vi in list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name:
            return _dims(vi)
    return None


def _inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        inferred = model
    g = inferred.graph
    return {vi.name: _elem(vi) for vi in list(g.input) + list(g.value_info) + list(g.output)}


def _session(data, threads: int = 1, level=None, optimized: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if level is not None:
        so.graph_optimization_level = level
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    kwargs = {"disabled_optimizers": DISABLED_OPTIMIZERS} if optimized is not None else {}
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"], **kwargs)


class Original:
    """The original file run in onnxruntime with the chosen tensors exposed as outputs (nothing else changed):
    the reference of the import's checks and of `validate --reference onnxruntime`."""

    def __init__(self, model: onnx.ModelProto, src: Path, input_name: str, tensors: list[str]):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        types = None
        present = {o.name for o in m.graph.output}
        for t in tensors:
            if t not in present:
                if types is None:
                    types = _inferred_types(model)
                m.graph.output.append(helper.make_tensor_value_info(t, types.get(t) or _FLOAT, None))
                present.add(t)
        self.src = src
        self.input_name = input_name
        try:
            self.session = _session(m.SerializeToString())
        except Exception as e:
            raise ToolError(f"onnxruntime cannot load {src} ({str(e).splitlines()[0]}): the file must run in "
                            "onnxruntime as it is") from e

    def run(self, pixel_values: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        h, w = pixel_values.shape[2:]
        try:
            outs = self.session.run(names, {self.input_name: pixel_values})
        except Exception as e:
            raise ToolError(f"onnxruntime cannot run {self.src.name} on a [1,3,{h},{w}] input "
                            f"({str(e).splitlines()[0]}): pass the --size the model was made for") from e
        return dict(zip(names, outs))


def pool_numpy(tokens: np.ndarray, how: str) -> np.ndarray:
    return tokens[:, 0, :] if how == "cls" else tokens.mean(axis=1)


def original_outputs(original: Original, pixel_values: np.ndarray, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, pooled embedding) of the original file for `pixel_values`, as the import defined them."""
    pool, tokens, pool_after = spec["pool"], spec["tokens"], spec.get("pool_after") or spec["tokens"]
    names = list(dict.fromkeys([tokens] + ([pool_after] if pool in ("cls", "mean") else [pool])))
    got = original.run(pixel_values, names)
    pooled = pool_numpy(got[pool_after], pool) if pool in ("cls", "mean") else got[pool]
    return got[tokens], pooled


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Renames tensor `old` to `new` wherever the graph (and its subgraphs, which may read it) names it."""
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new
    for t in graph.initializer:
        if t.name == old:
            t.name = new
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
        for i, name in enumerate(n.output):
            if name == old:
                n.output[i] = new
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _rename(a.g, old, new)
            for sub in a.graphs:
                _rename(sub, old, new)


def _edited(model: onnx.ModelProto, input_name: str, h: int, w: int, tokens: str, pool: str,
            pool_after: str) -> onnx.ModelProto:
    """The original with pixel_values [1,3,H,W] in, patch_tokens and image_embeds out, no declared shapes inside,
    shapes inferred again, cut to what the outputs need."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    names, _ = _names(m)
    for reserved in ("pixel_values", "patch_tokens", "image_embeds"):  # free the names the bundle's files use
        if reserved in names and not (reserved == "pixel_values" and input_name == reserved):
            new, k = f"{reserved}_original", 1
            while new in names:
                new, k = f"{reserved}_original_{k}", k + 1
            names.add(new)
            _rename(g, reserved, new)
            input_name, tokens, pool, pool_after = (new if t == reserved else t
                                                    for t in (input_name, tokens, pool, pool_after))
    if input_name != "pixel_values":
        _rename(g, input_name, "pixel_values")
        tokens, pool, pool_after = ("pixel_values" if t == input_name else t for t in (tokens, pool, pool_after))
    inp = next(i for i in g.input if i.name == "pixel_values")
    inp.type.tensor_type.ClearField("shape")
    for d in (1, 3, h, w):
        inp.type.tensor_type.shape.dim.add().dim_value = d
    del g.value_info[:]
    ops = opset(m)
    taken = {n.name for n in g.node}

    def node_name(base):
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    g.node.append(helper.make_node("Identity", [tokens], ["patch_tokens"], name=node_name("ocellus/patch_tokens")))
    if pool == "cls":
        index = node_name("ocellus/cls_index")
        g.initializer.append(helper.make_tensor(index, TensorProto.INT64, [], [0]))
        g.node.append(helper.make_node("Gather", [pool_after, index], ["image_embeds"], axis=1,
                                       name=node_name("ocellus/pool_cls")))
    elif pool == "mean":
        if ops >= 18:
            axes = node_name("ocellus/mean_axes")
            g.initializer.append(helper.make_tensor(axes, TensorProto.INT64, [1], [1]))
            g.node.append(helper.make_node("ReduceMean", [pool_after, axes], ["image_embeds"], keepdims=0,
                                           name=node_name("ocellus/pool_mean")))
        else:
            g.node.append(helper.make_node("ReduceMean", [pool_after], ["image_embeds"], axes=[1], keepdims=0,
                                           name=node_name("ocellus/pool_mean")))
    else:
        g.node.append(helper.make_node("Identity", [pool], ["image_embeds"], name=node_name("ocellus/image_embeds")))
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("patch_tokens", _FLOAT, None),
                     helper.make_tensor_value_info("image_embeds", _FLOAT, None)])
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as e:
        raise ToolError(f"ONNX shape inference fails on the edited graph ({str(e).splitlines()[0]}): check "
                        "--tokens and --pool name float tensors of the image branch") from e
    return onnx.utils.Extractor(m).extract_model(["pixel_values"], ["patch_tokens", "image_embeds"])


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _fold(model: onnx.ModelProto, work: Path) -> onnx.ModelProto:
    import onnxruntime as ort

    src, dst = work / "cut.onnx", work / "folded.onnx"
    onnx.save(model, str(src))
    try:
        _session(str(src), level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, optimized=dst)
    except Exception as e:
        raise ToolError(f"onnxruntime cannot optimise the edited graph ({str(e).splitlines()[0]}): pass --no-fold "
                        "to keep it unfolded") from e
    folded = onnx.load(str(dst))
    odd = sorted({f"{n.domain}:{n.op_type}" for n in folded.graph.node if n.domain not in STANDARD_DOMAINS})
    if odd:
        raise ToolError(f"onnxruntime's basic optimisation produced non-standard operators ({', '.join(odd)}) "
                        "that tract may not run: pass --no-fold")
    return folded


def _finish(model: onnx.ModelProto, n: int, d: int, e: int, h: int, w: int) -> onnx.ModelProto:
    """Static output shapes from the engines, static shapes inferred for every intermediate, checked."""
    from . import __version__

    g = model.graph
    _drop_unused_opsets(model)
    del g.value_info[:]
    for vi, dims in zip(g.output, ((1, n, d), (1, e))):
        vi.type.tensor_type.ClearField("shape")
        for v in dims:
            vi.type.tensor_type.shape.dim.add().dim_value = v
    model.producer_name, model.producer_version = "ocellus-tools import", __version__
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ToolError(f"the imported graph at {h}x{w} fails ONNX shape inference or the checker against the "
                        f"shapes the engines compute (patch_tokens [1,{n},{d}], image_embeds [1,{e}]): "
                        f"{str(e).splitlines()[0]}: pass --no-fold, or check --tokens and --pool") from e
    return model


def _tract():
    try:
        import tract
    except ImportError as e:
        raise ToolError("the tract Python bindings are not installed, so the file cannot be checked in the "
                        "runtime's engine: pip install tract==0.23.9 (a dependency of ocellus-tools)") from e
    return tract


def _tract_runner(path: Path):
    def fail(e):
        return ToolError(f"tract cannot load or run the imported file ({str(e).splitlines()[0] if str(e) else e}): "
                         "the runtime could not run it either; pass --no-fold, or re-export the model with "
                         "standard operators")
    try:
        runnable = _tract().onnx().load(str(path)).into_model().into_runnable()
    except ToolError:
        raise
    except Exception as e:  # tract.TractError
        raise fail(e) from e

    def run(pixel_values):
        try:
            return [t.to_numpy() for t in runnable.run([pixel_values])]
        except Exception as e:
            raise fail(e) from e
    return run


def import_vision(src: Path, dst: Path, opts: ImportOptions, pre: Preprocess,
                  size_hint: tuple[int, int] | None = None, size_hint_from: str = "", seed: int = 0) -> dict:
    """Writes the edited vision encoder of `src` to `dst`; returns the import's record (spec for source.json and
    the measured figures). `pre` gets the input size; the checks run on generated scenes (one at the input size,
    one wider, prepared with `pre`)."""
    from .images import scene_frame
    from .prepare import prepare_image
    from .validate import cosine

    src = Path(src)
    _tract()
    model = load_original(src)
    chosen = choose_input(model, opts.input, src)
    h, w = input_size(chosen, src, opts.size, size_hint, size_hint_from)
    if (pre.height, pre.width) != (h, w):
        pre.height, pre.width = h, w
    pre.check()
    rng = np.random.default_rng(seed)
    pvs = [prepare_image(scene_frame(rng, fw, fh), pre) for fw, fh in ((w, h), (w * 5 // 3 + 1, h))]

    outputs = [o.name for o in model.graph.output]
    tokens = resolve(model, opts.tokens, "--tokens", src) if opts.tokens else None
    pool_kind = opts.pool if opts.pool in ("cls", "mean") else "tensor"
    pool = resolve(model, opts.pool, "--pool", src) if pool_kind == "tensor" else opts.pool
    pool_after = resolve(model, opts.pool_after, "--pool-after", src) if opts.pool_after else None
    if pool_after is not None and pool_kind == "tensor":
        raise ToolError("--pool-after names the tokens to pool with --pool cls or mean; --pool names a pooled "
                        "tensor already: drop one of them")
    wanted = [t for t in [tokens, pool if pool_kind == "tensor" else None, pool_after] if t]
    original = Original(model, src, chosen.name, wanted)
    probe = original.run(pvs[0], list(dict.fromkeys(outputs + wanted)))
    if tokens is None:
        three = [o for o in outputs if probe[o].ndim == 3 and probe[o].dtype == np.float32]
        if len(three) != 1:
            listing = ", ".join(f"{o} {list(probe[o].shape)}" for o in outputs)
            raise ToolError(f"{src.name} has {len(three)} 3-D float outputs ({listing}): pass the token sequence "
                            "[batch, N, D] with --tokens NAME")
        tokens = three[0]
    pool_after = pool_after or tokens
    for name, flag in ((tokens, "--tokens"), (pool_after, "--pool-after")):
        arr = probe[name]
        if arr.ndim != 3 or arr.shape[0] != 1 or arr.dtype != np.float32:
            raise ToolError(f"tensor {name} ({flag}) is {arr.dtype} {list(arr.shape)} for a [1,3,{h},{w}] input, not "
                            f"float32 [1, N, D] tokens: pass {flag} the token sequence (for a feature map [1, D, h, "
                            "w], the tensor after its Flatten/Transpose)")
    if pool_kind == "tensor":
        arr = probe[pool]
        if arr.ndim != 2 or arr.shape[0] != 1 or arr.dtype != np.float32:
            hint = (f"; for [1, 1, E] pass --pool cls --pool-after {pool}" if arr.ndim == 3 and arr.shape[1] == 1
                    else "")
            raise ToolError(f"tensor {pool} (--pool) is {arr.dtype} {list(arr.shape)}, not float32 [1, E]: pass "
                            f"--pool cls, mean or a pooled embedding tensor{hint}")
    n, d = probe[tokens].shape[1:]
    if not opts.ignore_declared_shapes:
        for name in dict.fromkeys([tokens, pool_after] + ([pool] if pool_kind == "tensor" else [])):
            declared, computed = _declared(model, name), list(probe[name].shape)
            if declared is None or len(declared) != len(computed):
                continue
            bad = [k for k, (a, b) in enumerate(zip(declared, computed))
                   if isinstance(a, int) and a > 0 and a != b and not (k == 0 and b == 1)]
            if bad:
                raise ToolError(f"tensor {name} of {src.name}: the file declares {_shape_text(declared)} but "
                                f"onnxruntime computes {computed} at {h}x{w}: pass the --size the model was exported "
                                "for, or --ignore-declared-shapes to keep what the engines compute (the import "
                                "checks it in tract too)")

    work = Path(tempfile.mkdtemp(prefix="ocellus-import-"))
    try:
        edited = _edited(model, chosen.name, h, w, tokens, pool if pool_kind == "tensor" else opts.pool, pool_after)
        nodes_before = len(model.graph.node)
        if opts.fold:
            edited = _fold(edited, work)
        cut_nodes = len(edited.graph.node)
        onnx.save(edited, str(work / "unchecked.onnx"))
        got = _session(str(work / "unchecked.onnx")).run(["patch_tokens", "image_embeds"], {"pixel_values": pvs[0]})
        pt, ie = got
        if pt.shape != (1, n, d) or ie.ndim != 2 or ie.shape[0] != 1:
            raise ToolError(f"the imported graph gives patch_tokens {list(pt.shape)} and image_embeds "
                            f"{list(ie.shape)}, not [1,{n},{d}] and [1,E]: pass --no-fold and report the model")
        e = ie.shape[1]
        final = _finish(edited, n, d, e, h, w)
        onnx.save(final, str(dst))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {"original": {"patch_tokens": 1.0, "image_embeds": 1.0},
               "tract": {"patch_tokens": 1.0, "image_embeds": 1.0}}
    sess = _session(str(dst))
    tract_run = _tract_runner(dst)
    spec_pool = {"tokens": tokens, "pool": pool if pool_kind == "tensor" else opts.pool, "pool_after": pool_after}
    for pv in pvs:
        want_t, want_p = original_outputs(original, pv, spec_pool)
        got_t, got_p = sess.run(["patch_tokens", "image_embeds"], {"pixel_values": pv})
        for key, a, b in (("patch_tokens", got_t, want_t), ("image_embeds", got_p, want_p)):
            if a.shape != b.shape:
                raise ToolError(f"the imported file gives {key} {list(a.shape)} but the original computes "
                                f"{list(b.shape)} for the same input: report the model")
            figures["original"][key] = min(figures["original"][key], cosine(a, b))
        tr = tract_run(pv)
        for key, a, b in (("patch_tokens", tr[0], got_t), ("image_embeds", tr[1], got_p)):
            if a.shape != b.shape:
                raise ToolError(f"{key}: tract computes {list(a.shape)} but onnxruntime {list(b.shape)} on the "
                                f"imported file: tract reads the graph differently; pass --no-fold or report the "
                                "model")
            figures["tract"][key] = min(figures["tract"][key], cosine(a, b))
    for key, c in figures["original"].items():
        if not c >= COS_IMPORT:
            raise ToolError(f"the imported file's {key} differs from the original's in onnxruntime (cosine {c:.6f} < "
                            f"{COS_IMPORT}): pass --no-fold and report the model")
    for key, c in figures["tract"].items():
        if not c >= COS_IMPORT:
            raise ToolError(f"tract and onnxruntime disagree on the imported file's {key} (cosine {c:.6f} < "
                            f"{COS_IMPORT}): the runtime would compute something else; pass --no-fold or report "
                            "the model")
    return {
        "spec": {"kind": "import", "path": str(src.resolve()), "file": src.name, "sha256": _sha256(src),
                 "size": os.path.getsize(src), "opset": opset(model), "input": chosen.name, "tokens": tokens,
                 "pool": spec_pool["pool"], "pool_after": pool_after if pool_after != tokens else None,
                 "height": h, "width": w, "fold": "onnxruntime-basic" if opts.fold else "none"},
        "tokens": int(n), "dim": int(d), "embed_dim": int(e), "height": h, "width": w,
        "nodes": {"original": nodes_before, "imported": cut_nodes}, "figures": figures,
    }


def default_preprocess(h: int, w: int) -> Preprocess:
    """ImageNet's: shortest edge + centre crop, bicubic, ImageNet mean and std (timm's and torchvision's default
    for third-party ViTs such as DINOv2)."""
    return Preprocess(height=h, width=w, resize="shortest_edge", interpolation="bicubic", crop="center",
                      mean=IMAGENET_MEAN, std=IMAGENET_STD)


def open_original(spec: dict, override: Path | None = None) -> Original:
    """The original file of an imported bundle (source.json's spec, or `override`), checked by its sha256."""
    path = Path(override) if override is not None else Path(spec["path"])
    if not path.is_file():
        raise ToolError(f"the original ONNX file {path} this bundle was imported from is gone, and validate compares "
                        "against it: restore it, pass --original FILE, or import again")
    if _sha256(path) != spec["sha256"]:
        raise ToolError(f"{path} is not the file this bundle was imported from (sha256 differs from source.json's): "
                        "pass --original with the file `ocellus-tools import` read, or import again")
    model = load_original(path)
    tensors = [spec["tokens"]] + ([spec["pool_after"]] if spec.get("pool_after") else [])
    if spec["pool"] not in ("cls", "mean"):
        tensors.append(spec["pool"])
    return Original(model, path, spec["input"], tensors)


def import_bundle(src: Path, out: Path, opts: ImportOptions, pre: Preprocess, resampler: dict, *,
                  name: str | None = None, size_hint: tuple[int, int] | None = None,
                  size_hint_from: str = "") -> dict:
    """`ocellus-tools import`: vision.fp32.onnx, a new resampler for its tokens and source.json, written into a
    staging directory and renamed into `out` only when every check passed; what described an earlier bundle in
    `out` (int8 files, reference data, parity, manifest, prototypes, a text tower) is removed."""
    import json

    import torch

    from . import __version__
    from .export import _export
    from .files import (PROTOTYPES_FILE, PROTOTYPES_RECORD, SOURCE_FILE, commit_files, derived_files, onnx_name,
                        remove_files, staging_dir)
    from .resampler_io import build_from_spec, describe, make_spec

    out = Path(out)
    staging = staging_dir(out)
    names = [onnx_name("vision", "fp32"), onnx_name("resampler", "fp32"), SOURCE_FILE]
    try:
        result = import_vision(src, staging / names[0], opts, pre, size_hint, size_hint_from)
        n, d = result["tokens"], result["dim"]
        spec = make_spec(resampler.get("kind") or "perceiver", tokens=n, in_dim=d, latents=resampler.get("latents"),
                         latent_dim=resampler.get("latent_dim"), depth=resampler.get("depth"),
                         heads=resampler.get("heads"), seed=resampler.get("seed", 0),
                         state_dict=resampler.get("state_dict"))
        module = build_from_spec(spec)
        x = torch.randn(1, n, d, generator=torch.Generator().manual_seed(0))
        _export(module, (x,), staging / names[1], ["patch_tokens"], ["latents"])
        record = {
            "tools_version": __version__, "name": name or out.resolve().name, "source": f"import:{Path(src).name}",
            "spec": result["spec"], "embed_dim": result["embed_dim"], "preprocess": pre.record(), "text": None,
            "scores": None,
            "resampler": {"kind": spec["kind"], "num_latents": spec["latents"], "latent_dim": spec["latent_dim"],
                          "spec": spec},
        }
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_files(staging, out, names)
    stale = derived_files() + [PROTOTYPES_FILE, PROTOTYPES_RECORD, onnx_name("text", "fp32"), "tokenizer.json"]
    result["removed"] = remove_files(out, stale)
    result["resampler"] = describe(spec)
    result["names"] = names
    return result
