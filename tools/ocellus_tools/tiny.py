"""Seeded, randomly initialised CLIP and SigLIP checkpoints written with save_pretrained: tiny ones (the default),
or at the size of Hugging Face's config defaults (`--size default`: `CLIPConfig()` is a ViT-B/32 at 224 px with
CLIP's 12-layer text tower, `SiglipConfig()` a B/16 at 224 px); and a "third-party" ViT ONNX file.

They exercise the real transformers code path (config.json + safetensors + tokenizer.json, loaded back with
from_pretrained) without any download. Used by the tests, tools/scripts/make-test-models.sh and
tools/scripts/make-scale-bundles.sh. The ViT file (`vit`) is what a user brings to `ocellus-tools import`: a
Hugging Face ViTModel exported by the TorchScript exporter with a dynamic batch, the position-embedding
interpolation in the graph and the exporter's own tensor names (tools/scripts/make-import-model.sh).

    python -m ocellus_tools.tiny {clip|siglip} DIR [--seed N] [--size tiny|default] [--no-preprocessor-config]
    python -m ocellus_tools.tiny vit FILE.onnx [--seed N] [--opset 14] [--preprocessor-config FILE.json]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
SIGLIP_EOS = "</s>"
WORDS = (
    "a an the of photo picture that is on in at to and with "
    "red green blue yellow circle square triangle cross left right middle top bottom "
    "cat dog robot hand cup table"
).split()

VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64,
              patch_size=16)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16)
SIZES = ("tiny", "default")


def make_tokenizer(vocab_size: int | None = None, ids: dict[str, int] | None = None, bos: str | None = BOS,
                   eos: str = EOS):
    """A lower-casing word-level tokenizer over WORDS that wraps every text in `bos` ... `eos` (no `bos`: only
    `eos` is appended, as SigLIP's tokenizer does).

    Without `vocab_size`: PAD, UNK, BOS, EOS, then WORDS (ids 0, 1, ...). With `vocab_size` the vocabulary spans
    exactly that many ids, so it covers the model's embedding table and the special ids its config names:
    `ids` places the special tokens (CLIP pools the text at the first `eos_token_id`, 49407 by default, so its
    EOS must sit there), WORDS take the lowest free ids and `<extra_N>` fills the rest."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    if vocab_size is None:
        tokens = [PAD, UNK, BOS, EOS, *WORDS]
    else:
        ids = dict(ids or {})
        if len(set(ids.values())) != len(ids) or any(not 0 <= i < vocab_size for i in ids.values()):
            raise ValueError(f"special token ids {ids} must be distinct and below the vocabulary size {vocab_size}")
        if len(ids) + len(WORDS) > vocab_size:
            raise ValueError(f"{vocab_size} ids cannot hold {len(ids)} special tokens and {len(WORDS)} words")
        slots: list[str | None] = [None] * vocab_size
        for tok, i in ids.items():
            slots[i] = tok
        free = (i for i, t in enumerate(slots) if t is None)
        for word in WORDS:
            slots[next(free)] = word
        tokens = [t if t is not None else f"<extra_{i}>" for i, t in enumerate(slots)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    else:
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, vocab[eos])])
    tok.add_special_tokens([t for t in (PAD, UNK, BOS, EOS, SIGLIP_EOS) if t in vocab])
    return tok


def _clip_preprocessor(size: int) -> dict:
    return {"crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_normalize": True,
            "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": size},
            "image_processor_type": "CLIPImageProcessor"}


def _siglip_preprocessor(size: int) -> dict:
    return {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 0.00392156862745098,
            "size": {"height": size, "width": size}, "image_processor_type": "SiglipImageProcessor"}


def _tiny(family: str):
    """(config, tokenizer, tokenizer_config, preprocessor config) of the tiny checkpoint."""
    import transformers

    tok = make_tokenizer()
    ids = dict(vocab_size=tok.get_vocab_size(), pad_token_id=tok.token_to_id(PAD), bos_token_id=tok.token_to_id(BOS),
               eos_token_id=tok.token_to_id(EOS))
    special = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK,
               "model_max_length": TEXT["max_position_embeddings"]}
    if family == "clip":
        config = transformers.CLIPConfig(text_config={**TEXT, **ids}, vision_config=VISION, projection_dim=32)
        return config, tok, special, _clip_preprocessor(VISION["image_size"])
    config = transformers.SiglipConfig(text_config={**TEXT, **ids, "projection_size": VISION["hidden_size"]},
                                       vision_config=VISION)
    return config, tok, special, _siglip_preprocessor(VISION["image_size"])


def _default_size(family: str):
    """(config, tokenizer, tokenizer_config, preprocessor config) at the size of the config defaults."""
    import transformers

    if family == "clip":
        config = transformers.CLIPConfig()
        tc = config.text_config
        # as openai/clip-vit-base-patch32: <|startoftext|> 49406, <|endoftext|> 49407 ends and pads the text (the
        # config's pad_token_id 1 is a legacy value the model never reads)
        tok = make_tokenizer(tc.vocab_size, {UNK: 0, BOS: tc.bos_token_id, EOS: tc.eos_token_id})
        special = {"pad_token": EOS, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK,
                   "model_max_length": tc.max_position_embeddings}
        return config, tok, special, _clip_preprocessor(config.vision_config.image_size)
    config = transformers.SiglipConfig()
    tc = config.text_config
    # as google/siglip-base-patch16-224: no BOS, "</s>" (the config's pad_token_id, 1) ends and pads the text,
    # <unk> is 2; SigLIP pools the last position, so the config's CLIP-style bos/eos ids (beyond its 32000-token
    # vocabulary: transformers warns about them) are never read
    tok = make_tokenizer(tc.vocab_size, {PAD: 0, SIGLIP_EOS: tc.pad_token_id, UNK: 2}, bos=None, eos=SIGLIP_EOS)
    special = {"pad_token": SIGLIP_EOS, "eos_token": SIGLIP_EOS, "unk_token": UNK,
               "model_max_length": tc.max_position_embeddings}
    return config, tok, special, _siglip_preprocessor(config.vision_config.image_size)


def make_tiny_checkpoint(out: Path, family: str, seed: int = 0, preprocessor_config: bool = True,
                         size: str = "tiny") -> Path:
    """Writes a random `family` ("clip" | "siglip") checkpoint of `size` ("tiny" | "default") into `out`."""
    import transformers

    if family not in ("clip", "siglip"):
        raise ValueError(f"unknown family {family!r}: use 'clip' or 'siglip'")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: use one of {', '.join(SIZES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        config, tok, special, pre = (_tiny if size == "tiny" else _default_size)(family)
        torch.manual_seed(seed)
        model = (transformers.CLIPModel if family == "clip" else transformers.SiglipModel)(config)
        model.save_pretrained(str(out))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(special, indent=2))
    if preprocessor_config:
        (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    return out


VIT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64,
           patch_size=16)


def make_tiny_vit_onnx(out: Path, seed: int = 0, opset: int = 14, dynamic: str = "batch", **config) -> Path:
    """Writes a random Hugging Face ViTModel (VIT, updated by `config`) as ONNX: input pixel_values [batch, 3, H,
    W], outputs last_hidden_state [batch, N, D] (after the final LayerNorm, class token first) and pooler_output
    [batch, D] (tanh(dense(class token))). `dynamic`: "batch" (only the batch dimension is dynamic) or "all"
    (height and width too). interpolate_pos_encoding=True puts the position-embedding interpolation in the graph
    (transformers always interpolates while tracing), as third-party DINOv2-style exports have it."""
    import transformers
    from torch import nn

    class _Outputs(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model(pixel_values=pixel_values, interpolate_pos_encoding=True)
            return out.last_hidden_state, out.pooler_output

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(**{**VIT, **config})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.ViTModel(cfg, add_pooling_layer=True, use_mask_token=False).eval()
        axes = {0: "batch"} if dynamic == "batch" else {0: "batch", 2: "height", 3: "width"}
        x = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            torch.onnx.export(_Outputs(model), (x,), str(out), dynamo=False, opset_version=opset,
                              input_names=["pixel_values"], output_names=["last_hidden_state", "pooler_output"],
                              dynamic_axes={"pixel_values": axes, "last_hidden_state": {0: "batch"},
                                            "pooler_output": {0: "batch"}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ocellus_tools.tiny", description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=["clip", "siglip", "vit"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", choices=SIZES, default="tiny",
                    help="tiny (the test checkpoints) or default (the size of transformers' config defaults)")
    ap.add_argument("--no-preprocessor-config", action="store_true")
    ap.add_argument("--opset", type=int, default=14, help="vit: ONNX opset (default 14)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.family == "vit":
        make_tiny_vit_onnx(args.out, args.seed, args.opset)
        print(f"wrote a random ViTModel (seed {args.seed}, opset {args.opset}, dynamic batch) to {args.out}")
        return 0
    make_tiny_checkpoint(args.out, args.family, args.seed, not args.no_preprocessor_config, args.size)
    print(f"wrote a random {args.size} {args.family} checkpoint (seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
