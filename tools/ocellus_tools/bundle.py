"""The in-memory model bundle every source (Hugging Face checkpoint, built-in demo) produces.

`export` turns a :class:`Bundle` into ONNX files; `validate` uses its PyTorch modules as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


RESIZES = ("shortest_edge", "squash", "letterbox")


@dataclass
class Preprocess:
    """Mirrors the ``[preprocess]`` table of docs/manifest.md."""

    height: int
    width: int
    resize: str = "shortest_edge"  # "shortest_edge" | "squash" | "letterbox"
    interpolation: str = "bilinear"  # "bilinear" | "bicubic"
    crop: str = "center"  # "center" | "none" (only with resize = "squash" or "letterbox")
    channel_order: str = "rgb"  # "rgb" | "bgr"
    rescale: float = 1 / 255
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)
    pad: tuple = (0, 0, 0)  # letterbox fill, RGB8 (only meaningful with resize = "letterbox")

    def check(self) -> None:
        """Raises ValueError when a field is outside what the manifest format allows."""
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"preprocess size must be positive, got {self.height}x{self.width}")
        if self.resize not in RESIZES:
            raise ValueError(f"preprocess resize must be one of {', '.join(map(repr, RESIZES))}, got {self.resize!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"preprocess interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if self.crop not in ("center", "none"):
            raise ValueError(f"preprocess crop must be 'center' or 'none', got {self.crop!r}")
        if self.crop == "none" and self.resize == "shortest_edge":
            raise ValueError("preprocess crop = 'none' is only valid with resize = 'squash' or 'letterbox'")
        if self.resize == "letterbox" and self.crop != "none":
            raise ValueError("preprocess resize = 'letterbox' needs crop = 'none' (the whole image is kept)")
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"preprocess channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError("preprocess mean and std need 3 values each, std non-zero")
        if len(self.pad) != 3 or any(int(v) != v or not 0 <= v <= 255 for v in self.pad):
            raise ValueError(f"preprocess pad must be 3 integers in 0..255 (an RGB8 colour), got {list(self.pad)}")

    def record(self) -> dict:
        """The ``[preprocess]`` table as written to source.json and manifest.toml; ``pad`` only with letterbox
        (so the tables of the other modes stay as they were)."""
        rec = {"height": self.height, "width": self.width, "resize": self.resize, "interpolation": self.interpolation,
               "crop": self.crop, "channel_order": self.channel_order, "rescale": float(self.rescale),
               "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}
        if self.resize == "letterbox":
            rec["pad"] = [int(v) for v in self.pad]
        return rec

    @classmethod
    def from_record(cls, rec: dict) -> "Preprocess":
        """Inverse of :meth:`record` (source.json's ``preprocess``)."""
        rec = dict(rec)
        for k in ("mean", "std", "pad"):
            if k in rec:
                rec[k] = tuple(rec[k])
        return cls(**rec)


@dataclass
class Bundle:
    """A vision encoder, a resampler, a text encoder and everything needed to run them."""

    name: str
    source: str  # "train-demo", "builtin:demo", "hf-clip:<dir>", "hf-siglip:<dir>"
    vision: torch.nn.Module  # forward(pixel_values [1,3,H,W]) -> (patch_tokens [1,N,D], image_embeds [1,E])
    resampler: torch.nn.Module  # forward(patch_tokens [1,N,D]) -> latents [1,L,Dl]
    resampler_kind: str  # "perceiver" | "qformer"
    text: torch.nn.Module  # forward(input_ids [1,T] int64, attention_mask [1,T] int64) -> text_embeds [1,E]
    tokenizer: "tokenizers.Tokenizer"  # noqa: F821  padding + truncation to context_length configured inside
    context_length: int
    pad_id: int
    preprocess: Preprocess
    embed_dim: int
    logit_scale: float
    logit_bias: float = 0.0

    def eval(self) -> "Bundle":
        for m in (self.vision, self.resampler, self.text):
            m.eval()
        return self
