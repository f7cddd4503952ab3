"""Resamplers that turn a variable number of vision tokens into a fixed number of latents.

* :class:`PerceiverResampler` after Flamingo (Alayrac et al. 2022, Sec. 2.1 and App. A.1.1): learned latents;
  each layer is a cross-attention whose queries come from the latents and whose keys and values come from the
  concatenation of the media tokens and the latents, followed by a feed-forward; both residual, pre-LN.
* :class:`QFormer` after BLIP-2 (Li et al. 2023, Sec. 3.1): learned queries run through BERT-style (post-LN)
  layers of self-attention among the queries, cross-attention from the queries to the frozen image tokens
  (LayerNorm'ed first, as BLIP-2's `ln_vision`; every ``cross_every`` layers) and a feed-forward; the output is
  the query embeddings.

Flamingo also adds learned time embeddings to the media tokens of a video; ocellus resamples one frame at a time,
so there are none here.

Attention is written out as matmul + softmax so that the TorchScript ONNX exporter (opset 17) produces plain
MatMul/Softmax graphs, which tract runs and the int8 quantizer handles (nn.MultiheadAttention does not export
at opset 17 under no_grad).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, dim_head: int) -> torch.Tensor:
    """Scaled dot-product attention over projected q [B,Nq,H*Dh], k and v [B,Nk,H*Dh]; returns [B,Nq,H*Dh].
    `heads` and `dim_head` are Python ints so the exported graph has constant reshapes and scale."""
    b = q.shape[0]
    q = q.reshape(b, -1, heads, dim_head).transpose(1, 2)
    k = k.reshape(b, -1, heads, dim_head).transpose(1, 2)
    v = v.reshape(b, -1, heads, dim_head).transpose(1, 2)
    scores = torch.matmul(q * (1.0 / math.sqrt(dim_head)), k.transpose(-2, -1))
    weights = torch.softmax(scores, dim=-1)
    out = torch.matmul(weights, v)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


class PerceiverAttention(nn.Module):
    """Flamingo's Perceiver Resampler attention: latents attend to [media; latents]."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        kv_input = torch.cat([media, latents], dim=1)
        k = self.to_k(kv_input)
        v = self.to_v(kv_input)
        return self.to_out(attend(q, k, v, self.heads, self.dim_head))


class FeedForward(nn.Sequential):
    """Pre-LN feed-forward: LayerNorm, Linear, GELU, Linear (used with a residual by the caller)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=False),
        )


class PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int):
        super().__init__()
        self.attn = PerceiverAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.attn(media, latents) + latents
        return self.ff(latents) + latents


class PerceiverResampler(nn.Module):
    """forward(patch_tokens [B,N,in_dim]) -> latents [B,num_latents,dim]."""

    def __init__(self, dim: int, depth: int, heads: int, num_latents: int, ff_mult: int = 4, in_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Perceiver dim {dim} is not divisible by heads {heads}")
        self.dim = dim
        self.num_latents = num_latents
        self.in_dim = in_dim if in_dim is not None else dim
        self.proj_in = nn.Linear(self.in_dim, dim) if self.in_dim != dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList(PerceiverLayer(dim, heads, dim // heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        media = self.proj_in(patch_tokens)
        latents = self.latents.unsqueeze(0).expand(media.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.norm(latents)


class QFormerAttention(nn.Module):
    """BERT-style attention block: out = LayerNorm(h + Dense(Attention(h, context)))."""

    def __init__(self, dim: int, heads: int, kv_dim: int):
        super().__init__()
        self.heads = heads
        self.dim_head = dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(kv_dim, dim)
        self.value = nn.Linear(kv_dim, dim)
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = attend(self.query(hidden), self.key(context), self.value(context), self.heads, self.dim_head)
        return self.norm(hidden + self.dense(out))


class QFormerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, in_dim: int, has_cross: bool, ff_mult: int = 4):
        super().__init__()
        self.self_attn = QFormerAttention(dim, heads, dim)
        self.cross_attn = QFormerAttention(dim, heads, in_dim) if has_cross else None
        self.intermediate = nn.Linear(dim, dim * ff_mult)
        self.output = nn.Linear(dim * ff_mult, dim)
        self.output_norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        h = self.self_attn(queries, queries)
        if self.cross_attn is not None:
            h = self.cross_attn(h, image_tokens)
        return self.output_norm(h + self.output(F.gelu(self.intermediate(h))))


class QFormer(nn.Module):
    """forward(patch_tokens [B,N,in_dim]) -> query embeddings [B,num_queries,dim]."""

    def __init__(self, dim: int, depth: int, heads: int, num_queries: int, in_dim: int, cross_every: int = 1):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Q-Former dim {dim} is not divisible by heads {heads}")
        if cross_every < 1:
            raise ValueError(f"Q-Former cross_every must be >= 1, got {cross_every}")
        self.dim = dim
        self.num_latents = num_queries
        self.in_dim = in_dim
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.embed_norm = nn.LayerNorm(dim, eps=1e-12)
        # BLIP-2 normalises the frozen encoder's tokens before the Q-Former reads them (LAVIS `ln_vision`);
        # CLIP's last_hidden_state has had no final LayerNorm, so this matters here too.
        self.vision_norm = nn.LayerNorm(in_dim)
        self.layers = nn.ModuleList(
            QFormerLayer(dim, heads, in_dim, has_cross=(i % cross_every == 0)) for i in range(depth)
        )

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        image_tokens = self.vision_norm(patch_tokens)
        h = self.embed_norm(self.query_tokens.expand(patch_tokens.shape[0], -1, -1))
        for layer in self.layers:
            h = layer(h, image_tokens)
        return h


def init_resampler(module: nn.Module, seed: int, std: float = 0.02) -> nn.Module:
    """Deterministic initialisation from ``seed``: Linear weights and learned latents/queries ~ N(0, std^2)
    (truncated at 2 std), biases 0, LayerNorm weight 1 and bias 0. Same seed, same module -> same weights."""
    gen = torch.Generator().manual_seed(seed)

    def normal_(t: torch.Tensor) -> None:
        with torch.no_grad():
            t.copy_((torch.randn(t.shape, generator=gen) * std).clamp_(-2 * std, 2 * std))

    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in module.named_parameters(recurse=False):
        normal_(p)
    return module


def default_heads(dim: int) -> int:
    """The most heads (of 8, 4, 2, 1) that divide ``dim`` with at least 16 channels each (1 at worst)."""
    return next(h for h in (8, 4, 2, 1) if dim % h == 0 and dim // h >= 16 or h == 1)


def build_resampler(kind: str, in_dim: int, *, num_latents: int, depth: int, dim: int | None = None,
                    heads: int | None = None, seed: int = 0) -> nn.Module:
    """A seeded, initialised resampler of ``kind`` ("perceiver" | "qformer") reading tokens of width ``in_dim``."""
    dim = dim or in_dim
    if heads is None:
        heads = default_heads(dim)
    if kind == "perceiver":
        m = PerceiverResampler(dim=dim, depth=depth, heads=heads, num_latents=num_latents, in_dim=in_dim)
    elif kind == "qformer":
        m = QFormer(dim=dim, depth=depth, heads=heads, num_queries=num_latents, in_dim=in_dim)
    else:
        raise ValueError(f"unknown resampler kind {kind!r}: use 'perceiver' or 'qformer'")
    return init_resampler(m, seed)
