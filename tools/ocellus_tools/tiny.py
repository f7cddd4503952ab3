"""Tiny, seeded, randomly initialised CLIP and SigLIP checkpoints written with save_pretrained, and a
"third-party" ViT ONNX file.

They exercise the real transformers code path (config.json + safetensors + tokenizer.json, loaded back with
from_pretrained) without any download. Used by the tests and by tools/scripts/make-test-models.sh. The ViT file
(`vit`) is what a user brings to `ocellus-tools import`: a Hugging Face ViTModel exported by the TorchScript
exporter with a dynamic batch, the position-embedding interpolation in the graph and the exporter's own tensor
names (tools/scripts/make-import-model.sh).

    python -m ocellus_tools.tiny {clip|siglip} DIR [--seed N] [--no-preprocessor-config]
    python -m ocellus_tools.tiny vit FILE.onnx [--seed N] [--opset 14] [--preprocessor-config FILE.json]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
WORDS = (
    "a an the of photo picture that is on in at to and with "
    "red green blue yellow circle square triangle cross left right middle top bottom "
    "cat dog robot hand cup table"
).split()

VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64,
              patch_size=16)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16)


def make_tokenizer():
    """A lower-casing word-level tokenizer over WORDS that wraps every text in BOS ... EOS."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate([PAD, UNK, BOS, EOS, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    tok.add_special_tokens([PAD, UNK, BOS, EOS])
    return tok


def make_tiny_checkpoint(out: Path, family: str, seed: int = 0, preprocessor_config: bool = True) -> Path:
    """Writes a random `family` ("clip" | "siglip") checkpoint into `out` and returns `out`."""
    import transformers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    ids = dict(vocab_size=tok.get_vocab_size(), pad_token_id=tok.token_to_id(PAD), bos_token_id=tok.token_to_id(BOS),
               eos_token_id=tok.token_to_id(EOS))
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if family == "clip":
            config = transformers.CLIPConfig(text_config={**TEXT, **ids}, vision_config=VISION, projection_dim=32)
            model = transformers.CLIPModel(config)
            pre = {"crop_size": {"height": 64, "width": 64}, "do_center_crop": True, "do_normalize": True,
                   "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
                   "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 64},
                   "image_processor_type": "CLIPImageProcessor"}
        elif family == "siglip":
            config = transformers.SiglipConfig(text_config={**TEXT, **ids, "projection_size": VISION["hidden_size"]},
                                               vision_config=VISION)
            model = transformers.SiglipModel(config)
            pre = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                   "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 0.00392156862745098,
                   "size": {"height": 64, "width": 64}, "image_processor_type": "SiglipImageProcessor"}
        else:
            raise ValueError(f"unknown family {family!r}: use 'clip' or 'siglip'")
        model.save_pretrained(str(out))
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK,
         "model_max_length": TEXT["max_position_embeddings"]}, indent=2))
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
    ap.add_argument("--no-preprocessor-config", action="store_true")
    ap.add_argument("--opset", type=int, default=14, help="vit: ONNX opset (default 14)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.family == "vit":
        make_tiny_vit_onnx(args.out, args.seed, args.opset)
        print(f"wrote a random ViTModel (seed {args.seed}, opset {args.opset}, dynamic batch) to {args.out}")
        return 0
    make_tiny_checkpoint(args.out, args.family, args.seed, not args.no_preprocessor_config)
    print(f"wrote a random {args.family} checkpoint (seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
