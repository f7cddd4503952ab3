"""`ocellus-tools validate`: parity of every ONNX file and the reference data the Rust tests compare against.

* fp32 files against the PyTorch modules (rebuilt from source.json), int8 files against the fp32 files, all
  through onnxruntime, on the same inputs: per output, the smallest cosine similarity over the reference inputs
  and the largest absolute difference. The resampler files get the fp32 vision file's patch tokens, so each
  figure measures one file. Below a threshold the command fails and writes nothing.
* reference/ (docs/manifest.md): images (some at the model input size, some larger with another aspect ratio),
  their prepared pixel_values, and what onnxruntime computes for each file on them (the resampler on the same
  variant's patch tokens, as the runtime chains them); prompts with their ids, mask and text embeddings.
* parity.json: the figures `manifest` copies into manifest.toml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ToolError
from .export import encode
from .files import PARITY_FILE, commit_files, onnx_name, read_source, require_files, staging_dir
from .images import reference_prompts, scene_frame
from .prepare import prepare_image
from .quantize import _session, text_feeds
from .sources import build_bundle
from .tomlw import value


def sha256(path: Path) -> str:
    from .manifest import sha256 as _sha

    return _sha(path)

COS_FP32 = 0.99999
COS_INT8 = 0.999
OUTPUTS = {"vision": ["patch_tokens", "image_embeds"], "resampler": ["latents"], "text": ["text_embeds"]}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


class Figures:
    """Running min cosine and max abs difference per output."""

    def __init__(self):
        self.data: dict[str, list[float]] = {}

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> None:
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            raise ToolError(f"output {name}: shape {got.shape} differs from the reference's {want.shape}")
        cos = cosine(got, want)
        mad = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        if not np.all(np.isfinite(got)):
            cos, mad = float("nan"), float("inf")
        c, m = self.data.get(name, [1.0, 0.0])
        self.data[name] = [min(c, cos) if cos == cos else float("nan"), max(m, mad)]

    def outputs(self) -> list[dict]:
        return [{"name": n, "cosine": c, "max_abs": m} for n, (c, m) in self.data.items()]


def reference_sizes(height: int, width: int) -> list[tuple[str, int, int]]:
    """(id, width, height): two at the model input size, two larger with other aspect ratios (about 5:3 and
    5:8), one pixel odd so that a shortest-edge centre crop's box edges fall on half pixels."""
    return [("img0", width, height), ("img1", width, height),
            ("img2", round(width * 2.5) + 1, round(height * 1.5)),
            ("img3", round(width * 1.25), round(height * 2.0) + 1)]


def _torch(module, *args):
    with torch.no_grad():
        out = module(*(torch.from_numpy(a) for a in args))
    if isinstance(out, (tuple, list)):
        return [o.numpy() for o in out]
    return out.numpy()


def _check_source_matches(rec: dict, bundle) -> None:
    p = bundle.preprocess
    want = rec["preprocess"]
    got = {"height": p.height, "width": p.width, "resize": p.resize, "interpolation": p.interpolation,
           "crop": p.crop, "channel_order": p.channel_order}
    diff = [k for k, v in got.items() if want.get(k) != v]
    if diff or rec["embed_dim"] != bundle.embed_dim:
        raise ToolError(f"the PyTorch model rebuilt from source.json differs from the exported one "
                        f"({', '.join(diff) or 'embed_dim'}): its source changed; re-run `ocellus-tools export`")


COS_ENGINES = 0.9999  # tract against onnxruntime on the same file and input (tests/parity.rs uses the same)


def tract_check(bundle_dir: Path, images, text_feeds_by_variant, text_out) -> dict | None:
    """Runs every file in tract (the runtime's engine, through its Python bindings) on the reference inputs.
    Figures per file and output: tract against onnxruntime on the same file and input ("onnxruntime"), and for
    int8 files also tract int8 against onnxruntime fp32 ("fp32"). None when the bindings are not installed."""
    try:
        import tract
    except ImportError:
        return None

    def runnable(name):
        try:
            return tract.onnx().load(str(bundle_dir / name)).into_model().into_runnable()
        except Exception as e:  # tract.TractError and friends
            raise ToolError(f"tract cannot load {bundle_dir / name}: {str(e).splitlines()[0] if str(e) else e}: the "
                            "runtime could not run it either; re-run `ocellus-tools export`/`quantize`") from e

    same = {onnx_name(r, v): Figures() for v in ("fp32", "int8") for r in OUTPUTS}
    to_fp32 = {onnx_name(r, "int8"): Figures() for r in OUTPUTS}
    for v in ("fp32", "int8"):
        vision, resampler = runnable(onnx_name("vision", v)), runnable(onnx_name("resampler", v))
        for _, _, pv, out in images:
            pt, ie = (t.to_numpy() for t in vision.run([pv]))
            lat = resampler.run([out[v]["patch_tokens"]])[0].to_numpy()
            for name, got in (("patch_tokens", pt), ("image_embeds", ie)):
                same[onnx_name("vision", v)].add(name, got, out[v][name])
                if v == "int8":
                    to_fp32[onnx_name("vision", v)].add(name, got, out["fp32"][name])
            same[onnx_name("resampler", v)].add("latents", lat, out[v]["latents"])
            if v == "int8":
                lat_f = resampler.run([out["fp32"]["patch_tokens"]])[0].to_numpy()
                to_fp32[onnx_name("resampler", v)].add("latents", lat_f, out["fp32"]["latents"])
        text = runnable(onnx_name("text", v))
        for k, feed in enumerate(text_feeds_by_variant[v]):
            got = text.run(list(feed.values()))[0].to_numpy()
            same[onnx_name("text", v)].add("text_embeds", got, text_out[v][k])
            if v == "int8":
                to_fp32[onnx_name("text", v)].add("text_embeds", got, text_out["fp32"][k])
    files = {}
    for n, f in same.items():
        files[n] = {"onnxruntime": f.outputs()}
        if n in to_fp32:
            files[n]["fp32"] = to_fp32[n].outputs()
    return {"version": getattr(tract, "version", lambda: "?")(), "files": files}


def validate_bundle(bundle_dir: Path, *, seed: int = 1234, cos_fp32: float = COS_FP32,
                    cos_int8: float = COS_INT8, use_tract: bool = True) -> dict:
    """Measures parity, fails below the thresholds, then writes reference/ and parity.json atomically."""
    import onnxruntime as ort

    bundle_dir = Path(bundle_dir)
    rec = read_source(bundle_dir)
    names = [onnx_name(r, v) for v in ("fp32", "int8") for r in OUTPUTS]
    require_files(bundle_dir, [n for n in names if n.endswith("fp32.onnx")] + ["tokenizer.json"], "export --out")
    require_files(bundle_dir, [n for n in names if n.endswith("int8.onnx")], "quantize")
    bundle = build_bundle(rec["spec"], rec["name"], rebuild=True)
    _check_source_matches(rec, bundle)
    pre = bundle.preprocess

    sess = {}
    for n in names:
        try:
            sess[n] = _session(bundle_dir / n)
        except Exception as e:
            raise ToolError(f"onnxruntime cannot load {bundle_dir / n}: {str(e).splitlines()[0]}: re-run "
                            f"`ocellus-tools {'export' if 'fp32' in n else 'quantize'}`") from e
    figs = {n: Figures() for n in names}
    chain = Figures()  # int8 vision -> int8 resampler against fp32 -> fp32, as the runtime chains them
    rng = np.random.default_rng(seed)
    images = []
    for img_id, w, h in reference_sizes(pre.height, pre.width):
        frame = scene_frame(rng, w, h)
        pv = prepare_image(frame, pre)
        pt_t, ie_t = _torch(bundle.vision, pv)
        out = {}
        for v in ("fp32", "int8"):
            pt, ie = sess[onnx_name("vision", v)].run(["patch_tokens", "image_embeds"], {"pixel_values": pv})
            out[v] = {"patch_tokens": pt, "image_embeds": ie}
        pt_f = out["fp32"]["patch_tokens"]
        figs["vision.fp32.onnx"].add("patch_tokens", out["fp32"]["patch_tokens"], pt_t)
        figs["vision.fp32.onnx"].add("image_embeds", out["fp32"]["image_embeds"], ie_t)
        for o in OUTPUTS["vision"]:
            figs["vision.int8.onnx"].add(o, out["int8"][o], out["fp32"][o])
        lat_t = _torch(bundle.resampler, pt_f)
        lat_f = sess["resampler.fp32.onnx"].run(["latents"], {"patch_tokens": pt_f})[0]
        lat_q_same = sess["resampler.int8.onnx"].run(["latents"], {"patch_tokens": pt_f})[0]
        lat_q = sess["resampler.int8.onnx"].run(["latents"], {"patch_tokens": out["int8"]["patch_tokens"]})[0]
        figs["resampler.fp32.onnx"].add("latents", lat_f, lat_t)
        figs["resampler.int8.onnx"].add("latents", lat_q_same, lat_f)
        chain.add("latents", lat_q, lat_f)
        chain.add("image_embeds", out["int8"]["image_embeds"], out["fp32"]["image_embeds"])
        out["fp32"]["latents"], out["int8"]["latents"] = lat_f, lat_q
        images.append((img_id, frame, pv, out))

    prompts = reference_prompts()
    ids, mask = encode(bundle.tokenizer, prompts)
    text_out = {"fp32": [], "int8": []}
    feeds_by_variant = {}
    for v in ("fp32", "int8"):
        s = sess[onnx_name("text", v)]
        feeds_by_variant[v] = text_feeds(s, ids, mask)
        for feed in feeds_by_variant[v]:
            text_out[v].append(s.run(["text_embeds"], feed)[0])
    for k in range(len(prompts)):
        te_t = _torch(bundle.text, ids[k:k + 1], mask[k:k + 1])
        figs["text.fp32.onnx"].add("text_embeds", text_out["fp32"][k], te_t)
        figs["text.int8.onnx"].add("text_embeds", text_out["int8"][k], text_out["fp32"][k])

    failures = []
    for n in names:
        threshold, against = (cos_fp32, "PyTorch") if "fp32" in n else (cos_int8, "fp32")
        for o in figs[n].outputs():
            if not (o["cosine"] >= threshold):
                failures.append(f"{n} output {o['name']}: cosine {o['cosine']:.6f} < {threshold} against {against} "
                                f"(max abs diff {o['max_abs']:.3g})")
    tract_figs = tract_check(bundle_dir, images, feeds_by_variant, text_out) if use_tract else None
    warnings_ = []
    if tract_figs is not None:
        for n, f in tract_figs["files"].items():
            for o in f["onnxruntime"]:
                if o["cosine"] >= COS_ENGINES:
                    continue
                msg = (f"{n} output {o['name']} in tract: cosine {o['cosine']:.6f} < {COS_ENGINES} against "
                       f"onnxruntime on the same file (max abs diff {o['max_abs']:.3g})")
                # fp32 must agree; int8 engines may round ties differently and drift apart through the layers
                # (what matters there is the figure against fp32, gated below)
                (failures if "fp32" in n else warnings_).append(msg)
            for o in f.get("fp32", []):
                if not (o["cosine"] >= cos_int8):
                    failures.append(f"{n} output {o['name']} in tract: cosine {o['cosine']:.6f} < {cos_int8} "
                                    f"against fp32 (max abs diff {o['max_abs']:.3g})")
    if failures:
        if any(".fp32.onnx" in f.split(" ")[0] and "against PyTorch" in f for f in failures):
            fix = "the fp32 file does not compute what its PyTorch module computes: re-run `ocellus-tools export`"
        elif all("against onnxruntime" in f for f in failures):
            fix = ("tract computes something else than onnxruntime on this file: keep to the operators and the int8 "
                   "format of ../shared/notes/tract-quantization.md")
        else:
            fix = ("int8 is too far from fp32: re-run `ocellus-tools quantize` with more or more typical calibration "
                   "images, or a higher --target-cosine")
        raise ToolError(f"parity check failed for {bundle_dir}: " + "; ".join(failures) + f": {fix}")

    for w in warnings_:
        print(f"warning: {w}; tests/parity.rs holds committed bundles to {COS_ENGINES}", file=sys.stderr)
    parity = {"engine": f"onnxruntime {ort.__version__}", "thresholds": {"fp32": cos_fp32, "int8": cos_int8},
              "seed": seed, "images": len(images), "prompts": len(prompts), "files": {},
              "chained_int8": {"reference": "fp32", "outputs": chain.outputs()}, "tract": tract_figs}
    for n in names:
        parity["files"][n] = {"reference": "pytorch" if "fp32" in n else "fp32", "sha256": sha256(bundle_dir / n),
                              "outputs": figs[n].outputs()}

    staging = staging_dir(bundle_dir)
    try:
        _write_reference(staging / "reference", images, prompts, ids, mask, text_out, parity["engine"])
        (staging / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_files(staging, bundle_dir, ["reference", PARITY_FILE])
    return parity


def _write_reference(ref: Path, images, prompts, ids, mask, text_out, engine: str) -> None:
    ref.mkdir()
    lines = [f"engine = {value(engine)}\n"]
    for img_id, frame, pv, out in images:
        d = ref / img_id
        (d / "fp32").mkdir(parents=True)
        (d / "int8").mkdir()
        Image.fromarray(frame, "RGB").save(ref / f"{img_id}.png")
        np.save(d / "pixel_values.npy", np.ascontiguousarray(pv, dtype="<f4"))
        lines.append(f"\n[[images]]\nid = {value(img_id)}\nfile = {value(img_id + '.png')}\n"
                     f"pixel_values = {value(f'{img_id}/pixel_values.npy')}\n")
        for v in ("fp32", "int8"):
            files = {}
            for name in ("patch_tokens", "image_embeds", "latents"):
                np.save(d / v / f"{name}.npy", np.ascontiguousarray(out[v][name], dtype="<f4"))
                files[name] = f"{img_id}/{v}/{name}.npy"
            lines.append(f"outputs.{v} = {value(files)}\n")
    t = ref / "text"
    (t / "fp32").mkdir(parents=True)
    (t / "int8").mkdir()
    np.save(t / "input_ids.npy", np.ascontiguousarray(ids, dtype="<i8"))
    np.save(t / "attention_mask.npy", np.ascontiguousarray(mask, dtype="<i8"))
    lines.append(f"\n[text]\nprompts = {value(prompts)}\ninput_ids = \"text/input_ids.npy\"\n"
                 "attention_mask = \"text/attention_mask.npy\"\n")
    for v in ("fp32", "int8"):
        np.save(t / v / "text_embeds.npy", np.ascontiguousarray(np.concatenate(text_out[v], axis=0), dtype="<f4"))
        lines.append(f"outputs.{v} = {value({'text_embeds': f'text/{v}/text_embeds.npy'})}\n")
    (ref / "index.toml").write_text("".join(lines))
