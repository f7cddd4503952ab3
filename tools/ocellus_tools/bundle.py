"""The in-memory model bundle every source (Hugging Face checkpoint, built-in demo) produces.

`export` turns a :class:`Bundle` into ONNX files; `validate` uses its PyTorch modules as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Preprocess:
    """Mirrors the ``[preprocess]`` table of docs/manifest.md."""

    height: int
    width: int
    resize: str = "shortest_edge"  # "shortest_edge" | "squash"
    interpolation: str = "bilinear"  # "bilinear" | "bicubic"
    crop: str = "center"  # "center" | "none" (only with resize = "squash")
    channel_order: str = "rgb"  # "rgb" | "bgr"
    rescale: float = 1 / 255
    mean: tuple = (0.5, 0.5, 0.5)
    std: tuple = (0.5, 0.5, 0.5)

    def check(self) -> None:
        """Raises ValueError when a field is outside what the manifest format allows."""
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"preprocess size must be positive, got {self.height}x{self.width}")
        if self.resize not in ("shortest_edge", "squash"):
            raise ValueError(f"preprocess resize must be 'shortest_edge' or 'squash', got {self.resize!r}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"preprocess interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if self.crop not in ("center", "none"):
            raise ValueError(f"preprocess crop must be 'center' or 'none', got {self.crop!r}")
        if self.crop == "none" and self.resize != "squash":
            raise ValueError("preprocess crop = 'none' is only valid with resize = 'squash'")
        if self.channel_order not in ("rgb", "bgr"):
            raise ValueError(f"preprocess channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ValueError("preprocess mean and std need 3 values each, std non-zero")


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
