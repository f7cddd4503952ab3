"""Bundles from Hugging Face CLIP and SigLIP checkpoint directories (transformers CLIPModel / SiglipModel).

Nothing is downloaded: the directory must hold config.json, the weights and a tokenizer (tokenizer.json, or a
tokenizer transformers can load as a fast tokenizer, or a file given with --tokenizer). The resampler is not part
of CLIP or SigLIP: it is new, initialised from a seed by :func:`ocellus_tools.resamplers.build_resampler`.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from .bundle import Bundle, Preprocess
from .errors import ToolError
from .resamplers import build_resampler

FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL resample codes as stored in preprocessor_config.json
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _pooled(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFVision(nn.Module):
    """pixel_values [1,3,H,W] -> (patch_tokens = last_hidden_state [1,N,D], image_embeds = get_image_features [1,E])."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        out = self.model.get_image_features(pixel_values=pixel_values, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class HFText(nn.Module):
    """(input_ids, attention_mask) [1,T] int64 -> text_embeds = get_text_features [1,E]."""

    def __init__(self, model: nn.Module, uses_attention_mask: bool):
        super().__init__()
        self.model = model
        # SigLIP is trained on "max_length" padding without a mask (its tokenizer returns no attention_mask);
        # the exported text encoder then takes input_ids only (docs/manifest.md).
        self.uses_attention_mask = uses_attention_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        mask = attention_mask if self.uses_attention_mask else None
        return _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=mask))


def read_config(path: Path) -> tuple[str, dict]:
    """(family, config dict) of a checkpoint directory; ToolError with the fix when it is not usable."""
    if not path.exists():
        raise ToolError(
            f"Hugging Face checkpoint directory {path} does not exist: pass --hf with a local directory holding "
            "config.json, the weights and tokenizer.json (ocellus-tools never downloads; fetch one first, e.g. "
            "`hf download openai/clip-vit-base-patch32 --local-dir DIR`)"
        )
    if not path.is_dir():
        raise ToolError(f"{path} is not a directory: pass --hf with a Hugging Face checkpoint directory")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ToolError(f"{path} has no config.json, so it is not a Hugging Face checkpoint directory: pass the "
                        "directory save_pretrained() or `hf download` wrote")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ToolError(f"cannot read {cfg_file}: {e}: restore the checkpoint's config.json") from e
    model_type = cfg.get("model_type")
    if model_type not in FAMILIES:
        archs = ", ".join(cfg.get("architectures") or []) or "none listed"
        raise ToolError(
            f"{path} holds an unsupported architecture (model_type {model_type!r}, architectures: {archs}): "
            "ocellus-tools exports CLIP (model_type 'clip', CLIPModel) and SigLIP (model_type 'siglip', "
            "SiglipModel) checkpoints; convert the model to one of those or use --builtin demo"
        )
    return model_type, cfg


def _load_model(path: Path, family: str) -> nn.Module:
    import transformers

    cls = getattr(transformers, FAMILIES[family])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
    except Exception as e:  # transformers raises OSError/ValueError/RuntimeError variously
        raise ToolError(f"failed to load {FAMILIES[family]} from {path}: {str(e).splitlines()[0]}: "
                        "check that the directory holds the complete checkpoint (config.json and weights)") from e
    return model.eval().float()


def _load_tokenizer(path: Path, tokenizer_file: Path | None):
    from tokenizers import Tokenizer

    candidates = [tokenizer_file] if tokenizer_file is not None else [path / "tokenizer.json"]
    for f in candidates:
        if f.is_file():
            try:
                return Tokenizer.from_file(str(f))
            except Exception as e:
                raise ToolError(f"cannot load tokenizer {f}: {e}: pass a Hugging Face tokenizers JSON with --tokenizer") from e
    if tokenizer_file is not None:
        raise ToolError(f"tokenizer file {tokenizer_file} does not exist: pass an existing tokenizer.json with --tokenizer")
    # transformers builds an empty tokenizer when the files are missing; only convert what is really there
    sources = ("vocab.json", "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "vocab.txt")
    try:
        if not any((path / f).is_file() for f in sources):
            raise FileNotFoundError(path)
        from transformers import AutoTokenizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        backend = getattr(fast, "backend_tokenizer", None)
        if backend is not None:
            return Tokenizer.from_str(backend.to_str())
    except Exception:
        pass
    raise ToolError(f"{path} has no tokenizer.json and no tokenizer transformers can convert: pass --tokenizer FILE "
                    "(a Hugging Face tokenizers JSON for this checkpoint)")


def _pad_id(path: Path, tokenizer, text_cfg: dict) -> int:
    tc_file = path / "tokenizer_config.json"
    if tc_file.is_file():
        try:
            pad = json.loads(tc_file.read_text()).get("pad_token")
        except (OSError, json.JSONDecodeError):
            pad = None
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str) and tokenizer.token_to_id(pad) is not None:
            return tokenizer.token_to_id(pad)
    if isinstance(text_cfg.get("pad_token_id"), int):
        return text_cfg["pad_token_id"]
    for tok in ("<pad>", "[PAD]", "<|endoftext|>", "</s>"):
        if tokenizer.token_to_id(tok) is not None:
            return tokenizer.token_to_id(tok)
    raise ToolError(f"cannot tell the padding token of {path}: set pad_token in tokenizer_config.json or "
                    "pad_token_id in the text config")


def configure_tokenizer(tokenizer, context_length: int, pad_id: int):
    """Pads and truncates every encoding to exactly `context_length` ids (what the runtime feeds the encoder)."""
    pad_token = tokenizer.id_to_token(pad_id)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token or "<pad>")
    return tokenizer


def _preprocess(path: Path, family: str, image_size: int) -> Preprocess:
    if family == "clip":
        pre = Preprocess(height=image_size, width=image_size, resize="shortest_edge", interpolation="bicubic",
                         crop="center", mean=CLIP_MEAN, std=CLIP_STD)
    else:
        pre = Preprocess(height=image_size, width=image_size, resize="squash", interpolation="bilinear",
                         crop="none", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pc_file = path / "preprocessor_config.json"
    if not pc_file.is_file():
        return pre
    try:
        pc = json.loads(pc_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ToolError(f"cannot read {pc_file}: {e}: fix or remove it (family defaults are used without it)") from e
    return apply_preprocessor_config(pre, pc, pc_file, image_size)


def preprocessor_size(pc: dict) -> tuple[int, int] | None:
    """(H, W) of the model input a Hugging Face preprocessor_config.json produces: the centre crop's size, or a
    fixed resize size; None when it does not say."""
    crop, size = pc.get("crop_size"), pc.get("size")
    if pc.get("do_center_crop", True) and isinstance(crop, dict) and "height" in crop and "width" in crop:
        return int(crop["height"]), int(crop["width"])
    if pc.get("do_center_crop", True) and isinstance(crop, int):
        return crop, crop
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    return None


def apply_preprocessor_config(pre: Preprocess, pc: dict, pc_file: Path, image_size: int) -> Preprocess:
    """`pre` updated from a Hugging Face preprocessor_config.json (resize mode, interpolation, rescale, mean and
    std; the input size stays `pre`'s)."""
    size = pc.get("size") or {}
    if isinstance(size, dict) and "shortest_edge" in size:
        pre.resize, pre.crop = "shortest_edge", "center"
        crop = pc.get("crop_size") or {}
        crop_h = crop.get("height", image_size) if isinstance(crop, dict) else crop
        if size["shortest_edge"] != crop_h:
            warnings.warn(f"{pc_file}: shortest edge {size['shortest_edge']} then a {crop_h} px crop keeps "
                          f"{crop_h / size['shortest_edge']:.3f} of the short side; ocellus crops the largest centred "
                          "box (all of it), so inputs are framed slightly wider than in training")
    elif isinstance(size, dict) and "height" in size:
        pre.resize, pre.crop = "squash", "none"
    if pc.get("do_center_crop") is False and pre.resize == "shortest_edge":
        raise ToolError(f"{pc_file}: shortest-edge resize without center crop gives no fixed input size: "
                        "ocellus needs a fixed size; set do_center_crop or a fixed size")
    if "resample" in pc:
        code = pc["resample"]
        if code not in _PIL_RESAMPLE:
            warnings.warn(f"{pc_file}: resample {code} is not bilinear (2) or bicubic (3); using bicubic")
        pre.interpolation = _PIL_RESAMPLE.get(code, "bicubic")
    if pc.get("do_rescale", True):
        pre.rescale = float(pc.get("rescale_factor", 1 / 255))
    else:
        pre.rescale = 1.0
    if pc.get("do_normalize", True):
        pre.mean = tuple(float(v) for v in pc.get("image_mean", pre.mean))
        pre.std = tuple(float(v) for v in pc.get("image_std", pre.std))
    else:
        pre.mean, pre.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return pre


def load_hf_bundle(path: Path, *, name: str, resampler: str = "perceiver", latents: int = 16,
                   resampler_depth: int = 2, latent_dim: int | None = None, resampler_heads: int | None = None,
                   seed: int = 0, tokenizer_file: Path | None = None) -> Bundle:
    """Loads a CLIP or SigLIP checkpoint directory into a Bundle with a freshly initialised resampler."""
    path = Path(path)
    family, cfg = read_config(path)
    model = _load_model(path, family)
    vcfg, tcfg = model.config.vision_config, model.config.text_config
    image_size = int(vcfg.image_size)
    context_length = int(tcfg.max_position_embeddings)
    tokenizer = _load_tokenizer(path, tokenizer_file)
    if tokenizer.get_vocab_size(with_added_tokens=True) > int(tcfg.vocab_size):
        raise ToolError(f"the tokenizer has {tokenizer.get_vocab_size(with_added_tokens=True)} tokens but the text "
                        f"encoder of {path} only {tcfg.vocab_size}: it belongs to another model; pass the "
                        "checkpoint's own tokenizer.json (--tokenizer)")
    pad_id = _pad_id(path, tokenizer, tcfg.to_dict())
    configure_tokenizer(tokenizer, context_length, pad_id)
    pre = _preprocess(path, family, image_size)
    pre.check()

    vision = HFVision(model).eval()
    text = HFText(model, uses_attention_mask=(family == "clip")).eval()
    with torch.no_grad():
        tokens, image_embeds = vision(torch.zeros(1, 3, image_size, image_size))
        ids = torch.tensor([tokenizer.encode("a").ids], dtype=torch.int64)
        text_embeds = text(ids, torch.ones_like(ids))
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise ToolError(f"{path}: image embedding width {image_embeds.shape[-1]} differs from text embedding width "
                        f"{text_embeds.shape[-1]}: not a dual encoder ocellus can score")
    in_dim = tokens.shape[-1]
    try:
        res = build_resampler(resampler, in_dim, num_latents=latents, depth=resampler_depth, dim=latent_dim,
                              heads=resampler_heads, seed=seed).eval()
    except ValueError as e:
        raise ToolError(f"cannot build the {resampler} resampler: {e}: choose --latent-dim and --resampler-heads "
                        "so that the width is a multiple of the heads") from e
    logit_scale = float(math.exp(model.logit_scale.item()))
    logit_bias = float(model.logit_bias.item()) if family == "siglip" else 0.0
    return Bundle(name=name, source=f"hf-{family}:{path}", vision=vision, resampler=res, resampler_kind=resampler,
                  text=text, tokenizer=tokenizer, context_length=context_length, pad_id=pad_id, preprocess=pre,
                  embed_dim=int(image_embeds.shape[-1]), logit_scale=logit_scale, logit_bias=logit_bias)
