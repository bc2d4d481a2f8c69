"""A family for any Hugging Face VLM, configured entirely by its model card.

The card names the model class, the method that turns pixels into the visual prompt (transformers 5.x
VLMs expose `get_image_features`), and submodules: the one whose output is the visual prompt at each
extraction point (captured with forward hooks), and the ones the joint regime trains. Unlike the
dedicated adapters it loads the whole checkpoint, LLM included, because it cannot know which tensors
extraction needs.

    family: generic
    checkpoint: some-org/some-vlm
    options:
      model_class: AutoModelForImageTextToText   # or a transformers class name, or "package.module:Class"
      image_features: get_image_features
      projected_module: language_projection      # output = what the LLM receives
      resampler_module: qformer                  # output = the raw resampler output
      vision_module: vision_model                # output = the patch tokens the resampler reads
      resampler_modules: [query_tokens, qformer] # trained by the joint regime
      projection_modules: [language_projection]  # also trained when the point is `projected`
      lm_module: language_model                  # for the conformance check: reads inputs_embeds
      trust_remote_code: false                   # true also needs `run --trust-remote-code`
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager

import torch
from pydantic import Field
from torch import nn

from ..errors import SpatialbenchError
from ..specs import ModelCard
from .base import DTYPES, Adapter, AdapterOptions, card_options
from .loading import resolve
from .pixels import ProcessorPixels


class GenericOptions(AdapterOptions):
    model_class: str = "AutoModelForImageTextToText"
    image_features: str = "get_image_features"
    projected_module: str | None = None
    resampler_module: str | None = None
    vision_module: str
    resampler_modules: list[str] = Field(min_length=1)
    projection_modules: list[str] = Field(default_factory=list)
    lm_module: str | None = None
    image_token_attr: str = "image_token_id"
    trust_remote_code: bool = False


def _model_class(name: str):
    import transformers

    if ":" in name:
        module, attr = name.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    if not hasattr(transformers, name):
        raise SpatialbenchError(f"transformers has no class '{name}'", field="options.model_class",
                                fix="use a transformers class name or 'package.module:Class'")
    return getattr(transformers, name)


def _first(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


class _Given(nn.Module):
    """Stands in for the vision encoder so the rest of the model runs on cached features."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, *args, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(last_hidden_state=self.features, pooler_output=self.features[:, 0])


class GenericAdapter(ProcessorPixels, Adapter):
    family = "generic"

    options_model = GenericOptions
    @classmethod
    def runtime_class(cls, card: ModelCard) -> str:
        return str(card.options.get("model_class", "AutoModelForImageTextToText"))

    def __init__(self, card: ModelCard, options: GenericOptions, model, tokenizer, processor, checkpoint,
                 point: str | None, device: str):
        super().__init__(card, point)
        self.options, self.model, self.tokenizer, self.processor = options, model, tokenizer, processor
        self.checkpoint, self.device, self.dtype = checkpoint, torch.device(device), DTYPES[card.dtype]
        modules = {"projected": options.projected_module, "resampler": options.resampler_module}
        if self.point != "vision_patches" and not modules[self.point]:
            raise SpatialbenchError(f"the card names no {self.point}_module", field=f"options.{self.point}_module")
        self._shapes: dict[str, tuple[int, int]] = {}

    @classmethod
    def load(cls, card: ModelCard, *, device: str = "cpu", cache_dir=None, point: str | None = None,
             trust_remote_code: bool = False) -> GenericAdapter:
        from transformers import AutoImageProcessor, AutoTokenizer

        options = card_options(cls, card)
        if options.trust_remote_code and not trust_remote_code:
            raise SpatialbenchError(
                f"model card '{card.name}' sets trust_remote_code: the checkpoint's own Python code would run",
                field="options.trust_remote_code", fix="read that code, then pass --trust-remote-code to allow it")
        ckpt = resolve(card.checkpoint, card.revision, cache_dir)
        remote = options.trust_remote_code
        model = _model_class(options.model_class).from_pretrained(
            ckpt.root, dtype=DTYPES[card.dtype], trust_remote_code=remote)
        model.to(device).eval().requires_grad_(False)
        adapter = cls(card, options, model, AutoTokenizer.from_pretrained(ckpt.root, trust_remote_code=remote),
                      AutoImageProcessor.from_pretrained(ckpt.root, trust_remote_code=remote), ckpt, point, device)
        adapter.loaded_keys = set(ckpt.weight_map)
        return adapter

    def _module(self, name: str) -> nn.Module:
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise SpatialbenchError(f"the model has no submodule '{name}'", field="options") from None

    @contextmanager
    def _capture(self, name: str, store: dict):
        handle = self._module(name).register_forward_hook(lambda m, a, out: store.__setitem__(name, _first(out)))
        try:
            yield
        finally:
            handle.remove()

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _first(self._module(self.options.vision_module)(pixel_values=pixel_values))

    def resample(self, vision_features: torch.Tensor, text=None) -> torch.Tensor:
        name = self.options.projected_module if self.point == "projected" else self.options.resampler_module
        parent_name, _, child = self.options.vision_module.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        original, captured = getattr(parent, child), {}
        setattr(parent, child, _Given(vision_features))
        try:
            with self._capture(name, captured):
                dummy = torch.zeros(vision_features.shape[0], 1, 1, 1, device=self.device, dtype=self.dtype)
                getattr(self.model, self.options.image_features)(pixel_values=dummy)
        finally:
            setattr(parent, child, original)
        return captured[name]

    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        return self.model.get_input_embeddings()(enc["input_ids"]), enc["attention_mask"]

    def resampler_parameters(self) -> list[nn.Parameter]:
        prefixes = list(self.options.resampler_modules)
        if self.point == "projected":
            prefixes += self.options.projection_modules
        return [p for n, p in self.model.named_parameters() if any(n == x or n.startswith(x + ".") for x in prefixes)]

    def fingerprint(self) -> str:
        return (f"generic|{self.options.model_class}|{self.checkpoint.fingerprint()}|{self.point}|{self.card.dtype}"
                f"{self.fit_key()}")

    def shape_at(self, point: str) -> tuple[int, int]:
        if point not in self._shapes:  # measured once on a blank image: the card declares no sizes
            from PIL import Image

            saved, self.point = self.point, point
            try:
                self._shapes[point] = tuple(self.visual_prompt(self.preprocess([Image.new("RGB", (32, 32))])).shape[1:])
            finally:
                self.point = saved
        return self._shapes[point]

    @property
    def text_dim(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def reference_prompts(self, pixel_values: torch.Tensor, text=None) -> dict[str, torch.Tensor]:
        if not self.options.lm_module:
            raise NotImplementedError("the card names no lm_module")
        q = self.shape_at("projected")[0]
        token = getattr(self.model.config, self.options.image_token_attr)
        ids = torch.full((pixel_values.shape[0], q + 1), token, device=self.device)
        ids[:, q] = self.tokenizer.eos_token_id
        captured: dict[str, torch.Tensor] = {}
        handle = self._module(self.options.lm_module).register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("lm", kw["inputs_embeds"]), with_kwargs=True)
        try:
            with torch.no_grad():
                self.model(pixel_values=pixel_values, input_ids=ids)
        finally:
            handle.remove()
        return {"projected": captured["lm"][:, :q]}
