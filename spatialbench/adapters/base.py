"""The adapter contract every resampler family implements, and the family registry."""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from importlib import import_module
from abc import ABC, abstractmethod
from importlib.metadata import entry_points
from operator import attrgetter
from typing import Callable, ClassVar

import torch
from PIL import Image

from ..errors import SpatialbenchError
from ..specs import ModelCard

ENTRY_POINT_GROUP = "spatialbench.adapters"
POINTS = ("resampler", "projected", "vision_patches")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BUILTIN_FAMILIES = ("blip2", "generic", "idefics", "idefics2", "instructblip", "kosmos2", "llava")  # modules of spatialbench.adapters that register a family on import


class Adapter(ABC):
    """Wraps one checkpoint and exposes its visual prompt.

    Extraction points: `projected` is what the LLM receives, `resampler` the resampler's raw output,
    `vision_patches` the vision encoder's patch tokens before any compression (a baseline: what there
    was to keep). `visual_prompt(x)` is `resample(vision_features(x))` (or `vision_features(x)` at
    `vision_patches`) so the joint regime can cache the frozen vision encoder's output and train only
    the resampler. It must equal, exactly, what the model itself feeds its language model.
    """

    family: ClassVar[str] = ""
    reads_text: ClassVar[bool] = False  # True where the resampler reads the query text (InstructBLIP)
    points: ClassVar[tuple[str, ...]] = POINTS
    # Where the prompt at a point is a cheap fixed map of a smaller tensor on the path, the feature cache keeps
    # that tensor and the map runs per batch: point -> (the point cached, the adapter attribute that maps it).
    cached_as: ClassVar[dict[str, tuple[str, str]]] = {}
    hf_class: ClassVar[str] = ""  # the transformers model class whose code the family runs (see runtime_class)

    def __init__(self, card: ModelCard, point: str | None = None):
        self.card = card
        self.point = point or card.point
        if self.point not in self.points:
            raise SpatialbenchError(f"family '{self.family}' has no extraction point '{self.point}'",
                                    field="point", fix=f"choose one of {list(self.points)}")
        self.loaded_keys: set[str] = set()  # checkpoint tensors actually read
        self.skipped_keys: list[str] = []  # read but not used: stored copies of non-persistent buffers
        self.dtype = torch.float32
        self.device = torch.device("cpu")

    @classmethod
    def runtime_class(cls, card: ModelCard) -> str:
        """The transformers class whose modules a run of this card imports (`spatialbench plan` imports it too,
        so the memory it measures in its own process includes that code)."""
        return cls.hf_class

    @classmethod
    @abstractmethod
    def load(cls, card: ModelCard, *, device: str = "cpu", cache_dir=None, point: str | None = None,
             trust_remote_code: bool = False) -> Adapter:
        """Load only what extraction needs from the card's checkpoint."""

    @abstractmethod
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """RGB images -> pixel batch, exactly as the model's own processor prepares them."""

    @abstractmethod
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen vision encoder's output as the resampler reads it, [B, N, Dv]."""

    @abstractmethod
    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        """The visual prompt at this adapter's extraction point (resampler or projected), [B, Q, D]."""

    @abstractmethod
    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings [B, L, Dt], attention mask [B, L]) from the LLM's own input-embedding table."""

    @abstractmethod
    def resampler_parameters(self) -> list[torch.nn.Parameter]:
        """Exactly the parameters the joint regime trains: those between vision features and the prompt."""

    def initialise_resampler(self, seed: int) -> None:
        """Re-draw the resampler's parameters from the model's own initialisation (see initialise.py); a
        family whose initialisation that cannot express overrides this."""
        from .initialise import reinitialise

        reinitialise(self.modules(), self.resampler_parameters(), seed)

    @abstractmethod
    def fingerprint(self) -> str:
        """Checkpoint id + revision (or content digest) + extraction point: the cache key's model part."""

    @abstractmethod
    def shape_at(self, point: str) -> tuple[int, int]:
        """(Q, D) of the visual prompt at an extraction point."""

    @property
    @abstractmethod
    def text_dim(self) -> int:
        """Width of embed_text's output."""

    @property
    def prompt_shape(self) -> tuple[int, int]:
        return self.shape_at(self.point)

    @property
    def prompt_dtype(self) -> torch.dtype:
        return self.dtype

    @property
    def stored_point(self) -> str:
        """The extraction point whose tensor the feature cache keeps for this adapter's point (see cached_as;
        `check-adapter` verifies the map). A subclass that drops the stored point caches the prompt itself."""
        stored = self.cached_as.get(self.point, (self.point, ""))[0]
        return stored if stored in self.points else self.point

    @torch.no_grad()
    def finish(self, stored: torch.Tensor) -> torch.Tensor:
        """The prompt at this adapter's point from the cached tensor at stored_point, on the adapter's device."""
        if self.stored_point == self.point:
            return stored.to(self.device)
        return attrgetter(self.cached_as[self.point][1])(self)(stored.to(self.device, self.dtype))

    def modules(self) -> list[torch.nn.Module]:
        """Every torch module the adapter holds (for parameter bookkeeping and the conformance check)."""
        return [m for m in vars(self).values() if isinstance(m, torch.nn.Module)]

    def parameters(self) -> list[torch.nn.Parameter]:
        seen: dict[int, torch.nn.Parameter] = {}
        for module in self.modules():
            for p in module.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    @contextmanager
    def at_point(self, point: str):
        """Temporarily extract at another point (the vision-feature cache, the vision_patches baseline)."""
        saved, self.point = self.point, point
        try:
            yield self
        finally:
            self.point = saved

    @torch.no_grad()
    def visual_prompt(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        features = self.vision_features(pixel_values)
        return features if self.point == "vision_patches" else self.resample(features, text)

    def reference_prompts(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> dict[str, torch.Tensor]:
        """What the full Hugging Face model itself feeds its language model, captured with hooks.

        Keys are extraction points. Used by the conformance check; it loads the whole model, so it is
        meant for tiny checkpoints. Families that cannot provide it are reported as unchecked.
        """
        raise NotImplementedError


class CheckpointAdapter(Adapter):
    """The common part of the dedicated adapters: a `checkpoint`, its `config`, the LLM's `embeddings`
    table, and a module-level `shape_at(config, point)` named as `config_shape`."""

    config_shape: ClassVar[Callable[[object, str], tuple[int, int]]]

    def __init__(self, card: ModelCard, checkpoint, parts: torch.nn.Module, embeddings: torch.nn.Module, tokenizer,
                 processor, point: str | None, device: str):
        super().__init__(card, point)
        self.checkpoint, self.parts, self.embeddings = checkpoint, parts, embeddings
        self.tokenizer, self.processor, self.device = tokenizer, processor, torch.device(device)
        self.dtype = DTYPES[card.dtype]
        self.config = None  # set by load(): shape_at reads it

    def fingerprint(self) -> str:
        return f"{self.family}|{self.checkpoint.fingerprint()}|{self.point}|{self.card.dtype}"

    def shape_at(self, point: str) -> tuple[int, int]:
        return type(self).config_shape(self.config, point)

    @property
    def text_dim(self) -> int:
        return self.embeddings.embedding_dim


def decoder_inputs(config, batch: int, device) -> dict[str, torch.Tensor]:
    """What a reference forward must add for a seq2seq LLM (T5): one decoder step; nothing for a decoder-only one."""
    if config.use_decoder_only_language_model:
        return {}
    return {"decoder_input_ids": torch.full((batch, 1), config.text_config.decoder_start_token_id, device=device)}


def check_declared(adapter: Adapter) -> None:
    """Refuse a card whose declared shapes (what `spatialbench plan` sized the run with) are not the checkpoint's."""
    declared = adapter.card.declares
    for point, shape in (declared.shapes.items() if declared else []):
        if point in adapter.points and tuple(adapter.shape_at(point)) != tuple(shape):
            raise SpatialbenchError(
                f"card '{adapter.card.name}' declares {list(shape)} at {point}; the checkpoint gives "
                f"{list(adapter.shape_at(point))}", field=f"declares.shapes.{point}",
                fix=f"set it to {list(adapter.shape_at(point))} in the card")


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
    for module in BUILTIN_FAMILIES:
        import_module(f"{__package__}.{module}")

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
