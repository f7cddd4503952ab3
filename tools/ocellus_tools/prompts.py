"""Prompts the text encoder cannot see: every token unknown or padding.

A word-level or BPE tokenizer maps words outside its vocabulary to its unknown token; a prompt made only of such
words (or of nothing) reaches the text encoder as ``[BOS] [UNK] ... [EOS]``, the same ids as any other such
prompt, so it scores the same on every image and carries no meaning. The tools do not drop it (the runtime scores
what it is given) but say so: `ocellus-tools validate` warns for its reference prompts, `ocellus-tools
check-prompts BUNDLE PROMPT...` for any, and :func:`unknown_prompts` is the check itself. Byte-level tokenizers
(CLIP's BPE) have no unknown token, so nothing is ever reported for them.
"""

from __future__ import annotations

import json


def special_ids(tokenizer) -> tuple[int | None, int | None]:
    """(unknown id, padding id) of a Hugging Face `tokenizers.Tokenizer`; None where it has none."""
    model = json.loads(tokenizer.to_str()).get("model", {})
    unk = None
    if isinstance(model.get("unk_token"), str):
        unk = tokenizer.token_to_id(model["unk_token"])
    elif isinstance(model.get("unk_id"), int):  # Unigram
        unk = model["unk_id"]
    pad = (tokenizer.padding or {}).get("pad_id")
    return unk, pad


def content_tokens(tokenizer, prompt: str) -> list[tuple[int, str]]:
    """(id, token) of a prompt's own tokens: without the specials the post-processor adds and the padding."""
    enc = tokenizer.encode(prompt)
    return [(i, t) for i, t, special, att in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.attention_mask)
            if att and not special]


def unknown_prompts(tokenizer, prompts: list[str]) -> list[str]:
    """The prompts whose tokens are all the unknown or padding token (or that have none): the text encoder sees
    nothing of what they say."""
    unk, pad = special_ids(tokenizer)
    blind = {i for i in (unk, pad) if i is not None}
    return [p for p in prompts if all(i in blind for i, _ in content_tokens(tokenizer, p))]


def warning(prompt: str) -> str:
    return (f"prompt {prompt!r}: every token is unknown to the tokenizer (or padding), so the text encoder sees "
            "nothing of it and it scores alike on every image: reword it with words of the tokenizer's vocabulary")
