"""`ocellus-tools validate`: parity of every ONNX file and the reference data the Rust tests compare against.

* fp32 files against their reference on the same inputs, through onnxruntime: the PyTorch modules rebuilt from
  source.json (exported bundles), or, for an imported vision encoder, the original ONNX file run in onnxruntime
  (``--reference onnxruntime``: the tokens tensor and the pooled embedding the import chose). Every int8 file
  that exists (quantize.json's, or the `<role>.int8.onnx` files without it; tract's QOperator form and
  onnxruntime's) against the fp32 file on the same input. Per output, the smallest cosine similarity over the
  reference inputs and the largest absolute difference; below a threshold the command fails and writes nothing.
  The resampler files get the fp32 vision file's patch tokens, so each figure measures one file.
* tract (the runtime's engine, through its Python bindings): every file meant for tract against onnxruntime on the
  same file and input, and its int8 files against fp32.
* reference/ (docs/manifest.md): images (some at the model input size, some larger with another aspect ratio,
  more for letterbox), their prepared pixel_values, and what onnxruntime computes for each chain of files the
  runtime can run (``fp32``; ``int8``: the int8 files for tract; ``int8-ort``: those for onnxruntime, when they
  are other files) on them, the resampler on the same chain's patch tokens; prompts with their ids, mask and
  text embeddings when the bundle has a text encoder.
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
from .files import (PARITY_FILE, bundle_roles, commit_files, int8_files, onnx_name, read_source, require_files,
                    select_file, staging_dir)
from .images import reference_prompts, scene_frame
from .prepare import prepare_image
from .quantize import _session, text_feeds
from .tomlw import value


def sha256(path: Path) -> str:
    from .manifest import sha256 as _sha

    return _sha(path)


COS_FP32 = 0.99999
COS_INT8 = 0.999
COS_ENGINES = 0.9999  # tract against onnxruntime on the same file and input (tests/parity.rs uses the same)
OUTPUTS = {"vision": ["patch_tokens", "image_embeds"], "resampler": ["latents"], "text": ["text_embeds"]}
#: chain key in reference/index.toml -> (variant, engine whose files it runs)
CHAINS = {"fp32": ("fp32", None), "int8": ("int8", "tract"), "int8-ort": ("int8", "onnxruntime")}


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


def reference_sizes(height: int, width: int, letterbox: bool = False) -> list[tuple[str, int, int]]:
    """(id, width, height): two at the model input size, two larger with other aspect ratios (about 5:3 and
    5:8), one pixel odd so that a shortest-edge centre crop's box edges fall on half pixels. With letterbox, two
    more: twice the width and an odd height whose scaled height is a tie (x.5, rounded up; the odd pad row goes
    below), and one smaller than the model (scaled up, an odd margin)."""
    sizes = [("img0", width, height), ("img1", width, height),
             ("img2", round(width * 2.5) + 1, round(height * 1.5)),
             ("img3", round(width * 1.25), round(height * 2.0) + 1)]
    if letterbox:
        sizes += [("img4", 2 * width, (height * 3 // 2) | 1), ("img5", width * 3 // 4 + 1, height // 2 + 1)]
    return sizes


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


class References:
    """What each fp32 file is compared with: vision(pv) -> (patch_tokens, image_embeds), resampler(tokens) ->
    latents, text(ids, mask) -> text_embeds (None without a text encoder), and the names parity records."""

    def __init__(self, rec: dict, reference: str | None, original: Path | None):
        from .bundle import Preprocess
        from .resampler_io import build_from_spec
        from .sources import build_bundle

        kind = rec["spec"].get("kind")
        imported = kind == "import"
        reference = reference or ("onnxruntime" if imported else "pytorch")
        if reference == "onnxruntime" and not imported:
            raise ToolError("--reference onnxruntime compares an imported vision file with the ONNX file it was "
                            "imported from; this bundle was exported from a PyTorch model: drop --reference")
        if reference == "pytorch" and imported:
            raise ToolError(f"this bundle's vision file was imported from {rec['spec']['file']}, which has no PyTorch "
                            "model: use --reference onnxruntime (the default for imported bundles)")
        if original is not None and not imported:
            raise ToolError("--original applies to imported bundles only: drop it")
        self.text = None
        self.tokenizer = None
        res_spec = (rec.get("resampler") or {}).get("spec")
        if imported:
            from .importer import open_original, original_outputs

            orig = open_original(rec["spec"], original)
            self.vision = lambda pv: original_outputs(orig, pv, rec["spec"])
            self.vision_reference = f"onnxruntime:{rec['spec']['file']}"
            self.preprocess = Preprocess.from_record(rec["preprocess"])
            resampler = None
        else:
            bundle = build_bundle(rec["spec"], rec["name"], rebuild=True)
            _check_source_matches(rec, bundle)
            self.vision = lambda pv: _torch(bundle.vision, pv)
            self.vision_reference = "pytorch"
            self.preprocess = bundle.preprocess
            resampler = bundle.resampler
            if rec.get("text"):
                self.text = lambda ids, mask: _torch(bundle.text, ids, mask)
                self.tokenizer = bundle.tokenizer
        if res_spec is not None:
            resampler = build_from_spec(res_spec, rebuild=True)
        self.resampler = lambda tokens: _torch(resampler, tokens)


def _load_sessions(bundle_dir: Path, names: list[str]) -> dict:
    sess = {}
    for n in names:
        try:
            sess[n] = _session(bundle_dir / n)
        except Exception as e:
            raise ToolError(f"onnxruntime cannot load {bundle_dir / n}: {str(e).splitlines()[0]}: re-run "
                            f"`ocellus-tools {'export' if 'fp32' in n else 'quantize'}`") from e
    return sess


def chains(roles: list[str], int8: list[dict]) -> dict[str, dict[str, str]]:
    """Chain key -> role -> file: the files the runtime runs together for each variant and engine. An int8 chain
    exists when both vision and resampler have an int8 file for its engine; ``int8-ort`` only when those are other
    files than ``int8``'s."""
    out = {"fp32": {r: onnx_name(r, "fp32") for r in ("vision", "resampler")}}
    for key, (_, engine) in CHAINS.items():
        if engine is None:
            continue
        picked = {r: f["path"] for r in ("vision", "resampler") for f in [select_file(int8, r, engine)] if f}
        if len(picked) == 2 and picked not in out.values():
            out[key] = picked
    return out


def tract_check(bundle_dir: Path, files: list[str], int8: dict[str, dict], images, ort_out, text_feeds_by_file,
                text_out) -> dict | None:
    """Runs the files meant for tract in tract (the runtime's engine, through its Python bindings) on the
    reference inputs. Figures per file and output: tract against onnxruntime on the same file and input
    ("onnxruntime"), and for int8 files also tract int8 against onnxruntime fp32 ("fp32"). The resampler files
    read the fp32 vision file's patch tokens. None when the bindings are not installed."""
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

    result = {}
    for name in files:
        role = int8[name]["role"] if name in int8 else name.split(".")[0]
        fp32 = onnx_name(role, "fp32")
        same, to_fp32 = Figures(), Figures()
        model = runnable(name)
        if role == "vision":
            for _, _, pv, _ in images:
                got = [t.to_numpy() for t in model.run([pv])]
                for o, g in zip(OUTPUTS["vision"], got):
                    same.add(o, g, ort_out[name][id(pv)][o])
                    to_fp32.add(o, g, ort_out[fp32][id(pv)][o])
        elif role == "resampler":
            for _, _, pv, _ in images:
                tokens = ort_out[onnx_name("vision", "fp32")][id(pv)]["patch_tokens"]
                got = model.run([tokens])[0].to_numpy()
                same.add("latents", got, ort_out[name][id(pv)]["latents"])
                to_fp32.add("latents", got, ort_out[fp32][id(pv)]["latents"])
        else:
            for k, feed in enumerate(text_feeds_by_file[name]):
                got = model.run(list(feed.values()))[0].to_numpy()
                same.add("text_embeds", got, text_out[name][k])
                to_fp32.add("text_embeds", got, text_out[fp32][k])
        result[name] = {"onnxruntime": same.outputs()}
        if name in int8:
            result[name]["fp32"] = to_fp32.outputs()
    return {"version": getattr(tract, "version", lambda: "?")(), "files": result}


def validate_bundle(bundle_dir: Path, *, seed: int = 1234, cos_fp32: float = COS_FP32,
                    cos_int8: float = COS_INT8, use_tract: bool = True, reference: str | None = None,
                    original: Path | None = None) -> dict:
    """Measures parity, fails below the thresholds, then writes reference/ and parity.json atomically."""
    import onnxruntime as ort

    bundle_dir = Path(bundle_dir)
    rec = read_source(bundle_dir)
    roles = bundle_roles(bundle_dir, rec)
    fp32 = [onnx_name(r, "fp32") for r in roles]
    require_files(bundle_dir, fp32 + (["tokenizer.json"] if "text" in roles else []),
                  "import" if rec["spec"].get("kind") == "import" else "export --out")
    int8 = {f["path"]: f for f in int8_files(bundle_dir, roles)}
    names = fp32 + list(int8)
    refs = References(rec, reference, original)
    pre = refs.preprocess
    sess = _load_sessions(bundle_dir, names)
    by_role = {r: [n for n in names if (int8[n]["role"] if n in int8 else n.split(".")[0]) == r] for r in roles}
    links = chains(roles, list(int8.values()))

    figs = {n: Figures() for n in names}
    chain_figs = {k: Figures() for k in links if k != "fp32"}
    ort_out = {n: {} for n in names}  # file -> id(pixel_values) -> output -> array
    rng = np.random.default_rng(seed)
    images = []
    for img_id, w, h in reference_sizes(pre.height, pre.width, pre.resize == "letterbox"):
        frame = scene_frame(rng, w, h)
        pv = prepare_image(frame, pre)
        pt_ref, ie_ref = refs.vision(pv)
        for n in by_role["vision"]:
            pt, ie = sess[n].run(["patch_tokens", "image_embeds"], {"pixel_values": pv})
            ort_out[n][id(pv)] = {"patch_tokens": pt, "image_embeds": ie}
        vf = ort_out[onnx_name("vision", "fp32")][id(pv)]
        figs[onnx_name("vision", "fp32")].add("patch_tokens", vf["patch_tokens"], pt_ref)
        figs[onnx_name("vision", "fp32")].add("image_embeds", vf["image_embeds"], ie_ref)
        for n in by_role["vision"][1:]:
            for o in OUTPUTS["vision"]:
                figs[n].add(o, ort_out[n][id(pv)][o], vf[o])
        pt_f = vf["patch_tokens"]
        for n in by_role["resampler"]:
            ort_out[n][id(pv)] = {"latents": sess[n].run(["latents"], {"patch_tokens": pt_f})[0]}
        lat_f = ort_out[onnx_name("resampler", "fp32")][id(pv)]["latents"]
        figs[onnx_name("resampler", "fp32")].add("latents", lat_f, refs.resampler(pt_f))
        for n in by_role["resampler"][1:]:
            figs[n].add("latents", ort_out[n][id(pv)]["latents"], lat_f)
        out = {}
        for key, files in links.items():
            v = ort_out[files["vision"]][id(pv)]
            lat = sess[files["resampler"]].run(["latents"], {"patch_tokens": v["patch_tokens"]})[0]
            out[key] = {"patch_tokens": v["patch_tokens"], "image_embeds": v["image_embeds"], "latents": lat}
            if key != "fp32":
                chain_figs[key].add("latents", lat, lat_f)
                chain_figs[key].add("image_embeds", v["image_embeds"], vf["image_embeds"])
        images.append((img_id, frame, pv, out))

    prompts, ids, mask, text_out, feeds_by_file, warnings_ = [], None, None, {}, {}, []
    if "text" in roles:
        from .prompts import unknown_prompts, warning

        prompts = reference_prompts()
        ids, mask = encode(refs.tokenizer, prompts)
        warnings_ += [warning(p) for p in unknown_prompts(refs.tokenizer, prompts)]
        for n in by_role["text"]:
            feeds_by_file[n] = text_feeds(sess[n], ids, mask)
            text_out[n] = [sess[n].run(["text_embeds"], feed)[0] for feed in feeds_by_file[n]]
        tf = onnx_name("text", "fp32")
        for k in range(len(prompts)):
            figs[tf].add("text_embeds", text_out[tf][k], refs.text(ids[k:k + 1], mask[k:k + 1]))
            for n in by_role["text"][1:]:
                figs[n].add("text_embeds", text_out[n][k], text_out[tf][k])

    failures = []
    for n in names:
        threshold, against = (cos_fp32, refs.vision_reference if n.startswith("vision.") else "pytorch") \
            if n in fp32 else (cos_int8, "fp32")
        against = {"pytorch": "PyTorch"}.get(against, against)
        for o in figs[n].outputs():
            if not (o["cosine"] >= threshold):
                failures.append(f"{n} output {o['name']}: cosine {o['cosine']:.6f} < {threshold} against {against} "
                                f"(max abs diff {o['max_abs']:.3g})")
    tract_files = [n for n in names if n in fp32 or not int8[n]["engines"] or "tract" in int8[n]["engines"]]
    tract_figs = (tract_check(bundle_dir, tract_files, int8, images, ort_out, feeds_by_file, text_out)
                  if use_tract else None)
    if tract_figs is not None:
        for n, f in tract_figs["files"].items():
            for o in f["onnxruntime"]:
                if o["cosine"] >= COS_ENGINES:
                    continue
                msg = (f"{n} output {o['name']} in tract: cosine {o['cosine']:.6f} < {COS_ENGINES} against "
                       f"onnxruntime on the same file (max abs diff {o['max_abs']:.3g})")
                # fp32 must agree; int8 engines may round ties differently and drift apart through the layers
                # (what matters there is the figure against fp32, gated below)
                if n in fp32:
                    failures.append(msg)
                else:
                    warnings_.append(f"{msg}; tests/parity.rs holds committed bundles to {COS_ENGINES}")
            for o in f.get("fp32", []):
                if not (o["cosine"] >= cos_int8):
                    failures.append(f"{n} output {o['name']} in tract: cosine {o['cosine']:.6f} < {cos_int8} "
                                    f"against fp32 (max abs diff {o['max_abs']:.3g})")
    if failures:
        against_ref = [f for f in failures if f.split(" ")[0] in fp32 and " in tract:" not in f]
        if against_ref:
            fix = ("the fp32 file does not compute what its reference computes: re-run `ocellus-tools "
                   + ("import`" if " against onnxruntime:" in against_ref[0] else "export`"))
        elif all("against onnxruntime" in f for f in failures):
            fix = ("tract computes something else than onnxruntime on this file: keep to the operators and the int8 "
                   "format of ../shared/notes/tract-quantization.md")
        else:
            fix = ("int8 is too far from fp32: re-run `ocellus-tools quantize` with more or more typical calibration "
                   "images, or a higher --target-cosine")
        raise ToolError(f"parity check failed for {bundle_dir}: " + "; ".join(failures) + f": {fix}")

    for w in warnings_:
        print(f"warning: {w}", file=sys.stderr)
    parity = {"engine": f"onnxruntime {ort.__version__}", "thresholds": {"fp32": cos_fp32, "int8": cos_int8},
              "seed": seed, "images": len(images), "prompts": len(prompts), "files": {},
              "chains": {k: {"reference": "fp32", "files": links[k], "outputs": f.outputs()}
                         for k, f in chain_figs.items()},
              "tract": tract_figs}
    for n in names:
        if n in fp32:
            ref = refs.vision_reference if n.startswith("vision.") else "pytorch"
        else:
            ref = "fp32"
        parity["files"][n] = {"reference": ref, "sha256": sha256(bundle_dir / n), "outputs": figs[n].outputs()}

    staging = staging_dir(bundle_dir)
    try:
        text = None
        if "text" in roles:
            text = {"prompts": prompts, "ids": ids, "mask": mask,
                    "outputs": {k: text_out[files["text"]] for k, files in
                                _text_chains(roles, list(int8.values())).items()}}
        _write_reference(staging / "reference", images, text, parity["engine"])
        (staging / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_files(staging, bundle_dir, ["reference", PARITY_FILE])
    return parity


def _text_chains(roles, int8) -> dict[str, dict[str, str]]:
    """Chain key -> {"text": file} for the text encoder (its own selection: it runs on its own)."""
    out = {"fp32": {"text": onnx_name("text", "fp32")}}
    for key, (_, engine) in CHAINS.items():
        f = select_file(int8, "text", engine) if engine else None
        if f is not None and {"text": f["path"]} not in out.values():
            out[key] = {"text": f["path"]}
    return out


def _write_reference(ref: Path, images, text: dict | None, engine: str) -> None:
    ref.mkdir()
    lines = [f"engine = {value(engine)}\n"]
    for img_id, frame, pv, out in images:
        d = ref / img_id
        d.mkdir()
        Image.fromarray(frame, "RGB").save(ref / f"{img_id}.png")
        np.save(d / "pixel_values.npy", np.ascontiguousarray(pv, dtype="<f4"))
        lines.append(f"\n[[images]]\nid = {value(img_id)}\nfile = {value(img_id + '.png')}\n"
                     f"pixel_values = {value(f'{img_id}/pixel_values.npy')}\n")
        for key, arrays in out.items():
            (d / key).mkdir()
            files = {}
            for name in ("patch_tokens", "image_embeds", "latents"):
                np.save(d / key / f"{name}.npy", np.ascontiguousarray(arrays[name], dtype="<f4"))
                files[name] = f"{img_id}/{key}/{name}.npy"
            lines.append(f"outputs.{key} = {value(files)}\n")
    if text is not None:
        t = ref / "text"
        t.mkdir()
        np.save(t / "input_ids.npy", np.ascontiguousarray(text["ids"], dtype="<i8"))
        np.save(t / "attention_mask.npy", np.ascontiguousarray(text["mask"], dtype="<i8"))
        lines.append(f"\n[text]\nprompts = {value(text['prompts'])}\ninput_ids = \"text/input_ids.npy\"\n"
                     "attention_mask = \"text/attention_mask.npy\"\n")
        for key, embeds in text["outputs"].items():
            (t / key).mkdir()
            np.save(t / key / "text_embeds.npy", np.ascontiguousarray(np.concatenate(embeds, axis=0), dtype="<f4"))
            lines.append(f"outputs.{key} = {value({'text_embeds': f'text/{key}/text_embeds.npy'})}\n")
    (ref / "index.toml").write_text("".join(lines))
