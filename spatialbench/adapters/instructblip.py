"""InstructBLIP: the Q-Former reads the image and the instruction; query outputs (raw) -> language_projection.

Unlike BLIP-2 the Q-Former also reads text: the instruction, tokenised by the checkpoint's own Q-Former
tokenizer (a BERT tokenizer that InstructBlipProcessor keeps in the `qformer_tokenizer/` subfolder). The
probe's query text (a VSR caption, a referring expression) goes there; with no text the instruction is the
empty string, which the BERT tokenizer turns into `[CLS] [SEP]`, exactly what the processor feeds for "".
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from PIL import Image

from ..errors import SpatialbenchError
from ..specs import ModelCard
from .base import DTYPES, CheckpointAdapter, decoder_inputs, register_family
from .loading import Checkpoint, input_embedding_key, materialise_module, resolve
from .tiny import IMAGE_SIZE, WORDS, tiny_builder, word_tokenizer

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


def _target_dtypes(skeleton, dtype: torch.dtype):
    """key -> dtype, as from_pretrained(dtype=...) assigns them (the _keep_in_fp32_modules plan)."""
    keep = set(skeleton._keep_in_fp32_modules or ()) if dtype == torch.float16 else set()
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(skeleton._keep_in_fp32_modules_strict or ())
    # Like transformers: unanchored search, so T5's "wo" also keeps qformer...word_embeddings in fp32 under fp16.
    pattern = re.compile("|".join(k.replace("*", ".*") for k in sorted(keep))) if keep else None
    return lambda key: torch.float32 if pattern is not None and pattern.search(key) else dtype


def shape_at(config, point: str) -> tuple[int, int]:
    """Visual-prompt shape from an InstructBlipConfig alone (no weights needed)."""
    if point == "vision_patches":
        v = config.vision_config
        return ((v.image_size // v.patch_size) ** 2 + 1, v.hidden_size)
    width = config.text_config.hidden_size if point == "projected" else config.qformer_config.hidden_size
    return (config.num_query_tokens, width)


@register_family("instructblip")
class InstructBlipAdapter(CheckpointAdapter):
    hf_class = "InstructBlipForConditionalGeneration"
    config_shape = staticmethod(shape_at)
    cached_as = {"projected": ("resampler", "parts.language_projection")}  # the projection runs per batch

    reads_text = True

    def __init__(self, card: ModelCard, checkpoint: Checkpoint, parts: InstructBlipParts, embeddings: nn.Embedding,
                 tokenizer, qformer_tokenizer, processor, point: str | None, device: str):
        super().__init__(card, checkpoint, parts, embeddings, tokenizer, processor, point, device)
        self.qformer_tokenizer = qformer_tokenizer

    @classmethod
    def load(cls, card: ModelCard, *, device: str = "cpu", cache_dir=None, point: str | None = None,
             trust_remote_code: bool = False) -> InstructBlipAdapter:
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, InstructBlipForConditionalGeneration

        ckpt = resolve(card.checkpoint, card.revision, cache_dir)
        config = AutoConfig.from_pretrained(ckpt.root)
        if not (ckpt.root / QFORMER_TOKENIZER).is_dir():
            raise SpatialbenchError(
                f"checkpoint '{card.checkpoint}' has no Q-Former tokenizer ({QFORMER_TOKENIZER}/ beside config.json)",
                field="checkpoint", fix="save the checkpoint's processor with InstructBlipProcessor.save_pretrained")
        with torch.device("meta"):  # weightless: names and dtype policy of the whole model, nothing allocated
            skeleton = InstructBlipForConditionalGeneration(config)
        embed_key = input_embedding_key(config.text_config, "language_model.", ckpt.weight_map)
        dtype = DTYPES[card.dtype]
        dtype_of = _target_dtypes(skeleton, dtype)
        tensors = ckpt.load(lambda k: k.startswith(EXTRACTION_PREFIXES) or k == embed_key)
        tensors = {k: v.to(dtype_of(k)) if v.is_floating_point() else v for k, v in tensors.items()}
        with torch.device("meta"):
            parts = InstructBlipParts(config)
        # A non-persistent buffer (not in the checkpoint), set as InstructBlipPreTrainedModel._init_weights does.
        parts.qformer.embeddings.position_ids = torch.arange(config.qformer_config.max_position_embeddings)[None]
        skipped = materialise_module(parts, {k: v for k, v in tensors.items() if k != embed_key})
        embeddings = nn.Embedding.from_pretrained(tensors[embed_key], freeze=True)
        qformer_tokenizer = AutoTokenizer.from_pretrained(ckpt.root / QFORMER_TOKENIZER)
        tokenizer = AutoTokenizer.from_pretrained(ckpt.root)
        if tokenizer.pad_token is None:  # embed_text pads; the mask hides the padding
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        adapter = cls(card, ckpt, parts, embeddings, tokenizer, qformer_tokenizer,
                      AutoImageProcessor.from_pretrained(ckpt.root), point, device)
        adapter.skipped_keys = skipped
        adapter.loaded_keys, adapter.config = set(tensors), config
        # requires_grad stays as from_pretrained leaves it (True): torch.matmul picks its kernel by it for the
        # non-contiguous text slice the Q-Former feeds its text feed-forward, which moves the prompt by ~1e-6.
        parts.to(device).eval()
        embeddings.to(device)
        return adapter

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return pixels.to(self.device, self.dtype)

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

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        return self.embeddings(enc["input_ids"]), enc["attention_mask"]

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
        with torch.no_grad():
            model(pixel_values=pixel_values, input_ids=ids, **self.instruction(text, b),
                  **decoder_inputs(model.config, b, self.device))
        return {"projected": captured["lm"][:, :q], "resampler": captured["qformer"][:, :q],
                "vision_patches": captured["vision"]}


def _build_tiny(out: Path, seq2seq: bool) -> None:
    from transformers import (
        BertTokenizer,
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        LlamaConfig,
        T5Config,
    )

    tokenizer = word_tokenizer()
    # The released Q-Former tokenizer is bert-base-uncased plus a [DEC] bos token; this one has the same
    # special tokens and template ([CLS] text [SEP]) over the tiny vocabulary.
    qformer_tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                                         *WORDS])})
    qformer_tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    vision = InstructBlipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8,
        initializer_range=0.05,  # the default 1e-10 maps every image to the same features
    )
    qformer = InstructBlipQFormerConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
        vocab_size=len(qformer_tokenizer), pad_token_id=qformer_tokenizer.pad_token_id,
        initializer_range=0.5,  # at 0.02 the prompts barely depend on the image or the instruction
    )
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if seq2seq:  # like Flan-T5 (gated-gelu, untied head)
        text = T5Config(d_model=48, d_kv=24, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=2,
                        vocab_size=len(tokenizer), feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                        decoder_start_token_id=tokenizer.pad_token_id, **ids)
    else:  # like Vicuna (LLaMA)
        text = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128,
                           tie_word_embeddings=False, bos_token_id=tokenizer.eos_token_id, **ids)
    config = InstructBlipConfig(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=8, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = InstructBlipForConditionalGeneration(config)
    with torch.no_grad():  # zero-initialised queries would all be identical
        model.query_tokens.normal_(0.0, 0.5)
    model.save_pretrained(out, max_shard_size="100KB")
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    InstructBlipProcessor(image_processor, tokenizer, qformer_tokenizer, num_query_tokens=8).save_pretrained(out)


@tiny_builder("instructblip-tiny")
def build_instructblip_tiny(out: Path) -> None:
    _build_tiny(out, seq2seq=False)


@tiny_builder("instructblip-t5-tiny")
def build_instructblip_t5_tiny(out: Path) -> None:
    _build_tiny(out, seq2seq=True)
