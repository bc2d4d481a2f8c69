"""The tiny Kosmos-2 checkpoint(s), built in code from a small config (see builds.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...data.vocab import word_tokenizer
from . import IMAGE_SIZE


def build_kosmos2_tiny(out: Path) -> None:
    _build_tiny(out, IMAGE_SIZE, patch_size=8)


def build_kosmos2_224_tiny(out: Path) -> None:
    """At the released model's 224 px (patch 32 keeps it small): its processor's use_square_size resizes to the
    class default 224 whatever the config says, so only at 224 does that path run as on the real model."""
    _build_tiny(out, 224, patch_size=32)


def _build_tiny(out: Path, image_size: int, patch_size: int) -> None:
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPImageProcessorPil, Kosmos2Config, Kosmos2ForConditionalGeneration, Kosmos2Processor

    tokenizer = word_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "<s>"})  # Kosmos2Processor writes <s> before the image
    # Like the real (XLM-R style) tokenizer, add <s> ... </s> by default, which the processor turns off.
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tokenizer.bos_token_id), ("</s>", tokenizer.eos_token_id)])
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    # The processor adds its tag tokens and num_patch_index_tokens location tokens (1024 in the real model).
    processor = Kosmos2Processor(image_processor, tokenizer, num_patch_index_tokens=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=image_size, patch_size=patch_size)
    text = dict(
        embed_dim=48, layers=2, ffn_dim=96, attention_heads=2, vocab_size=len(processor.tokenizer),
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        init_std=0.2,  # at 0.02 the x_attn projections make all 8 latent queries give nearly the same row
    )
    config = Kosmos2Config(vision_config=vision, text_config=text, latent_query_num=8)
    model = Kosmos2ForConditionalGeneration(config)
    with torch.no_grad():
        # The unit-norm features go through `dense` and are concatenated with N(0, 1) latent queries as the keys
        # and values: at init_std they come out ~100x smaller and the prompt barely depends on the image.
        model.image_to_text_projection.dense.weight.normal_(0.0, 2.0)
    model.save_pretrained(out, max_shard_size="50KB")
    processor.save_pretrained(out)
