"""`ocellus-tools export`: a Bundle -> vision/resampler/text fp32 ONNX files (opset 17, static shapes, batch 1,
the tensor names of docs/manifest.md), tokenizer.json and source.json."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from . import __version__
from .bundle import Bundle
from .errors import ToolError
from .files import (PROTOTYPES_FILE, PROTOTYPES_RECORD, SOURCE_FILE, commit_files, derived_files, ensure_writable_dir,
                    onnx_name, read_source, remove_files, staging_dir)

OPSET = 17
DERIVED = derived_files() + [PROTOTYPES_FILE, PROTOTYPES_RECORD]


class _TextIdsOnly(nn.Module):
    """Exports a text encoder that ignores the attention mask with input_ids as its only input."""

    def __init__(self, text: nn.Module):
        super().__init__()
        self.text = text

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids, torch.ones_like(input_ids))


def text_uses_mask(text: nn.Module) -> bool:
    return bool(getattr(text, "uses_attention_mask", True))


def encode(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [K, T] with the tokenizer's own padding and truncation."""
    encs = tokenizer.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in encs], dtype=np.int64)
    mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
    return ids, mask


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, do_constant_folding=True, dynamic_axes=None)
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ToolError(f"exported {path.name} fails the ONNX checker: {e}") from e
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != inputs or got_out != outputs:
        raise ToolError(f"exported {path.name} has inputs {got_in} and outputs {got_out}, expected {inputs} and "
                        f"{outputs}: the module does not use all its inputs")
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims or any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            raise ToolError(f"exported {path.name}: {vi.name} has a non-static shape: the module must not "
                            "depend on dynamic sizes")


def export_onnx(bundle: Bundle, out: Path, text: bool = True) -> list[str]:
    """Writes the three fp32 files and tokenizer.json into `out` (without `text`: vision and resampler only);
    returns their names."""
    torch.manual_seed(0)
    pre = bundle.preprocess
    pixel_values = torch.randn(1, 3, pre.height, pre.width)
    with torch.no_grad():
        patch_tokens, image_embeds = bundle.vision(pixel_values)
        latents = bundle.resampler(patch_tokens)
    if patch_tokens.dim() != 3 or image_embeds.shape != (1, bundle.embed_dim) or latents.dim() != 3:
        raise ToolError(f"bundle {bundle.name}: vision gives {tuple(patch_tokens.shape)} and "
                        f"{tuple(image_embeds.shape)}, resampler {tuple(latents.shape)}; expected [1,N,D], "
                        f"[1,{bundle.embed_dim}] and [1,L,Dl]")
    _export(bundle.vision, (pixel_values,), out / onnx_name("vision", "fp32"), ["pixel_values"],
            ["patch_tokens", "image_embeds"])
    _export(bundle.resampler, (patch_tokens,), out / onnx_name("resampler", "fp32"), ["patch_tokens"], ["latents"])
    if not text:
        return [onnx_name(r, "fp32") for r in ("vision", "resampler")]

    ids, mask = encode(bundle.tokenizer, ["a photo of a red circle"])
    if ids.shape != (1, bundle.context_length):
        raise ToolError(f"bundle {bundle.name}: the tokenizer yields {ids.shape[1]} ids, not context_length "
                        f"{bundle.context_length}: configure its padding and truncation")
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        text_embeds = bundle.text(ids_t, mask_t)
    if tuple(text_embeds.shape) != (1, bundle.embed_dim):
        raise ToolError(f"bundle {bundle.name}: text gives {tuple(text_embeds.shape)}, expected [1,{bundle.embed_dim}]")
    if text_uses_mask(bundle.text):
        _export(bundle.text, (ids_t, mask_t), out / onnx_name("text", "fp32"), ["input_ids", "attention_mask"],
                ["text_embeds"])
    else:
        _export(_TextIdsOnly(bundle.text), (ids_t,), out / onnx_name("text", "fp32"), ["input_ids"], ["text_embeds"])
    bundle.tokenizer.save(str(out / "tokenizer.json"))
    return [onnx_name(r, "fp32") for r in ("vision", "resampler", "text")] + ["tokenizer.json"]


def source_record(bundle: Bundle, spec: dict, text: bool = True) -> dict:
    p = bundle.preprocess
    return {
        "tools_version": __version__,
        "name": bundle.name,
        "source": bundle.source,
        "spec": spec,
        "embed_dim": bundle.embed_dim,
        "preprocess": p.record(),
        "text": {"tokenizer": "tokenizer.json", "context_length": bundle.context_length, "pad_id": bundle.pad_id,
                 "uses_attention_mask": text_uses_mask(bundle.text)} if text else None,
        "scores": {"logit_scale": float(bundle.logit_scale), "logit_bias": float(bundle.logit_bias)},
    }


def export_bundle(bundle: Bundle, out: Path, spec: dict, text: bool = True) -> list[str]:
    """Exports `bundle` into directory `out` (created if needed). All files are written to a staging directory
    first and renamed into place only when every export and check passed; stale derived files (int8, parity,
    reference, manifest) of an earlier export are removed so they cannot be mistaken for this one's."""
    out = ensure_writable_dir(Path(out))
    staging = staging_dir(out)
    try:
        names = export_onnx(bundle, staging, text)
        res = onnx.load(str(staging / onnx_name("resampler", "fp32")))
        dims = [d.dim_value for d in res.graph.output[0].type.tensor_type.shape.dim]
        record = source_record(bundle, spec, text)
        record["resampler"] = {"kind": bundle.resampler_kind, "num_latents": dims[1], "latent_dim": dims[2]}
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        names.append(SOURCE_FILE)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_files(staging, out, names)
    remove_files(out, DERIVED + ([] if text else [onnx_name("text", "fp32"), "tokenizer.json"]))
    return names


def _vision_tokens(bundle: Path) -> tuple[int, int] | None:
    """(N, D) of the bundle's vision file's patch_tokens, or None when there is no vision file."""
    path = bundle / onnx_name("vision", "fp32")
    if not path.is_file():
        return None
    model = onnx.load(str(path), load_external_data=False)
    pt = next((o for o in model.graph.output if o.name == "patch_tokens"), None)
    dims = [d.dim_value for d in pt.type.tensor_type.shape.dim] if pt is not None else []
    if len(dims) != 3 or not all(dims):
        raise ToolError(f"{path} has no static patch_tokens [1,N,D] output: re-run `ocellus-tools export` or "
                        "`ocellus-tools import` for this bundle")
    return dims[1], dims[2]


def export_resampler_only(out: Path, *, kind: str, tokens: int | None, width: int | None, latents: int | None,
                          latent_dim: int | None, depth: int | None, heads: int | None, seed: int,
                          state_dict: Path | None, name: str | None) -> dict:
    """Writes resampler.fp32.onnx for N x D tokens into `out`. When `out` is a bundle (it has source.json and a
    vision file), N and D come from its patch_tokens, its resampler is replaced, source.json's ``resampler``
    updated and the files derived from the old one removed; otherwise `out` gets the resampler file and a
    source.json describing only it. Returns what was done."""
    from .resampler_io import build_from_spec, describe, make_spec

    out = ensure_writable_dir(Path(out))
    has_source = (out / SOURCE_FILE).is_file()
    vision = _vision_tokens(out) if has_source else None
    if vision is not None:
        for flag, given, have in (("--tokens", tokens, vision[0]), ("--width", width, vision[1])):
            if given is not None and given != have:
                raise ToolError(f"{out} is a bundle whose vision file gives patch_tokens [1, {vision[0]}, "
                                f"{vision[1]}], but {flag} {given}: drop {flag} (it is read from the bundle) or "
                                "export into another directory")
        tokens, width = vision
    elif tokens is None or width is None:
        raise ToolError(f"{out} holds no bundle with a vision file to read the token count and width from: pass "
                        "--tokens N and --width D (the vision encoder's patch_tokens [1,N,D])")
    spec = make_spec(kind, tokens=tokens, in_dim=width, latents=latents, latent_dim=latent_dim, depth=depth,
                     heads=heads, seed=seed, state_dict=state_dict)
    module = build_from_spec(spec)
    rec = read_source(out) if has_source else {
        "tools_version": __version__, "name": name or out.resolve().name, "source": f"resampler-only:{kind}",
        "spec": {"kind": "resampler-only"}, "embed_dim": None, "preprocess": None, "text": None, "scores": None}
    if has_source and rec.get("spec", {}).get("kind") != "resampler-only":
        rec["source"] = rec["source"].split("; resampler-only:")[0] + f"; resampler-only:{kind}"
    if name:
        rec["name"] = name
    rec["resampler"] = {"kind": kind, "num_latents": spec["latents"], "latent_dim": spec["latent_dim"], "spec": spec}
    rec["tools_version"] = __version__

    staging = staging_dir(out)
    names = [onnx_name("resampler", "fp32"), SOURCE_FILE]
    try:
        x = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(0))
        _export(module, (x,), staging / names[0], ["patch_tokens"], ["latents"])
        (staging / SOURCE_FILE).write_text(json.dumps(rec, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_files(staging, out, names)
    removed = remove_files(out, derived_files())
    return {"spec": spec, "description": describe(spec), "names": names, "removed": removed,
            "bundle": vision is not None}
