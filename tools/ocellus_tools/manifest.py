"""`ocellus-tools manifest`: writes models/<name>/manifest.toml (docs/manifest.md, format 2).

Names, shapes and dtypes come from the ONNX files themselves, sizes and sha256 from their bytes, the int8 files'
format and engines from quantize.json (written by quantize; without it the `<role>.int8.onnx` files are tract's
QOperator files), parity from parity.json (written by validate), [prototypes] from prototypes.json (written by
prototypes), the rest from source.json (written by export or import); [evaluation] from evaluation.json when the
demo trainer wrote one. Only the fp32 vision and resampler files are required: a bundle without a text encoder,
int8 files, parity figures or reference data is valid, and the manifest lists what exists.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from . import __version__
from .errors import ToolError
from .files import (EVALUATION_FILE, PARITY_FILE, PROTOTYPES_RECORD, bundle_roles, int8_files, onnx_name, read_json,
                    read_source, require_files, select_file, write_text_atomic)
from .tomlw import assignments, value

FORMAT = 2


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_specs(values) -> list[dict]:
    specs = []
    for vi in values:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if any(d is None or d <= 0 for d in dims):
            raise ToolError(f"tensor {vi.name} has a non-static shape; re-run `ocellus-tools export`")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        specs.append({"name": vi.name, "shape": dims, "dtype": dtype})
    return specs


def file_entry(bundle: Path, role: str, variant: str, path: str, parity: dict | None) -> dict:
    path = bundle / path
    model = onnx.load(str(path), load_external_data=False)
    entry = {"role": role, "variant": variant, "path": path.name, "size": path.stat().st_size, "sha256": sha256(path),
             "inputs": tensor_specs(model.graph.input), "outputs": tensor_specs(model.graph.output)}
    if parity is not None:
        entry["parity"] = {"reference": parity["reference"],
                           "outputs": [{"name": o["name"], "cosine": float(o["cosine"]),
                                        "max_abs": float(o["max_abs"])} for o in parity["outputs"]]}
    return entry


def _output(entry: dict, name: str) -> list[int]:
    spec = next((o for o in entry["outputs"] if o["name"] == name), None)
    if spec is None:
        raise ToolError(f"{entry['path']} has no output {name!r}: re-export or re-import the bundle")
    return spec["shape"]


def _check_consistent(entries: list[dict], rec: dict) -> None:
    """Every file set the runtime can run (fp32; the int8 files of each engine) fits together, and every
    embedding has width embed_dim."""
    fp32 = {e["role"]: e for e in entries if e["variant"] == "fp32"}
    int8 = [e for e in entries if e["variant"] == "int8"]
    sets = [("fp32", fp32)]
    for engine in ("tract", "onnxruntime"):
        picked = {r: select_file(int8, r, engine) for r in ("vision", "resampler")}
        if all(picked.values()):
            sets.append((f"int8 ({engine})", picked))
    for what, files in sets:
        vis, res = files["vision"], files["resampler"]
        pt = _output(vis, "patch_tokens")
        if res["inputs"][0]["shape"] != pt:
            raise ToolError(f"{res['path']} reads {res['inputs'][0]['shape']} but {vis['path']} gives patch_tokens "
                            f"{pt} ({what} files): re-export the bundle's resampler (export --resampler-only)")
    for e in entries:
        for name in ("image_embeds", "text_embeds"):
            shape = next((o["shape"] for o in e["outputs"] if o["name"] == name), None)
            if shape is not None and shape[-1] != rec["embed_dim"]:
                raise ToolError(f"{e['path']} gives {name} {shape}, not of width embed_dim {rec['embed_dim']}: "
                                "re-export the bundle")


def _prototypes(bundle: Path, rec: dict) -> dict | None:
    """The [prototypes] table from prototypes.json (checked against the array and the vision file), or None."""
    import numpy as np

    path = bundle / PROTOTYPES_RECORD
    if not path.is_file():
        return None
    fix = f"run `ocellus-tools prototypes {bundle} DIR` again"
    p = read_json(path, fix)
    try:
        file, labels, images, variant = p["file"], list(p["labels"]), [int(n) for n in p["images"]], p["variant"]
        vision_sha = p["vision_sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise ToolError(f"{path} lacks {e}: {fix}") from e
    array = bundle / file
    if not array.is_file():
        raise ToolError(f"{path} names {file}, which does not exist: {fix}")
    vision = bundle / onnx_name("vision", variant)
    if not vision.is_file() or sha256(vision) != vision_sha:
        raise ToolError(f"the prototypes were computed with another {vision.name} than the bundle's: {fix}")
    data = np.load(array)
    if data.dtype != np.float32 or data.shape != (len(labels), rec["embed_dim"]) or len(images) != len(labels):
        raise ToolError(f"{array} holds {data.dtype} {list(data.shape)} for {len(labels)} labels, not float32 "
                        f"[{len(labels)}, {rec['embed_dim']}]: {fix}")
    return {"file": file, "labels": labels, "size": array.stat().st_size, "sha256": sha256(array), "images": images,
            "variant": variant, "scores": p.get("scores")}


def build_manifest(bundle: Path, evaluation: Path | None = None) -> str:
    bundle = Path(bundle)
    rec = read_source(bundle)
    roles = bundle_roles(bundle, rec)
    step = "import" if rec["spec"].get("kind") == "import" else "export --out"
    require_files(bundle, [onnx_name(r, "fp32") for r in roles] + (["tokenizer.json"] if "text" in roles else []),
                  step)
    files = [(r, "fp32", onnx_name(r, "fp32"), None) for r in roles]
    files += [(f["role"], "int8", f["path"], f) for f in int8_files(bundle, roles)]
    parity = None
    if (bundle / PARITY_FILE).is_file():
        parity = read_json(bundle / PARITY_FILE, f"run `ocellus-tools validate {bundle}`")
    entries = []
    for role, variant, name, q in files:
        figures = None
        if parity is not None:
            figures = parity.get("files", {}).get(name)
            if figures is None:
                raise ToolError(f"{bundle / PARITY_FILE} has no figures for {name}: run `ocellus-tools validate "
                                f"{bundle}` again")
        entry = file_entry(bundle, role, variant, name, figures)
        if figures is not None and figures.get("sha256") != entry["sha256"]:
            raise ToolError(f"{name} changed after `ocellus-tools validate` measured it: run "
                            f"`ocellus-tools validate {bundle}` again")
        if q is not None:
            if q.get("engines"):
                entry["engines"] = list(q["engines"])
            if q.get("quant"):
                entry["quant"] = q["quant"]
        entries.append(entry)
    _check_consistent(entries, rec)
    res_out = next(e for e in entries if e["role"] == "resampler")["outputs"][0]["shape"]
    protos = _prototypes(bundle, rec)
    scores = rec.get("scores") or (protos or {}).get("scores")
    if scores is None and ("text" in roles or protos is not None):
        raise ToolError(f"{bundle} has prompts or prototypes to score but no [scores]: re-run `ocellus-tools "
                        "prototypes` (it records --logit-scale for bundles without a text encoder)")

    doc = [
        "# Written by `ocellus-tools manifest`; the runtime verifies every file against it (docs/manifest.md).\n",
        assignments({"format": FORMAT, "name": rec["name"], "tools_version": __version__, "source": rec["source"],
                     "embed_dim": rec["embed_dim"]}),
        "\n[preprocess]\n", assignments(rec["preprocess"]),
    ]
    if "text" in roles:
        text = rec["text"]
        doc += ["\n[text]\n", assignments({"tokenizer": text["tokenizer"], "context_length": text["context_length"],
                                            "pad_id": text["pad_id"]})]
    if scores is not None:
        doc += ["\n[scores]\n", assignments({"logit_scale": float(scores["logit_scale"]),
                                              "logit_bias": float(scores.get("logit_bias", 0.0))})]
    if protos is not None:
        doc += ["\n[prototypes]\n", assignments({k: protos[k] for k in ("file", "labels", "size", "sha256", "images",
                                                                        "variant")})]
    doc += ["\n[resampler]\n", assignments({"kind": rec["resampler"]["kind"], "num_latents": res_out[1],
                                             "latent_dim": res_out[2]})]
    for e in entries:
        doc.append("\n[[files]]\n")
        doc.append(assignments({k: e[k] for k in ("role", "variant", "path", "size", "sha256", "engines", "quant")
                                if k in e}))
        doc.append(f"inputs = {value(e['inputs'])}\n")
        doc.append("outputs = [\n" + "".join(f"  {value(o)},\n" for o in e["outputs"]) + "]\n")
        if "parity" in e:
            p = e["parity"]
            doc.append(f"parity = {{ reference = {value(p['reference'])}, outputs = [\n"
                       + "".join(f"  {value(o)},\n" for o in p["outputs"]) + "] }\n")
    ev_path = evaluation if evaluation is not None else bundle / EVALUATION_FILE
    if evaluation is not None or ev_path.is_file():
        doc.append(_evaluation(read_json(ev_path, "pass the evaluation.json `ocellus-tools train-demo` wrote")))
    return "".join(doc)


def _evaluation(ev: dict) -> str:
    keys = ("top1", "r1", "r5", "r10", "median_rank")
    try:
        out = ["\n[evaluation]\n", assignments({"scenes": int(ev["scenes"]), "seed": int(ev["seed"])})]
        for variant in ("fp32", "int8"):
            if variant in ev:
                out.append(f"{variant} = {value({k: float(ev[variant][k]) for k in keys})}\n")
    except (KeyError, TypeError, ValueError) as e:
        raise ToolError(f"evaluation figures lack {e}: expected scenes, seed and fp32/int8 tables with "
                        f"{', '.join(keys)}") from e
    return "".join(out)


def write_manifest(bundle: Path, evaluation: Path | None = None) -> Path:
    text = build_manifest(bundle, evaluation)
    path = Path(bundle) / "manifest.toml"
    write_text_atomic(path, text)
    return path
