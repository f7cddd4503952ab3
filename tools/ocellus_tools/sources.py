"""Where bundles come from: a Hugging Face checkpoint directory or a built-in model. A source spec (a dict stored
in source.json) rebuilds the same PyTorch modules later, which is how `validate` gets its reference."""

from __future__ import annotations

from pathlib import Path

from .bundle import Bundle
from .errors import ToolError

BUILTINS = ("demo",)


def hf_spec(path: Path, *, resampler: str, latents: int, resampler_depth: int, latent_dim: int | None,
            resampler_heads: int | None, seed: int, tokenizer: Path | None) -> dict:
    return {"kind": "hf", "path": str(Path(path).resolve()), "resampler": resampler, "latents": latents,
            "resampler_depth": resampler_depth, "latent_dim": latent_dim, "resampler_heads": resampler_heads,
            "seed": seed, "tokenizer": str(Path(tokenizer).resolve()) if tokenizer else None}


def builtin_spec(name: str, *, checkpoint: Path | None, seed: int) -> dict:
    return {"kind": "builtin", "builtin": name, "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
            "seed": seed}


def build_bundle(spec: dict, name: str, rebuild: bool = False) -> Bundle:
    """The Bundle `spec` describes, in eval mode; ToolError when its inputs are gone or unusable. `rebuild`:
    the spec comes from an exported bundle's source.json (errors then say so)."""
    kind = spec.get("kind")
    if kind == "hf":
        from .hf import load_hf_bundle

        if rebuild and not Path(spec["path"]).is_dir():
            raise ToolError(f"the checkpoint directory {spec['path']} this bundle was exported from is gone, and the "
                            "PyTorch reference is rebuilt from it: restore it, or export again from where it is now")

        bundle = load_hf_bundle(Path(spec["path"]), name=name, resampler=spec["resampler"], latents=spec["latents"],
                                resampler_depth=spec["resampler_depth"], latent_dim=spec.get("latent_dim"),
                                resampler_heads=spec.get("resampler_heads"), seed=spec["seed"],
                                tokenizer_file=Path(spec["tokenizer"]) if spec.get("tokenizer") else None)
    elif kind == "builtin":
        if spec.get("builtin") not in BUILTINS:
            raise ToolError(f"unknown built-in model {spec.get('builtin')!r}: use one of {', '.join(BUILTINS)}")
        checkpoint = Path(spec["checkpoint"]) if spec.get("checkpoint") else None
        if checkpoint is not None and not checkpoint.is_file():
            raise ToolError(f"demo checkpoint {checkpoint} does not exist: train it with `ocellus-tools train-demo` "
                            "or pass the right --demo-checkpoint")
        try:
            from .demo import build_demo_bundle
        except ImportError as e:
            raise ToolError(f"the built-in demo model is unavailable ({e}): ocellus_tools/demo.py is missing "
                            "from this installation") from e
        bundle = build_demo_bundle(checkpoint, spec["seed"])
        bundle.name = name
    else:
        raise ToolError(f"source.json names an unknown source kind {kind!r}: re-run `ocellus-tools export`")
    if bundle.resampler_kind not in ("perceiver", "qformer"):
        raise ToolError(f"bundle resampler_kind {bundle.resampler_kind!r} is neither 'perceiver' nor 'qformer'")
    bundle.preprocess.check()
    return bundle.eval()
