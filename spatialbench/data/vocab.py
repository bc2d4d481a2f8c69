"""The words of the synthetic scenes and their questions, and a word-level tokenizer over them made without any
download: what the tiny checkpoints and the testbed tokenise with."""

from __future__ import annotations

WORDS = (
    "the a an is are of to in on at and not what where which left right above below top bottom "
    "red green blue yellow purple orange circle square triangle diamond shape object image "
    "near far next beside under over behind front inside outside true false"
).split()


def word_tokenizer(extra_special: tuple[str, ...] = ("<image>",)):
    """A lower-casing word-level tokenizer over a small vocabulary, made without any download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "</s>", *extra_special, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return fast
