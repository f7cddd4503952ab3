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
from .files import PARITY_FILE, SOURCE_FILE, commit_files, ensure_writable_dir, onnx_name, staging_dir

OPSET = 17
# what quantize, validate and manifest made from the fp32 files: stale once they are re-exported
DERIVED = ([f"{r}.{s}.onnx" for r in ("vision", "resampler", "text") for s in ("int8", "int8-ort")]
           + ["quantize.json", PARITY_FILE, "reference", "manifest.toml"])


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


def export_onnx(bundle: Bundle, out: Path) -> list[str]:
    """Writes the three fp32 files and tokenizer.json into `out`; returns their names."""
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


def source_record(bundle: Bundle, spec: dict) -> dict:
    p = bundle.preprocess
    return {
        "tools_version": __version__,
        "name": bundle.name,
        "source": bundle.source,
        "spec": spec,
        "embed_dim": bundle.embed_dim,
        "preprocess": {"height": p.height, "width": p.width, "resize": p.resize, "interpolation": p.interpolation,
                       "crop": p.crop, "channel_order": p.channel_order, "rescale": float(p.rescale),
                       "mean": [float(v) for v in p.mean], "std": [float(v) for v in p.std]},
        "text": {"tokenizer": "tokenizer.json", "context_length": bundle.context_length, "pad_id": bundle.pad_id,
                 "uses_attention_mask": text_uses_mask(bundle.text)},
        "scores": {"logit_scale": float(bundle.logit_scale), "logit_bias": float(bundle.logit_bias)},
    }


def export_bundle(bundle: Bundle, out: Path, spec: dict) -> list[str]:
    """Exports `bundle` into directory `out` (created if needed). All files are written to a staging directory
    first and renamed into place only when every export and check passed; stale derived files (int8, parity,
    reference, manifest) of an earlier export are removed so they cannot be mistaken for this one's."""
    out = ensure_writable_dir(Path(out))
    staging = staging_dir(out)
    try:
        names = export_onnx(bundle, staging)
        res = onnx.load(str(staging / onnx_name("resampler", "fp32")))
        dims = [d.dim_value for d in res.graph.output[0].type.tensor_type.shape.dim]
        record = source_record(bundle, spec)
        record["resampler"] = {"kind": bundle.resampler_kind, "num_latents": dims[1], "latent_dim": dims[2]}
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        names.append(SOURCE_FILE)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    commit_files(staging, out, names)
    for stale in DERIVED:
        p = out / stale
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return names
