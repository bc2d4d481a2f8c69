"""Shared fixtures for adapter tests: one tiny BLIP-2 checkpoint per session, built in code, offline."""

import os

# Before anything imports huggingface_hub, whose constants read the environment at import time.
os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from spatialbench.adapters.blip2 import Blip2Adapter  # noqa: E402
from spatialbench.adapters.tiny.builds import materialise  # noqa: E402
from spatialbench.specs import ModelCard  # noqa: E402

BLIP2_TINY = ModelCard(name="blip2-tiny", family="blip2", checkpoint="tiny:blip2-tiny")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A session-wide spatialbench cache directory; tiny checkpoints are built into it once."""
    return tmp_path_factory.mktemp("spatialbench-cache")


@pytest.fixture(scope="session")
def blip2_tiny_dir(tiny_cache) -> Path:
    """The tiny BLIP-2 checkpoint directory (save_pretrained layout, sharded)."""
    return materialise("blip2-tiny", tiny_cache)


@pytest.fixture(scope="session")
def blip2_tiny(tiny_cache, blip2_tiny_dir):
    """Factory: blip2_tiny(point) -> Blip2Adapter for the tiny card, cached per point.

    blip2_tiny(point, fresh=True) always loads anew (for tests that watch or compare the loading itself).
    """
    cache: dict[str, Blip2Adapter] = {}

    def load(point: str = "projected", *, fresh: bool = False, card: ModelCard = BLIP2_TINY) -> Blip2Adapter:
        if fresh or card is not BLIP2_TINY:
            return Blip2Adapter.load(card, device="cpu", cache_dir=tiny_cache, point=point)
        if point not in cache:
            cache[point] = Blip2Adapter.load(card, device="cpu", cache_dir=tiny_cache, point=point)
        return cache[point]

    return load


@pytest.fixture(scope="session")
def blip2_full(blip2_tiny_dir):
    """The whole tiny model, loaded the ordinary transformers way: the reference for exactness tests."""
    from transformers import Blip2ForConditionalGeneration

    model = Blip2ForConditionalGeneration.from_pretrained(blip2_tiny_dir)
    model.eval()
    assert next(model.parameters()).dtype == torch.float32
    return model


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a small shared machine threads thrash (3x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
