"""The demo model's tokenizer: a small BPE trained with Hugging Face `tokenizers` on the scene captions.

Everything the runtime needs is configured inside the tokenizer, so `encode(text)` yields exactly
`CONTEXT_LENGTH` ids in Python and in the Rust `tokenizers` crate alike:

* normalisation: NFKC, then lower case; pre-tokenisation on whitespace and punctuation;
* `[BOS] ... [EOS]` added by a template post-processor (the text encoder pools at the `[EOS]` position);
* truncation to `CONTEXT_LENGTH` (the specials are kept: truncation reserves room for them) and padding with
  `[PAD]` (id 0) to exactly `CONTEXT_LENGTH`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from . import scenes

CONTEXT_LENGTH = 16
PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIALS = [PAD, BOS, EOS, UNK]
DEFAULT_VOCAB_SIZE = 128


def configure(tok: Tokenizer, context_length: int = CONTEXT_LENGTH) -> Tokenizer:
    """Sets the post-processor, truncation and padding of a tokenizer whose vocabulary holds the specials."""
    for name, want in zip(SPECIALS, (PAD_ID, BOS_ID, EOS_ID, UNK_ID)):
        if tok.token_to_id(name) != want:
            raise ValueError(f"tokenizer has {name} at id {tok.token_to_id(name)}, expected {want}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(direction="right", pad_id=PAD_ID, pad_token=PAD, length=context_length)
    return tok


def train_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                    context_length: int = CONTEXT_LENGTH) -> Tokenizer:
    """Trains the BPE on `texts` (default: every caption the scene templates can produce, and the prompts).

    The default corpus is enumerated, not sampled, so the tokenizer is the same on every run.
    """
    corpus = list(texts) if texts is not None else scenes.all_caption_texts()
    corpus += scenes.prompts()
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=1,
                                  show_progress=False)
    tok.train_from_iterator(sorted(corpus), trainer=trainer)
    return configure(tok, context_length)


def encode_batch(tok: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 [len(texts), context_length]."""
    enc = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def save(tok: Tokenizer, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path), pretty=True)


def load(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))
