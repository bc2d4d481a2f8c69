"""Tiny checkpoints built in code, so tests and the demo run offline with the real loading path.

Each family module registers a builder with @tiny_builder. A builder makes a randomly initialised model
from a config and saves it with save_pretrained (sharded, like a Hub checkpoint) next to a tokenizer and
an image processor; adapters then load it exactly as they load a downloaded checkpoint.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

BUILD_VERSION = 3  # bump when a builder changes, so stale tiny checkpoints are rebuilt (3: the testbed's vision budget)
IMAGE_SIZE = 64
WORDS = (
    "the a an is are of to in on at and not what where which left right above below top bottom "
    "red green blue yellow purple orange circle square triangle diamond shape object image "
    "near far next beside under over behind front inside outside true false"
).split()

_BUILDERS: dict[str, Callable[[Path], None]] = {}
_WEIGHTS: dict[str, str] = {}  # what each build's weights are, for `ls models` and a run's first line
RANDOM = "random"


def tiny_builder(name: str, weights: str = RANDOM) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def wrap(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        _BUILDERS[name], _WEIGHTS[name] = fn, weights
        return fn

    return wrap


def tiny_weights(name: str) -> str:
    from .base import families

    families()  # family modules register their tiny builders on import
    return _WEIGHTS.get(name, RANDOM)


def tiny_names() -> list[str]:
    return sorted(_BUILDERS)


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


def materialise(name: str, cache_dir: Path) -> Path:
    """The directory of tiny checkpoint `name`, built on first use; safe when runs race."""
    from ..errors import SpatialbenchError
    from .base import families

    families()  # family modules register their tiny builders on import
    if name not in _BUILDERS:
        raise SpatialbenchError(f"unknown tiny model '{name}'", field="checkpoint", fix=f"one of {tiny_names()}")
    target = Path(cache_dir) / "tiny" / f"{name}-v{BUILD_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        torch.manual_seed(0)  # a tiny checkpoint is the same weights everywhere
        _BUILDERS[name](tmp)
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # lost a race only if the winner finished
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
