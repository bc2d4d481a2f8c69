"""IDEFICS (v1): CLIP-like vision tower -> Perceiver Resampler latents -> the LLM's gated cross-attention.

IDEFICS does not put its visual prompt into the LLM's `inputs_embeds`. The Perceiver Resampler's output
(64 latents x the *vision* width, 1280 for idefics-9b/80b) is passed unchanged, as `image_hidden_states`,
to every gated cross-attention layer, which projects it with its own per-layer `k_proj`/`v_proj` (LLM
parameters, one pair per cross-attention layer, so there is no single "projection" to extract).

Points: `resampler` is the Perceiver's output; `projected` is, by the contract, what the LLM receives,
and here that is the very same tensor, so `projected` is an alias of `resampler` (same prompt, same
trained parameters, same shape). We keep the alias rather than drop the point so that `projected` means
"the LLM's visual input" for every family and a sweep at `--point projected` covers IDEFICS too; the
fingerprint still names the requested point. `vision_patches` is the vision tower's last hidden state
(CLS + patches), which is what the resampler reads.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from ..errors import SpatialbenchError
from ..specs import ModelCard
from .base import CheckpointAdapter
from .layers import Tap, stack, vision_depths
from .loading import materialise_module

EXTRACTION_PREFIXES = ("model.vision_model.", "model.perceiver_resampler.")
EMBED_PREFIX = "model.embed_tokens."  # weight (+ additional_embedding.weight: the decoupled extra vocab)
IMAGE_TOKENS = ("<fake_token_around_image>", "<image>")


@functools.cache
def _parts_class():
    from transformers.models.idefics.modeling_idefics import IdeficsPreTrainedModel
    from transformers.models.idefics.perceiver import IdeficsPerceiverResampler
    from transformers.models.idefics.vision import IdeficsVisionTransformer

    class IdeficsParts(IdeficsPreTrainedModel):
        """The parts of IdeficsModel that make the visual prompt, under the same names (less `model.`).

        A PreTrainedModel so transformers picks the attention implementation exactly as for the full
        model (IdeficsModel hands its choice on to the vision tower, as done here).
        """

        def __init__(self, config):
            super().__init__(config)
            config.vision_config._attn_implementation = config._attn_implementation
            p = config.perceiver_config
            self.vision_model = IdeficsVisionTransformer(config.vision_config)
            self.perceiver_resampler = IdeficsPerceiverResampler(
                config, config.vision_config.embed_dim, p.resampler_depth, p.resampler_n_heads,
                p.resampler_head_dim, p.resampler_n_latents)
            self.post_init()

    return IdeficsParts


@dataclass(frozen=True)
class LatentsIn(Tap):
    """The latents entering a perceiver block: its attention is called as attn(context, latents)."""

    def take(self, value) -> torch.Tensor:
        return value[1]


def perceiver_taps(config) -> dict[str, Tap]:
    """The vision tower at a few depths and every perceiver block's latents. A block adds its attention and MLP
    to the latents (`latents = ff(latents) + latents`), a sum no module returns: block n's result is what block
    n + 1's attention reads as latents, and the last block's is what enters the final layer_norm."""
    v, depth = config.vision_config, config.perceiver_config.resampler_depth
    blocks = {f"resampler.{n}": LatentsIn(f"perceiver_resampler.blocks.{n}.0", "resampler", read="input")
              for n in range(1, depth)}
    return {**stack("vision", "vision_model.encoder.layers", vision_depths(v.num_hidden_layers), "vision_patches"),
            **blocks, f"resampler.{depth}": Tap("perceiver_resampler.layer_norm", "resampler", read="input")}


def shape_at(config, point: str) -> tuple[int, int]:
    """Visual-prompt shape from an IdeficsConfig alone: (latents, vision width) or (patches + CLS, vision width)."""
    v = config.vision_config
    if point == "vision_patches":
        return ((v.image_size // v.patch_size) ** 2 + 1, v.embed_dim)
    return (config.perceiver_config.resampler_n_latents, v.embed_dim)  # resampler and projected alike


class IdeficsAdapter(CheckpointAdapter):
    family = "idefics"

    split_pixels = False  # its processor's output is reshaped below (one image per prompt)
    hf_class = "IdeficsForVisionText2Text"
    config_shape = staticmethod(shape_at)
    parts_class = staticmethod(lambda config: _parts_class()(config))
    prefixes, strip = EXTRACTION_PREFIXES, "model."

    @classmethod
    def check_config(cls, card: ModelCard, checkpoint, config) -> None:
        if not config.use_resampler:
            raise SpatialbenchError(f"checkpoint '{card.checkpoint}' has no Perceiver Resampler (use_resampler=false)",
                                    field="checkpoint", fix="the idefics family needs a checkpoint with use_resampler")

    @classmethod
    def embedding_key(cls, config, names: dict[str, str]) -> str:
        return EMBED_PREFIX + "weight"  # the LLM is the model itself: no text_config

    @classmethod
    def embedding_table(cls, config, tensors: dict[str, torch.Tensor]) -> nn.Module:
        from transformers.models.idefics.modeling_idefics import IdeficsDecoupledEmbedding

        with torch.device("meta"):
            table = IdeficsDecoupledEmbedding(num_embeddings=config.vocab_size, embedding_dim=config.hidden_size,
                                              num_additional_embeddings=config.additional_vocab_size,
                                              padding_idx=config.pad_token_id)
        materialise_module(table, tensors)
        return table.eval()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        # IdeficsProcessor copies these, one image per prompt, into pixel_values[:, 0].
        pixels = self.processor(images=self.fit(images), return_tensors="pt")
        pixels = pixels["pixel_values"] if not isinstance(pixels, torch.Tensor) else pixels
        return pixels.to(self.device, self.dtype)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.parts.vision_model(pixel_values=pixel_values).last_hidden_state

    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        return self.parts.perceiver_resampler(vision_features)  # resampler == projected: see the docstring

    def resampler_parameters(self) -> list[nn.Parameter]:
        return list(self.parts.perceiver_resampler.parameters())  # no projection outside the LLM exists

    def layer_taps(self) -> dict[str, Tap]:
        return perceiver_taps(self.config)

    def reference_prompts(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> dict[str, torch.Tensor]:
        from transformers import IdeficsForVisionText2Text

        model = IdeficsForVisionText2Text.from_pretrained(self.checkpoint.root, dtype=self.dtype).eval()
        model.to(self.device)
        ids, image_mask = prompt_inputs(self.tokenizer, text or [""] * pixel_values.shape[0])
        with self.reference_layers(model) as layers:
            prompts = capture_prompts(model, pixel_values[:, None], ids.to(self.device), image_mask.to(self.device))
        return {**prompts, **layers}


def prompt_inputs(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and image_attention_mask as IdeficsProcessor makes them for [image, text] prompts."""
    from transformers.models.idefics.processing_idefics import (
        image_attention_mask_for_packed_input_ids,
        incremental_to_binary_attention_mask,
    )

    fake, image = IMAGE_TOKENS
    full = [f"{tokenizer.bos_token}{fake}{image}{fake}{t}" for t in texts]
    ids = tokenizer(full, add_special_tokens=False, padding="longest", return_tensors="pt")["input_ids"]
    mask, _ = image_attention_mask_for_packed_input_ids(ids, tokenizer, "pt")
    return ids, incremental_to_binary_attention_mask(mask, "pt", num_classes=1)


def capture_prompts(model, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    image_attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the full model; return what its first gated cross-attention layer reads as image_hidden_states
    ("projected"), the Perceiver's output ("resampler") and the vision tower's ("vision_patches")."""
    inner = model.model
    xattn = inner.gated_cross_attn_layers[0]
    signature = inspect.signature(xattn.forward)
    captured: dict[str, torch.Tensor] = {}

    def xattn_hook(module, args, kwargs):  # image_hidden_states is passed positionally
        captured["projected"] = signature.bind(*args, **kwargs).arguments["image_hidden_states"]

    handles = [
        xattn.register_forward_pre_hook(xattn_hook, with_kwargs=True),
        inner.perceiver_resampler.register_forward_hook(lambda m, a, out: captured.__setitem__("resampler", out)),
        inner.vision_model.register_forward_hook(lambda m, a, out: captured.__setitem__("vision_patches", out[0])),
    ]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, pixel_values=pixel_values, image_attention_mask=image_attention_mask)
    finally:
        for h in handles:
            h.remove()
    return captured
