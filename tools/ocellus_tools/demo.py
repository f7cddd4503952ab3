"""The bundled demo model: a tiny CLIP-style vision-language model with a Perceiver Resampler.

* Vision: ViT, 64x64 input, patch 8 (64 patches + CLS = 65 tokens), pre-LN blocks. Outputs the last hidden
  states as ``patch_tokens`` [1,65,D] and the projection of the final-LN CLS token as ``image_embeds`` [1,E].
* Text: causal pre-LN transformer over the 16 token ids of the demo tokenizer, pooled at the ``[EOS]``
  position (one-hot select, so the graph needs no ArgMax or Gather on data-dependent indices), projected to E.
  It reads only ``input_ids``: with a causal mask and right padding, positions after ``[EOS]`` cannot reach it.
* Resampler: the Flamingo Perceiver Resampler of :mod:`ocellus_tools.resamplers` (16 latents) on the patch
  tokens. During training an auxiliary head (mean of the latents -> linear -> E) is aligned with the text
  contrastively, so the latents carry the scene content; the head is not exported.

Attention is written out as matmul + softmax (the TorchScript exporter handles it at opset 17, and the int8
quantizer sees plain MatMuls).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from . import tokenizer as demo_tokenizer
from .bundle import Bundle, Preprocess
from .resamplers import PerceiverResampler, init_resampler

MAX_LOGIT_SCALE = 100.0
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class DemoConfig:
    image_size: int = 64
    patch: int = 8
    #: Channels of the convolutional stem (stride-2 3x3 convolutions, then a stride-2 3x3 projection to the
    #: width: 64x64 -> 8x8 tokens, the grid of patch 8). Empty: a plain 8x8 patch embedding.
    stem_channels: tuple[int, ...] = (32, 64)
    #: BatchNorm after each stem convolution (folded into the convolution on export, eval mode).
    stem_norm: bool = True
    vision_width: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 64
    text_layers: int = 3
    text_heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 64
    context_length: int = demo_tokenizer.CONTEXT_LENGTH
    vocab_size: int = demo_tokenizer.DEFAULT_VOCAB_SIZE
    resampler_depth: int = 2
    resampler_heads: int = 4
    num_latents: int = 16

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch) ** 2 + 1


def _attention(x: torch.Tensor, qkv: nn.Linear, out: nn.Linear, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    b, n, c = x.shape
    dh = c // heads
    q, k, v = qkv(x).reshape(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
    scores = torch.matmul(q * (1.0 / math.sqrt(dh)), k.transpose(-2, -1))
    if mask is not None:
        scores = scores + mask
    y = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + _attention(self.ln_1(x), self.qkv, self.proj, self.heads, mask)
        return x + self.fc2(F.gelu(self.fc1(self.ln_2(x))))


class VisionEncoder(nn.Module):
    """forward(pixel_values [B,3,H,W]) -> (patch_tokens [B,N,D], image_embeds [B,E])."""

    def __init__(self, cfg: DemoConfig):
        super().__init__()
        w = cfg.vision_width
        if cfg.stem_channels:
            if 2 ** (len(cfg.stem_channels) + 1) != cfg.patch:
                raise ValueError(f"a stem of {len(cfg.stem_channels)} stride-2 convolutions plus the projection "
                                 f"gives patch {2 ** (len(cfg.stem_channels) + 1)}, not {cfg.patch}")
            layers, c_in = [], 3
            for c in cfg.stem_channels:
                layers.append(nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1, bias=not cfg.stem_norm))
                if cfg.stem_norm:
                    layers.append(nn.BatchNorm2d(c))
                layers.append(nn.GELU())
                c_in = c
            layers.append(nn.Conv2d(c_in, w, kernel_size=3, stride=2, padding=1, bias=False))
            self.patch_embed = nn.Sequential(*layers)
        else:
            self.patch_embed = nn.Conv2d(3, w, kernel_size=cfg.patch, stride=cfg.patch, bias=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, w))
        self.pos = nn.Parameter(torch.zeros(1, cfg.num_tokens, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.vision_heads, cfg.mlp_ratio) for _ in range(cfg.vision_layers))
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Linear(w, cfg.embed_dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = blk(x)
        return x, self.proj(self.ln_post(x[:, 0]))


class TextEncoder(nn.Module):
    """forward(input_ids [B,T] int64, attention_mask ignored) -> text_embeds [B,E]."""

    #: Read by `export`: the ONNX text file then has `input_ids` as its only input.
    uses_attention_mask = False

    def __init__(self, cfg: DemoConfig, eos_id: int = demo_tokenizer.EOS_ID):
        super().__init__()
        w = cfg.text_width
        self.eos_id = eos_id
        self.token = nn.Embedding(cfg.vocab_size, w)
        self.pos = nn.Parameter(torch.zeros(1, cfg.context_length, w))
        self.blocks = nn.ModuleList(Block(w, cfg.text_heads, cfg.mlp_ratio) for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(w)
        self.proj = nn.Linear(w, cfg.embed_dim, bias=False)
        t = cfg.context_length
        self.register_buffer("causal", torch.full((t, t), -1e9).triu(1), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token(input_ids) + self.pos
        for blk in self.blocks:
            x = blk(x, self.causal)
        x = self.ln_final(x)
        at_eos = (input_ids == self.eos_id).to(x.dtype).unsqueeze(-1)
        return self.proj((x * at_eos).sum(dim=1))


class DemoModel(nn.Module):
    """The three exported parts plus the training-only pieces (logit scales, auxiliary latent head)."""

    def __init__(self, cfg: DemoConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg)
        self.text = TextEncoder(cfg)
        self.resampler = PerceiverResampler(dim=cfg.vision_width, depth=cfg.resampler_depth,
                                            heads=cfg.resampler_heads, num_latents=cfg.num_latents,
                                            in_dim=cfg.vision_width)
        self.latent_head = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.latent_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def init_weights(self, seed: int) -> "DemoModel":
        """Deterministic initialisation from `seed` (independent of the global torch RNG)."""
        gen = torch.Generator().manual_seed(seed)

        def normal_(t: torch.Tensor, std: float) -> None:
            with torch.no_grad():
                t.copy_((torch.randn(t.shape, generator=gen) * std).clamp_(-2 * std, 2 * std))

        for name, m in self.named_modules():
            if name.startswith("resampler"):
                continue
            if isinstance(m, nn.Conv2d):
                # He initialisation: the stem's GELUs must see inputs of order 1 to be non-linear from the start.
                normal_(m.weight, math.sqrt(2.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                normal_(m.weight, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                normal_(m.weight, 0.02)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for part in (self.vision, self.text):
            normal_(part.pos, 0.02)
        normal_(self.vision.cls, 0.02)
        init_resampler(self.resampler, seed + 1)
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1 / 0.07))
            self.latent_logit_scale.fill_(math.log(1 / 0.07))
        return self

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def latent_scale(self) -> torch.Tensor:
        return self.latent_logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image_embeds [B,E], latent_embeds [B,E]) (not normalised)."""
        patch_tokens, image_embeds = self.vision(pixel_values)
        latents = self.resampler(patch_tokens)
        return image_embeds, self.latent_head(latents.mean(dim=1))


def preprocess(cfg: DemoConfig | None = None) -> Preprocess:
    cfg = cfg or DemoConfig()
    return Preprocess(height=cfg.image_size, width=cfg.image_size, resize="shortest_edge",
                      interpolation="bilinear", crop="center", channel_order="rgb", rescale=1 / 255,
                      mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def to_pixel_values(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,H,W,3] (already model-sized) -> normalised f32 [B,3,H,W], as the manifest's preprocess."""
    x = images_u8.permute(0, 3, 1, 2).to(torch.float32) * (1 / 255)
    return (x - 0.5) / 0.5


def save_checkpoint(path: Path, model: DemoModel, tok, meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.cfg),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "tokenizer": tok.to_str(),
        "meta": meta,
    }, path)


def load_checkpoint(path: Path) -> tuple[DemoModel, "tokenizers.Tokenizer", dict]:  # noqa: F821
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demo checkpoint {path} not found: run `ocellus-tools train-demo` first")
    from torch.torch_version import TorchVersion

    # weights_only: a checkpoint is data, never code. TorchVersion is allowed for files whose metadata
    # recorded torch.__version__ as an object rather than a string.
    with torch.serialization.safe_globals([TorchVersion]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an ocellus demo checkpoint (format {CHECKPOINT_FORMAT})")
    known = {f.name for f in fields(DemoConfig)}
    raw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in ckpt["config"].items() if k in known}
    cfg = DemoConfig(**raw)
    model = DemoModel(cfg)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), Tokenizer.from_str(ckpt["tokenizer"]), ckpt.get("meta", {})


def build_demo_bundle(checkpoint: Path | None, seed: int = 0) -> Bundle:
    """The demo bundle: trained weights from `checkpoint` (source "train-demo"), or with `checkpoint=None`
    a seeded random initialisation (source "builtin:demo") with the deterministic demo tokenizer."""
    if checkpoint is None:
        cfg = DemoConfig()
        model = DemoModel(cfg).init_weights(seed).eval()
        tok = demo_tokenizer.train_tokenizer()
        source = "builtin:demo"
    else:
        model, tok, _ = load_checkpoint(checkpoint)
        cfg = model.cfg
        source = "train-demo"
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tok.get_vocab_size()} tokens, the text encoder {cfg.vocab_size}")
    return Bundle(
        name="demo",
        source=source,
        vision=model.vision,
        resampler=model.resampler,
        resampler_kind="perceiver",
        text=model.text,
        tokenizer=tok,
        context_length=cfg.context_length,
        pad_id=demo_tokenizer.PAD_ID,
        preprocess=preprocess(cfg),
        embed_dim=cfg.embed_dim,
        logit_scale=float(model.scale().item()),
        logit_bias=0.0,
    ).eval()
