"""Tiny, seeded, randomly initialised CLIP and SigLIP checkpoints written with save_pretrained.

They exercise the real transformers code path (config.json + safetensors + tokenizer.json, loaded back with
from_pretrained) without any download. Used by the tests and by tools/scripts/make-test-models.sh.

    python -m ocellus_tools.tiny {clip|siglip} DIR [--seed N] [--no-preprocessor-config]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ocellus_tools.tiny", description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=["clip", "siglip"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-preprocessor-config", action="store_true")
    args = ap.parse_args(argv)
    make_tiny_checkpoint(args.out, args.family, args.seed, not args.no_preprocessor_config)
    print(f"wrote a random {args.family} checkpoint (seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
