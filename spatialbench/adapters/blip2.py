"""BLIP-2: Q-Former query outputs (raw) -> language_projection (what the LLM reads)."""

from __future__ import annotations


import torch
from torch import nn

from .base import CheckpointAdapter, decoder_inputs
from .layers import Tap, stack, vision_depths

EXTRACTION_PREFIXES = ("vision_model.", "qformer.", "query_tokens", "language_projection.")


class Blip2Parts(nn.Module):
    """The parts of Blip2ForConditionalGeneration that produce the visual prompt, same names as there."""

    def __init__(self, config):
        from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2VisionModel

        super().__init__()
        self.vision_model = Blip2VisionModel._from_config(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel._from_config(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)

    def resample(self, image_embeds: torch.Tensor, project: bool) -> torch.Tensor:
        # Mirrors Blip2ForConditionalGeneration.get_image_features step for step, so results are bit-equal.
        mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        out = self.qformer(
            query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=mask, return_dict=True
        )[0]
        if out.dtype != image_embeds.dtype:  # the Q-Former runs in fp32; the model casts back down
            out = out.to(image_embeds.dtype)
        return self.language_projection(out) if project else out


def qformer_taps(config) -> dict[str, Tap]:
    """The vision encoder at a few depths and every Q-Former layer's query outputs (BLIP-2, InstructBLIP); the
    last Q-Former layer is the resampler point itself."""
    return {**stack("vision", "vision_model.encoder.layers", vision_depths(config.vision_config.num_hidden_layers),
                    "vision_patches"),
            **stack("resampler", "qformer.encoder.layer", list(range(1, config.qformer_config.num_hidden_layers + 1)),
                    "resampler", tokens=config.num_query_tokens)}


def shape_at(config, point: str) -> tuple[int, int]:
    """Visual-prompt shape from a Blip2Config alone (no weights needed)."""
    if point == "vision_patches":
        v = config.vision_config
        return ((v.image_size // v.patch_size) ** 2 + 1, v.hidden_size)
    width = config.text_config.hidden_size if point == "projected" else config.qformer_config.hidden_size
    return (config.num_query_tokens, width)


class Blip2Adapter(CheckpointAdapter):
    family = "blip2"
    hf_class = "Blip2ForConditionalGeneration"
    config_shape = staticmethod(shape_at)
    cached_as = {"projected": ("resampler", "parts.language_projection")}  # the projection runs per batch
    parts_class = Blip2Parts
    prefixes = EXTRACTION_PREFIXES

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.parts.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state

    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        return self.parts.resample(vision_features, project=self.point == "projected")

    def layer_taps(self) -> dict[str, Tap]:
        return qformer_taps(self.config)

    def resampler_parameters(self) -> list[nn.Parameter]:
        params = [self.parts.query_tokens, *self.parts.qformer.parameters()]
        if self.point == "projected":
            params += list(self.parts.language_projection.parameters())
        return params

    def reference_prompts(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> dict[str, torch.Tensor]:
        from transformers import Blip2ForConditionalGeneration

        model = Blip2ForConditionalGeneration.from_pretrained(self.checkpoint.root, dtype=self.dtype).eval()
        model.to(self.device)
        captured: dict[str, torch.Tensor] = {}
        model.language_model.register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("lm", kw["inputs_embeds"]), with_kwargs=True)
        model.qformer.register_forward_hook(lambda m, a, out: captured.__setitem__("qformer", out[0]))
        model.vision_model.register_forward_hook(lambda m, a, out: captured.__setitem__("vision", out[0]))
        q = model.config.num_query_tokens
        ids = torch.full((pixel_values.shape[0], q + 2), model.config.image_token_index, device=self.device)
        ids[:, q:] = self.tokenizer.eos_token_id
        with torch.no_grad(), self.reference_layers(model) as layers:
            model(pixel_values=pixel_values, input_ids=ids, **decoder_inputs(model.config, len(ids), self.device))
        resampler = captured["qformer"]
        if resampler.dtype != captured["vision"].dtype:  # what the projection reads
            resampler = resampler.to(captured["vision"].dtype)
        return {"projected": captured["lm"][:, :q], "resampler": resampler, "vision_patches": captured["vision"],
                **layers}
