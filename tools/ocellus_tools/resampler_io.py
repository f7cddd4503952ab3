"""A resampler for any token count and width, from a seed or from weights the user trained
(`ocellus-tools export --resampler-only`, and the resampler `ocellus-tools import` adds).

A resampler spec (a dict stored in source.json under ``resampler.spec``) says how to rebuild the same PyTorch
module later, which is how `validate` gets the resampler's reference:

    {"kind": "perceiver" | "qformer", "tokens": N, "in_dim": D, "latents": L, "latent_dim": Dl, "depth": layers,
     "heads": H, "seed": S | None, "state_dict": "/abs/file.pt" | None, "state_dict_sha256": "..." | None}

A state dict is the module's own ``state_dict()`` as written by ``torch.save``: plain, under a "state_dict" key
(Lightning) or with a common key prefix (``module.``, ``model.resampler.``, ...), which is found and dropped.
Its latents/queries, depth and input width fill in what the command line leaves out; the number of heads cannot
be read from the weights (pass --resampler-heads when it is not the default).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from .errors import ToolError
from .resamplers import build_resampler, default_heads

KINDS = ("perceiver", "qformer")
#: the key that marks each kind's state dict, and where L and Dl are read from
_ANCHOR = {"perceiver": "latents", "qformer": "query_tokens"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``d state dict for a ``kind`` resampler, prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise ToolError(f"state dict {path} does not exist: pass the .pt file torch.save(resampler.state_dict(), "
                        "FILE) wrote")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors come as many types
        raise ToolError(f"cannot read {path} as a PyTorch state dict ({str(e).splitlines()[0]}): save it with "
                        "torch.save(resampler.state_dict(), FILE)") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ToolError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors: save it with "
                        "torch.save(resampler.state_dict(), FILE)")
    anchor = _ANCHOR[kind]
    prefixes = sorted({k[: -len(anchor)] for k in obj if k == anchor or k.endswith("." + anchor)})
    if len(prefixes) != 1:
        other = next((o for o, a in _ANCHOR.items() if o != kind and any(k.split(".")[-1] == a for k in obj)), None)
        hint = f" (it looks like a {other} resampler: pass --resampler {other})" if other else ""
        found = "no" if not prefixes else f"{len(prefixes)}"
        raise ToolError(f"{path} has {found} '{anchor}' tensor{'' if not prefixes else 's'}, so it is not one "
                        f"{kind} resampler's state dict{hint}: save the resampler module's own state_dict()")
    prefix = prefixes[0]
    return {k[len(prefix):]: v.float() for k, v in obj.items() if k.startswith(prefix)}


def geometry(kind: str, sd: dict[str, torch.Tensor]) -> dict:
    """latents, latent_dim, depth and in_dim as the state dict holds them."""
    anchor = sd[_ANCHOR[kind]]
    latents, latent_dim = int(anchor.shape[-2]), int(anchor.shape[-1])
    depth = len({int(m.group(1)) for k in sd for m in [re.match(r"layers\.(\d+)\.", k)] if m})
    if kind == "perceiver":
        w = sd.get("proj_in.weight")
        in_dim = int(w.shape[1]) if w is not None else latent_dim
    else:
        w = sd.get("vision_norm.weight")
        in_dim = int(w.shape[0]) if w is not None else latent_dim
    return {"latents": latents, "latent_dim": latent_dim, "depth": depth, "in_dim": in_dim}


def make_spec(kind: str, *, tokens: int, in_dim: int, latents: int | None = None, latent_dim: int | None = None,
              depth: int | None = None, heads: int | None = None, seed: int | None = 0,
              state_dict: Path | None = None) -> dict:
    """A complete spec: what is not given comes from the state dict (when there is one), else the defaults
    (16 latents of the token width, 2 layers, heads from the width)."""
    if kind not in KINDS:
        raise ToolError(f"unknown resampler {kind!r}: use perceiver or qformer")
    for flag, v in (("--tokens", tokens), ("--width", in_dim), ("--latents", latents), ("--latent-dim", latent_dim),
                    ("--resampler-depth", depth), ("--resampler-heads", heads)):
        if v is not None and v <= 0:
            raise ToolError(f"{flag} must be positive, got {v}")
    sha = None
    if state_dict is not None:
        state_dict = Path(state_dict).resolve()
        g = geometry(kind, load_state_dict_file(state_dict, kind))
        if g["in_dim"] != in_dim:
            raise ToolError(f"{state_dict} is a {kind} resampler reading tokens of width {g['in_dim']}, but the tokens "
                            f"it would read have width {in_dim}: train it on these vision tokens, or pass --width "
                            f"{g['in_dim']} if you export it for another encoder")
        latents = latents or g["latents"]
        latent_dim = latent_dim or g["latent_dim"]
        depth = depth or g["depth"]
        sha = _sha256(state_dict)
        seed = None
    latents = latents or 16
    latent_dim = latent_dim or in_dim
    depth = depth or 2
    heads = heads or default_heads(latent_dim)
    if latent_dim % heads:
        raise ToolError(f"resampler width {latent_dim} is not divisible by heads {heads}: choose --latent-dim and "
                        "--resampler-heads so that the width is a multiple of the heads")
    return {"kind": kind, "tokens": int(tokens), "in_dim": int(in_dim), "latents": int(latents),
            "latent_dim": int(latent_dim), "depth": int(depth), "heads": int(heads), "seed": seed,
            "state_dict": str(state_dict) if state_dict is not None else None, "state_dict_sha256": sha}


def describe(spec: dict) -> str:
    where = f"weights {Path(spec['state_dict']).name}" if spec.get("state_dict") else f"seed {spec['seed']}"
    return (f"{spec['kind']} resampler, {spec['depth']} layers, {spec['latents']} latents of width "
            f"{spec['latent_dim']}, {spec['heads']} heads, reading {spec['tokens']} tokens of width "
            f"{spec['in_dim']} ({where})")


def _mismatch(path: Path, spec: dict, module: nn.Module, sd: dict[str, torch.Tensor]) -> str | None:
    want = module.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k} is {list(sd[k].shape)} in the file, {list(v.shape)} here" for k, v in want.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return None

    def first(items, what):
        more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
        return f"{what} {', '.join(items[:3])}{more}" if items else None

    parts = [p for p in (first(missing, "missing"), first(unexpected, "unexpected"), first(shapes, "shapes:")) if p]
    return (f"{path} does not fit a {describe(spec)}: {'; '.join(parts)}: pass the --resampler, --latents, "
            "--latent-dim, --resampler-depth and --resampler-heads it was trained with, and tokens of the width "
            "it reads")


def build_from_spec(spec: dict, rebuild: bool = False) -> nn.Module:
    """The resampler ``spec`` describes, in eval mode. ``rebuild``: the spec comes from source.json (a missing or
    changed weights file is then named as such)."""
    try:
        module = build_resampler(spec["kind"], spec["in_dim"], num_latents=spec["latents"], depth=spec["depth"],
                                 dim=spec["latent_dim"], heads=spec["heads"], seed=spec["seed"] or 0)
    except ValueError as e:
        raise ToolError(f"cannot build the {spec['kind']} resampler: {e}: choose --latent-dim and "
                        "--resampler-heads so that the width is a multiple of the heads") from e
    if spec.get("state_dict"):
        path = Path(spec["state_dict"])
        if rebuild and not path.is_file():
            raise ToolError(f"the resampler weights {path} this bundle was exported from are gone, and the "
                            "PyTorch reference is rebuilt from them: restore the file, or export the resampler "
                            "again from where it is now")
        if rebuild and spec.get("state_dict_sha256") and _sha256(path) != spec["state_dict_sha256"]:
            raise ToolError(f"the resampler weights {path} changed since the export: export the resampler again "
                            "(ocellus-tools export --resampler-only)")
        sd = load_state_dict_file(path, spec["kind"])
        problem = _mismatch(path, spec, module, sd)
        if problem:
            raise ToolError(problem)
        module.load_state_dict(sd)
    return module.eval()
