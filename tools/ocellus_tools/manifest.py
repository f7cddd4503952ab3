"""`ocellus-tools manifest`: writes models/<name>/manifest.toml (docs/manifest.md, format 1).

Names, shapes and dtypes come from the ONNX files themselves, sizes and sha256 from their bytes, parity from
parity.json (written by validate), the rest from source.json (written by export); [evaluation] from
evaluation.json when the demo trainer wrote one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from . import __version__
from .errors import ToolError
from .files import (EVALUATION_FILE, PARITY_FILE, ROLES, VARIANTS, onnx_name, read_json, read_source, require_files,
                    write_text_atomic)
from .tomlw import assignments, value

FORMAT = 1


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


def file_entry(bundle: Path, role: str, variant: str, parity: dict | None) -> dict:
    path = bundle / onnx_name(role, variant)
    model = onnx.load(str(path), load_external_data=False)
    entry = {"role": role, "variant": variant, "path": path.name, "size": path.stat().st_size, "sha256": sha256(path),
             "inputs": tensor_specs(model.graph.input), "outputs": tensor_specs(model.graph.output)}
    if parity is not None:
        entry["parity"] = {"reference": parity["reference"],
                           "outputs": [{"name": o["name"], "cosine": float(o["cosine"]),
                                        "max_abs": float(o["max_abs"])} for o in parity["outputs"]]}
    return entry


def _check_consistent(entries: list[dict], rec: dict) -> None:
    by = {(e["role"], e["variant"]): e for e in entries}
    for v in VARIANTS:
        vis, res, txt = by[("vision", v)], by[("resampler", v)], by[("text", v)]
        pt = next(o for o in vis["outputs"] if o["name"] == "patch_tokens")
        if res["inputs"][0]["shape"] != pt["shape"]:
            raise ToolError(f"resampler.{v}.onnx reads {res['inputs'][0]['shape']} but vision.{v}.onnx gives "
                            f"patch_tokens {pt['shape']}: re-export the bundle")
        ie = next(o for o in vis["outputs"] if o["name"] == "image_embeds")["shape"]
        te = txt["outputs"][0]["shape"]
        if ie != te or ie[-1] != rec["embed_dim"]:
            raise ToolError(f"image_embeds {ie} and text_embeds {te} of the {v} files disagree with embed_dim "
                            f"{rec['embed_dim']}: re-export the bundle")


def build_manifest(bundle: Path, evaluation: Path | None = None) -> str:
    bundle = Path(bundle)
    rec = read_source(bundle)
    require_files(bundle, [onnx_name(r, "fp32") for r in ROLES] + ["tokenizer.json"], "export --out")
    require_files(bundle, [onnx_name(r, "int8") for r in ROLES], "quantize")
    require_files(bundle, [PARITY_FILE, "reference/index.toml"], "validate")
    parity = read_json(bundle / PARITY_FILE, f"run `ocellus-tools validate {bundle}`")
    entries = []
    for v in VARIANTS:
        for r in ROLES:
            name = onnx_name(r, v)
            if name not in parity.get("files", {}):
                raise ToolError(f"{bundle / PARITY_FILE} has no figures for {name}: run `ocellus-tools validate {bundle}`")
            entry = file_entry(bundle, r, v, parity["files"][name])
            if parity["files"][name].get("sha256") != entry["sha256"]:
                raise ToolError(f"{name} changed after `ocellus-tools validate` measured it: run "
                                f"`ocellus-tools validate {bundle}` again")
            entries.append(entry)
    _check_consistent(entries, rec)
    res_out = next(e for e in entries if e["role"] == "resampler")["outputs"][0]["shape"]

    text = rec["text"]
    doc = [
        "# Written by `ocellus-tools manifest`; the runtime verifies every file against it (docs/manifest.md).\n",
        assignments({"format": FORMAT, "name": rec["name"], "tools_version": __version__, "source": rec["source"],
                     "embed_dim": rec["embed_dim"]}),
        "\n[preprocess]\n", assignments(rec["preprocess"]),
        "\n[text]\n", assignments({"tokenizer": text["tokenizer"], "context_length": text["context_length"],
                                  "pad_id": text["pad_id"]}),
        "\n[scores]\n", assignments(rec["scores"]),
        "\n[resampler]\n", assignments({"kind": rec["resampler"]["kind"], "num_latents": res_out[1],
                                       "latent_dim": res_out[2]}),
    ]
    for e in entries:
        doc.append("\n[[files]]\n")
        doc.append(assignments({k: e[k] for k in ("role", "variant", "path", "size", "sha256")}))
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
