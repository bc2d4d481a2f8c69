"""Kosmos-2: vision features -> image_to_text_projection (64 latent queries) -> the text model's `image_embeds`.

The data path, as Kosmos2ForConditionalGeneration.get_image_features runs it:

    CLIP ViT last_hidden_state [B, 257, 1024]
      -> vision_model.model.post_layernorm -> F.normalize(dim=-1)          = "vision_patches" (CLS included)
      -> image_to_text_projection: dense (1024 -> 2048), then 64 learned latent queries cross-attend
         (x_attn) to [dense(features); latent queries]                      = "projected" = "resampler"
      -> text_model(image_embeds=...): written at the image-token positions of inputs_embeds, and only then
         multiplied, with the text token embeddings, by embed_scale = sqrt(2048) inside the text model.

The prompt is what is passed as `image_embeds`, before that embed_scale multiplication; embed_text returns the
token embeddings before it too, so prompt and text stay on the scale the text model puts side by side.

Points: Kosmos-2 has no projection after its resampler. image_to_text_projection *is* the resampler (the linear
map `dense` comes first, the latent-query cross-attention last), and its output already has the LLM's width and is
what the text model reads. So "resampler" and "projected" are the same tensor: both names are accepted (a run over
several families at `--point resampler` still works), both train the same parameters (the whole
image_to_text_projection), and their fingerprints differ only by the point name.
"""

from __future__ import annotations


import torch
from torch import nn

from ..errors import SpatialbenchError
from ..specs import ModelCard
from .base import CheckpointAdapter
from .layers import Tap, stack, vision_depths

EXTRACTION_PREFIXES = ("vision_model.", "image_to_text_projection.")
EMBED_KEY = "text_model.model.embed_tokens.weight"  # Kosmos2TextForCausalLM.get_input_embeddings(), as saved


class Kosmos2Parts(nn.Module):
    """The parts of Kosmos2ForConditionalGeneration that produce the visual prompt, same names as there."""

    def __init__(self, config):
        from transformers.models.kosmos2.modeling_kosmos2 import Kosmos2ImageToTextProjection, Kosmos2VisionModel

        super().__init__()
        self.vision_model = Kosmos2VisionModel._from_config(config.vision_config)
        # x_attn dispatches on text_config._attn_implementation. from_pretrained resolves one implementation for
        # the whole (composite) model, the one _from_config just chose for the vision tower (same model class
        # family, same support flags); left unset it would fall back to eager and differ in the last bits.
        config.text_config._attn_implementation = self.vision_model.config._attn_implementation
        self.image_to_text_projection = Kosmos2ImageToTextProjection(config)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Mirrors Kosmos2ForConditionalGeneration.get_image_features step for step, so results are bit-equal.
        out = self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
        return nn.functional.normalize(self.vision_model.model.post_layernorm(out), dim=-1)

    def resample(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_to_text_projection(features)[0]


def shape_at(config, point: str) -> tuple[int, int]:
    """Visual-prompt shape from a Kosmos2Config alone (no weights needed)."""
    if point == "vision_patches":
        v = config.vision_config
        return ((v.image_size // v.patch_size) ** 2 + 1, v.hidden_size)
    return (config.latent_query_num, config.text_config.embed_dim)  # resampler == projected


class Kosmos2Adapter(CheckpointAdapter):
    """Kosmos-2 (see the module docstring: "resampler" and "projected" are one tensor here)."""

    family = "kosmos2"

    hf_class = "Kosmos2ForConditionalGeneration"
    config_shape = staticmethod(shape_at)
    parts_class = Kosmos2Parts
    prefixes = EXTRACTION_PREFIXES

    @classmethod
    def check_config(cls, card: ModelCard, checkpoint, config) -> None:
        if config.model_type != "kosmos-2":
            raise SpatialbenchError(f"checkpoint '{card.checkpoint}' is a '{config.model_type}' model, not Kosmos-2",
                                    field="family", fix="set the card's family to the checkpoint's family")

    @classmethod
    def embedding_key(cls, config, names: dict[str, str]) -> str:
        if EMBED_KEY not in names:
            raise SpatialbenchError(f"checkpoint has no '{EMBED_KEY}'", field="checkpoint",
                                    fix="use a checkpoint saved by Kosmos2ForConditionalGeneration.save_pretrained")
        return EMBED_KEY

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """normalize(post_layernorm(ViT last_hidden_state)): exactly what image_to_text_projection reads."""
        return self.parts.vision_features(pixel_values)

    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        """image_to_text_projection's output: the text model's `image_embeds` (before embed_scale)."""
        return self.parts.resample(vision_features)

    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # Kosmos2Processor puts <s> before the image and tokenises the text after it without special tokens, so
        # these are the embeddings of the text exactly as the model reads it (before embed_scale, like the prompt).
        enc = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(self.device)
        return self.embeddings(enc["input_ids"]), enc["attention_mask"]

    def layer_taps(self) -> dict[str, Tap]:
        # Vision blocks: their raw output, CLS included, so (N + 1, D) like vision_patches (the last block's, after
        # post_layernorm and normalize). The resampler is one layer, the latent queries' cross-attention x_attn:
        # its output is the resampler point itself, declared anyway so a layer sweep ends at the resampler.
        blocks = vision_depths(self.config.vision_config.num_hidden_layers)
        return {**stack("vision", "vision_model.model.encoder.layers", blocks, "vision_patches"),
                "resampler.1": Tap("image_to_text_projection.x_attn", "resampler")}

    def resampler_parameters(self) -> list[nn.Parameter]:
        if self.point == "vision_patches":
            return []
        return list(self.parts.image_to_text_projection.parameters())  # dense, latent_query, x_attn

    def reference_prompts(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> dict[str, torch.Tensor]:
        from transformers import Kosmos2ForConditionalGeneration

        model = Kosmos2ForConditionalGeneration.from_pretrained(self.checkpoint.root, dtype=self.dtype).eval()
        model.to(self.device)
        captured: dict[str, torch.Tensor] = {}
        model.text_model.register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("lm", kw["image_embeds"]), with_kwargs=True)
        model.image_to_text_projection.register_forward_pre_hook(lambda m, a: captured.__setitem__("vision", a[0]))
        q, b = model.config.latent_query_num, pixel_values.shape[0]
        # <s> <image> [q image slots] </image>, as Kosmos2Processor lays it out; the slot ids are overwritten.
        ids = torch.full((b, q + 3), model.config.text_config.bos_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        mask[:, 2:q + 2] = 1
        with torch.no_grad(), self.reference_layers(model) as layers:
            model(pixel_values=pixel_values, input_ids=ids, image_embeds_position_mask=mask)
        return {"projected": captured["lm"], "resampler": captured["lm"], "vision_patches": captured["vision"],
                **layers}
