"""BLIP-2: Q-Former query outputs (raw) -> language_projection (what the LLM reads)."""

from __future__ import annotations

import torch
from torch import nn
from PIL import Image

from ..specs import ModelCard
from .base import Adapter, register_family
from .loading import Checkpoint, input_embedding_key, materialise_module, resolve

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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


@register_family("blip2")
class Blip2Adapter(Adapter):
    def __init__(self, card: ModelCard, checkpoint: Checkpoint, parts: Blip2Parts, embeddings: nn.Embedding,
                 tokenizer, processor, point: str | None, device: str):
        super().__init__(card, point)
        self.checkpoint, self.parts, self.embeddings = checkpoint, parts, embeddings
        self.tokenizer, self.processor, self.device = tokenizer, processor, torch.device(device)
        self.dtype = DTYPES[card.dtype]

    @classmethod
    def load(cls, card: ModelCard, *, device: str = "cpu", cache_dir=None, point: str | None = None) -> Blip2Adapter:
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        ckpt = resolve(card.checkpoint, card.revision, cache_dir)
        config = AutoConfig.from_pretrained(ckpt.root)
        embed_key = input_embedding_key(config.text_config, "language_model.")
        tensors = ckpt.load(lambda k: k.startswith(EXTRACTION_PREFIXES) or k == embed_key)
        with torch.device("meta"):
            parts = Blip2Parts(config)
        materialise_module(parts, {k: v for k, v in tensors.items() if k != embed_key})
        dtype = DTYPES[card.dtype]
        parts.vision_model.to(dtype)
        parts.language_projection.to(dtype)
        # As transformers does: under float16 the Q-Former and queries stay fp32 (_keep_in_fp32_modules);
        # under bfloat16 they are cast like the rest.
        resampler_dtype = torch.float32 if dtype == torch.float16 else dtype
        parts.qformer.to(resampler_dtype)
        parts.query_tokens.data = parts.query_tokens.data.to(resampler_dtype)
        embeddings = nn.Embedding.from_pretrained(tensors[embed_key].to(dtype), freeze=True)
        adapter = cls(card, ckpt, parts, embeddings,
                      AutoTokenizer.from_pretrained(ckpt.root), AutoImageProcessor.from_pretrained(ckpt.root),
                      point, device)
        adapter.loaded_keys = set(tensors)
        parts.to(device).eval().requires_grad_(False)
        embeddings.to(device)
        return adapter

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.parts.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state

    def resample(self, vision_features: torch.Tensor, text: list[str] | None = None) -> torch.Tensor:
        return self.parts.resample(vision_features, project=self.point == "projected")

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        return self.embeddings(enc["input_ids"]), enc["attention_mask"]

    def resampler_parameters(self) -> list[nn.Parameter]:
        params = [self.parts.query_tokens, *self.parts.qformer.parameters()]
        if self.point == "projected":
            params += list(self.parts.language_projection.parameters())
        return params

    def fingerprint(self) -> str:
        return f"blip2|{self.checkpoint.fingerprint()}|{self.point}|{self.card.dtype}"

    @property
    def prompt_shape(self) -> tuple[int, int]:
        q = self.parts.query_tokens.shape[1]
        return (q, self.parts.language_projection.out_features if self.point == "projected" else self.parts.query_tokens.shape[2])

    @property
    def text_dim(self) -> int:
        return self.embeddings.embedding_dim
