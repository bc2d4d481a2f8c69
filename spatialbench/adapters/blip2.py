"""BLIP-2: Q-Former query outputs (raw) -> language_projection (what the LLM reads)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .base import CheckpointAdapter, decoder_inputs, register_family
from .layers import Tap, stack, vision_depths
from .tiny import IMAGE_SIZE, tiny_builder, word_tokenizer

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


@register_family("blip2")
class Blip2Adapter(CheckpointAdapter):
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


@tiny_builder("blip2-tiny")
def build_blip2_tiny(out: Path) -> None:
    _build_tiny(out, seq2seq=False)


@tiny_builder("blip2-t5-tiny")
def build_blip2_t5_tiny(out: Path) -> None:
    """Like blip2-flan-t5-xl: a seq2seq LLM, so a reference forward needs a decoder input."""
    _build_tiny(out, seq2seq=True)


def _build_tiny(out: Path, seq2seq: bool) -> None:
    from transformers import (
        BlipImageProcessor,
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        OPTConfig,
        T5Config,
    )

    tokenizer = word_tokenizer()
    vision = Blip2VisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8,
        initializer_range=0.05,  # the default 1e-10 maps every image to the same features
    )
    qformer = Blip2QFormerConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        encoder_hidden_size=32, vocab_size=len(tokenizer),
        # At 0.02 the cross-attention barely moves the queries: prompts differ by ~1e-4 across images.
        initializer_range=0.5,
    )
    if seq2seq:  # like Flan-T5 (gated-gelu, untied head)
        text = T5Config(d_model=48, d_kv=24, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=2,
                        vocab_size=len(tokenizer), feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    else:
        text = OPTConfig(
            hidden_size=48, word_embed_proj_dim=48, num_hidden_layers=2, ffn_dim=96, num_attention_heads=2,
            vocab_size=len(tokenizer), max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    config = Blip2Config(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=8, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.5)  # zero-initialised queries would all be identical
        # A trained ViT's patch features carry their position strongly; at the default scale (0.05, next to
        # ~0.7 from the patch projection) a random one barely does, and a cross-attending resampler, which
        # sees patches as an unordered set, then has no "where" to learn even when trained jointly.
        model.vision_model.embeddings.position_embedding.normal_(0.0, 1.0)
    model.save_pretrained(out, max_shard_size="100KB")
    tokenizer.save_pretrained(out)
    BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(out)


from . import testbed as _testbed  # noqa: E402,F401  registers the pretrained BLIP-2 testbed builds
