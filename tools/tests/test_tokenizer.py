import numpy as np

from ocellus_tools import scenes
from ocellus_tools import tokenizer as T


def test_every_text_encodes_to_exactly_the_context_length_with_bos_eos_and_pad():
    tok = T.train_tokenizer()
    for text in ["a red circle", "a photo of a yellow triangle on the right", "", "purple elephant",
                 " ".join(["a"] * 40)]:
        enc = tok.encode(text)
        assert len(enc.ids) == T.CONTEXT_LENGTH, text
        assert enc.ids[0] == T.BOS_ID
        assert enc.ids.count(T.EOS_ID) == 1
        eos = enc.ids.index(T.EOS_ID)
        assert all(i == T.PAD_ID for i in enc.ids[eos + 1:])
        assert enc.attention_mask == [1] * (eos + 1) + [0] * (T.CONTEXT_LENGTH - eos - 1)
    assert tok.encode(" ".join(["a"] * 40)).ids[-1] == T.EOS_ID  # truncation keeps the specials


def test_caption_words_are_single_tokens_and_case_is_ignored():
    tok = T.train_tokenizer()
    ids = tok.encode("a red circle").ids
    assert ids[:5] == [T.BOS_ID, ids[1], ids[2], ids[3], T.EOS_ID]
    assert tok.encode("A RED Circle").ids == ids
    for text in scenes.all_caption_texts():
        enc = tok.encode(text)
        assert T.UNK_ID not in enc.ids
        assert len(enc.tokens) - enc.tokens.count("[PAD]") == len(text.split()) + 2, text


def test_training_is_deterministic_and_survives_a_json_round_trip(tmp_path):
    a, b = T.train_tokenizer(), T.train_tokenizer()
    assert a.to_str() == b.to_str()
    T.save(a, tmp_path / "tokenizer.json")
    c = T.load(tmp_path / "tokenizer.json")
    texts = scenes.prompts() + ["a cross that is blue", "blue square at the bottom"]
    ids_a, mask_a = T.encode_batch(a, texts)
    ids_c, mask_c = T.encode_batch(c, texts)
    assert ids_a.shape == (len(texts), T.CONTEXT_LENGTH) and ids_a.dtype == np.int64
    assert np.array_equal(ids_a, ids_c) and np.array_equal(mask_a, mask_c)
    assert len({tuple(r) for r in ids_a[:16]}) == 16
