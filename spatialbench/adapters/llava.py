"""LLaVA-1.5, the non-resampler baseline: CLIP patch features -> MLP projector -> LLM inputs_embeds.

There is no compression: every patch token of the selected vision layer (vision_feature_layer=-2, CLS
dropped under vision_feature_select_strategy="default": 576 tokens at 336 px, patch 14) goes through the
two-layer MLP `multi_modal_projector` into the LLM's inputs_embeds at the image-token positions.

Points: `projected` (the projector output, what the LLM reads) and `vision_patches` (the selected vision
features, what the projector reads). There is no `resampler` point: no module sits between the two, so
it would either repeat `projected` or invent a layer the model does not have. In the joint regime the
trainable "resampler" is the projector: resampler_parameters() is the projector's parameters (none at
`vision_patches`, where nothing lies between the vision features and the prompt).

Checkpoint layouts handled by the selective loader (all map to this module's names):
  Hub (llava-hf/llava-1.5-7b-hf, legacy):  vision_tower.vision_model.*, multi_modal_projector.*,
                                           language_model.model.embed_tokens.weight, language_model.lm_head.*
  save_pretrained of transformers 5.x:     vision_tower.* (CLIP without `vision_model.`), otherwise legacy
  transformers 5.x module names:           model.vision_tower.*, model.multi_modal_projector.*,
                                           model.language_model.embed_tokens.weight, lm_head.weight
"""

from __future__ import annotations


import torch
from torch import nn

from ..errors import SpatialbenchError
from .base import CheckpointAdapter
from .layers import Tap, stack, vision_depths

POINTS = ("projected", "vision_patches")


class LlavaParts(nn.Module):
    """The parts of LlavaModel that produce the visual prompt, under the same names as there."""

    def __init__(self, config):
        from transformers import AutoModel
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        super().__init__()
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(config)
        self.feature_layer = config.vision_feature_layer
        self.select_strategy = config.vision_feature_select_strategy

    def select(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Mirrors LlavaModel.get_image_features up to the projector, step for step, so results are bit-equal.
        out = self.vision_tower(pixel_values, return_dict=True, output_hidden_states=self.feature_layer)
        layers = [self.feature_layer] if isinstance(self.feature_layer, int) else self.feature_layer
        pool = [out.hidden_states[i] for i in layers]
        if self.select_strategy == "default":  # drop the CLS token
            pool = [h[:, 1:] for h in pool]
        return pool[0] if isinstance(self.feature_layer, int) else torch.cat(pool, dim=-1)


def _candidates(key: str) -> list[str]:
    """The names a checkpoint key may have in LlavaParts (or the embedding table), in any layout above."""
    if key.startswith("model."):  # transformers 5.x module names
        key = key.removeprefix("model.")
    if key.startswith("language_model.model."):  # legacy LLM prefix (a CausalLM inside)
        key = "language_model." + key.removeprefix("language_model.model.")
    if key.startswith("vision_tower.vision_model."):  # CLIPVisionModel before 5.x kept a vision_model.
        return [key, "vision_tower." + key.removeprefix("vision_tower.vision_model.")]
    if key.startswith("vision_tower."):
        return [key, "vision_tower.vision_model." + key.removeprefix("vision_tower.")]
    return [key]


def shape_at(config, point: str) -> tuple[int, int]:
    """Visual-prompt shape from a LlavaConfig alone (no weights needed)."""
    if point not in POINTS:
        raise SpatialbenchError(f"family 'llava' has no extraction point '{point}' (LLaVA has no resampler)",
                                field="point", fix=f"choose one of {list(POINTS)}")
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + (0 if config.vision_feature_select_strategy == "default" else 1)
    if point == "projected":
        return (tokens, config.text_config.hidden_size)
    layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
    return (tokens, v.hidden_size * layers)


class LlavaAdapter(CheckpointAdapter):
    family = "llava"

    hf_class = "LlavaForConditionalGeneration"
    config_shape = staticmethod(shape_at)
    cached_as = {"projected": ("vision_patches", "parts.multi_modal_projector")}  # the projection runs per batch

    points = POINTS
    parts_class = LlavaParts
    prefixes = ("vision_tower.", "multi_modal_projector.")

    @classmethod
    def canonical(cls, key: str, known: set[str]) -> str | None:
        names = _candidates(key)
        return next((n for n in names if n in known), names[0])

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.parts.select(pixel_values)

    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        return self.parts.multi_modal_projector(vision_features) if self.point == "projected" else vision_features

    def layer_taps(self) -> dict[str, Tap]:
        # Vision blocks only: no resampler. CLIPVisionModel (transformers 5) holds its encoder directly.
        blocks = vision_depths(self.config.vision_config.num_hidden_layers)
        return stack("vision", "vision_tower.encoder.layers", blocks, "vision_patches")

    def shape_at(self, point: str) -> tuple[int, int]:
        if point in self.layer_taps():
            # A block's whole output, CLS kept (a Tap cannot drop it), one layer wide: vision_patches may differ
            # in both (CLS dropped under "default", several layers concatenated for a list vision_feature_layer).
            v = self.config.vision_config
            return ((v.image_size // v.patch_size) ** 2 + 1, v.hidden_size)
        return super().shape_at(point)

    def reference_root(self, model: nn.Module) -> nn.Module:
        return model.model  # LlavaForConditionalGeneration keeps vision_tower and the projector on its LlavaModel

    def resampler_parameters(self) -> list[nn.Parameter]:
        """The projector (LLaVA's only trainable connector) at `projected`; nothing at `vision_patches`."""
        return list(self.parts.multi_modal_projector.parameters()) if self.point == "projected" else []

    def reference_prompts(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> dict[str, torch.Tensor]:
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(self.checkpoint.root, dtype=self.dtype).eval()
        model.to(self.device)
        captured: dict[str, torch.Tensor] = {}
        model.model.language_model.register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("lm", kw["inputs_embeds"]), with_kwargs=True)
        model.model.multi_modal_projector.register_forward_pre_hook(lambda m, a: captured.__setitem__("patches", a[0]))
        q = shape_at(model.config, "projected")[0]
        ids = torch.full((pixel_values.shape[0], q + 2), model.config.image_token_id, device=self.device)
        ids[:, q:] = self.tokenizer.eos_token_id
        with torch.no_grad(), self.reference_layers(model) as layers:
            model(pixel_values=pixel_values, input_ids=ids)
        return {"projected": captured["lm"][:, :q], "vision_patches": captured["patches"], **layers}
