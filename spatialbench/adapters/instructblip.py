"""InstructBLIP: the Q-Former reads the image and the instruction; query outputs (raw) -> language_projection.

Unlike BLIP-2 the Q-Former also reads text: the instruction, tokenised by the checkpoint's own Q-Former
tokenizer (a BERT tokenizer that InstructBlipProcessor keeps in the `qformer_tokenizer/` subfolder). The
probe's query text (a VSR caption, a referring expression) goes there; with no text the instruction is the
empty string, which the BERT tokenizer turns into `[CLS] [SEP]`, exactly what the processor feeds for "".
"""

from __future__ import annotations


import torch
from pydantic import Field, StrictBool
from torch import nn

from ..errors import SpatialbenchError
from ..specs import ModelCard
from .base import AdapterOptions, CheckpointAdapter, decoder_inputs
from .blip2 import qformer_taps, shape_at  # the same config fields
from .layers import Tap

EXTRACTION_PREFIXES = ("vision_model.", "qformer.", "query_tokens", "language_projection.")
QFORMER_TOKENIZER = "qformer_tokenizer"  # the subfolder InstructBlipProcessor.save_pretrained writes it to


class InstructBlipParts(nn.Module):
    """The parts of InstructBlipForConditionalGeneration that produce the visual prompt, same names as there."""

    def __init__(self, config):
        from transformers.models.instructblip.modeling_instructblip import (
            InstructBlipQFormerModel,
            InstructBlipVisionModel,
        )

        super().__init__()
        self.vision_model = InstructBlipVisionModel._from_config(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = InstructBlipQFormerModel._from_config(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)

    def resample(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 project: bool) -> torch.Tensor:
        # Mirrors InstructBlipForConditionalGeneration.get_image_features step for step, so results are bit-equal.
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        query_mask = torch.ones(queries.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.qformer(
            input_ids=input_ids, attention_mask=torch.cat([query_mask, attention_mask], dim=1), query_embeds=queries,
            encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask, return_dict=True,
        )[0][:, : queries.shape[1]]
        return self.language_projection(out) if project else out


class InstructBlipOptions(AdapterOptions):
    text_conditioning: StrictBool = Field(True, description="on implicit tasks the Q-Former reads the probe's query "
                                    "text; false: always the empty instruction, one prompt per image")


class InstructBlipAdapter(CheckpointAdapter):
    family = "instructblip"

    hf_class = "InstructBlipForConditionalGeneration"
    config_shape = staticmethod(shape_at)
    cached_as = {"projected": ("resampler", "parts.language_projection")}  # the projection runs per batch

    reads_text = True
    options_model = InstructBlipOptions
    parts_class = InstructBlipParts
    prefixes = EXTRACTION_PREFIXES

    @classmethod
    def check_config(cls, card: ModelCard, checkpoint, config) -> None:
        if not (checkpoint.root / QFORMER_TOKENIZER).is_dir():
            raise SpatialbenchError(
                f"checkpoint '{card.checkpoint}' has no Q-Former tokenizer ({QFORMER_TOKENIZER}/ beside config.json)",
                field="checkpoint", fix="save the checkpoint's processor with InstructBlipProcessor.save_pretrained")

    def prepare(self) -> None:
        from transformers import AutoTokenizer

        self.qformer_tokenizer = AutoTokenizer.from_pretrained(self.checkpoint.root / QFORMER_TOKENIZER)

    def instruction(self, text: list[str] | None, batch: int) -> dict[str, torch.Tensor]:
        """qformer_input_ids / qformer_attention_mask as InstructBlipProcessor(text=..., padding=True) makes them."""
        texts = [""] * batch if text is None else list(text)
        if len(texts) != batch:
            raise ValueError(f"{len(texts)} instruction texts for a batch of {batch}")
        enc = self.qformer_tokenizer(texts, padding=True, truncation=True, return_token_type_ids=False,
                                     max_length=self.config.qformer_config.max_position_embeddings, return_tensors="pt")
        return {"qformer_input_ids": enc["input_ids"].to(self.device),
                "qformer_attention_mask": enc["attention_mask"].to(self.device)}

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.parts.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state

    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        ins = self.instruction(text, vision_features.shape[0])
        return self.parts.resample(vision_features, ins["qformer_input_ids"], ins["qformer_attention_mask"],
                                   project=self.point == "projected")

    def layer_taps(self) -> dict[str, Tap]:
        return qformer_taps(self.config)  # the instruction's tokens follow the queries: cut off

    def resampler_parameters(self) -> list[nn.Parameter]:
        # The last Q-Former layer's text feed-forward (intermediate, output) only produces text states that
        # nothing reads: it is not between the vision features and the prompt.
        last = self.parts.qformer.encoder.layer[-1]
        dead = {id(p) for m in (last.intermediate, last.output) for p in m.parameters()}
        params = [self.parts.query_tokens, *(p for p in self.parts.qformer.parameters() if id(p) not in dead)]
        if self.point == "projected":
            params += list(self.parts.language_projection.parameters())
        return params

    def reference_prompts(self, pixel_values: torch.Tensor, text: list[str] | None = None) -> dict[str, torch.Tensor]:
        from transformers import InstructBlipForConditionalGeneration

        model = InstructBlipForConditionalGeneration.from_pretrained(self.checkpoint.root, dtype=self.dtype).eval()
        model.to(self.device)
        captured: dict[str, torch.Tensor] = {}
        model.language_model.register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("lm", kw["inputs_embeds"]), with_kwargs=True)
        model.qformer.register_forward_hook(lambda m, a, out: captured.__setitem__("qformer", out[0]))
        model.vision_model.register_forward_hook(lambda m, a, out: captured.__setitem__("vision", out[0]))
        b, q = pixel_values.shape[0], model.config.num_query_tokens
        ids = torch.full((b, q + 1), model.config.image_token_index, device=self.device)
        ids[:, q:] = self.tokenizer.eos_token_id
        with torch.no_grad(), self.reference_layers(model) as layers:
            model(pixel_values=pixel_values, input_ids=ids, **self.instruction(text, b),
                  **decoder_inputs(model.config, b, self.device))
        return {"projected": captured["lm"][:, :q], "resampler": captured["qformer"][:, :q],
                "vision_patches": captured["vision"], **layers}
