"""The adapter contract every resampler family implements, and the family registry."""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from typing import Callable, ClassVar

import torch
from PIL import Image

from ..errors import SpatialbenchError
from ..specs import ModelCard

ENTRY_POINT_GROUP = "spatialbench.adapters"


class Adapter(ABC):
    """Wraps one checkpoint and exposes its visual prompt.

    `visual_prompt(x)` must equal, exactly, what the model itself feeds its language model at the
    card's extraction point; it is `resample(vision_features(x))` so the joint regime can cache the
    frozen vision encoder's output and train only the resampler.
    """

    family: ClassVar[str] = ""
    reads_text: ClassVar[bool] = False  # True where the resampler reads the query text (InstructBLIP)

    def __init__(self, card: ModelCard, point: str | None = None):
        self.card = card
        self.point = point or card.point
        self.loaded_keys: set[str] = set()  # checkpoint tensors actually read

    @classmethod
    @abstractmethod
    def load(cls, card: ModelCard, *, device: str = "cpu", cache_dir=None, point: str | None = None) -> Adapter:
        """Load only what extraction needs from the card's checkpoint."""

    @abstractmethod
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images -> pixel batch, exactly as the model's own processor prepares them."""

    @abstractmethod
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen vision encoder's output, [B, N, Dv]."""

    @abstractmethod
    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        """The visual prompt at this adapter's extraction point, [B, Q, D]."""

    @abstractmethod
    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings [B, L, Dt], attention mask [B, L]) from the LLM's own input-embedding table."""

    @abstractmethod
    def resampler_parameters(self) -> list[torch.nn.Parameter]:
        """Exactly the parameters the joint regime trains."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Checkpoint id + revision (or content digest) + extraction point: the cache key's model part."""

    @property
    @abstractmethod
    def prompt_shape(self) -> tuple[int, int]:
        """(Q, D) of the visual prompt at this adapter's extraction point."""

    @property
    @abstractmethod
    def text_dim(self) -> int:
        """Width of embed_text's output."""

    @torch.no_grad()
    def visual_prompt(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        return self.resample(self.vision_features(pixel_values), text)


_FAMILIES: dict[str, type[Adapter]] = {}


def register_family(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator: make an adapter family available to model cards by name."""

    def wrap(cls: type[Adapter]) -> type[Adapter]:
        cls.family = name
        _FAMILIES[name] = cls
        return cls

    return wrap


_BROKEN: dict[str, SpatialbenchError] = {}  # entry points that failed to import, reported when asked for


def _load_entry_points() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _FAMILIES or ep.name in _BROKEN:
            continue
        try:
            loaded = ep.load()
        except Exception as e:  # a broken third-party package must not hide the other families
            _BROKEN[ep.name] = SpatialbenchError(
                f"adapter family '{ep.name}' from entry point {ep.value} failed to import: {e}",
                fix=f"fix or uninstall the package that provides '{ep.value}'",
            )
            continue
        if isinstance(loaded, type) and issubclass(loaded, Adapter):
            _FAMILIES.setdefault(ep.name, loaded)
            loaded.family = loaded.family or ep.name


def families() -> dict[str, type[Adapter]]:
    from . import blip2  # noqa: F401  (built-in families register on import)

    _load_entry_points()
    return dict(_FAMILIES)


def get_family(name: str) -> type[Adapter]:
    known = families()
    if name in _BROKEN:
        raise _BROKEN[name]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known families: {', '.join(sorted(known))}"
        raise SpatialbenchError(f"unknown adapter family '{name}'", field="family", fix=hint)
    return known[name]
