"""The tiny BLIP-2 checkpoint(s), built in code from a small config (see builds.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...data.vocab import word_tokenizer
from . import IMAGE_SIZE


def build_blip2_tiny(out: Path) -> None:
    _build_tiny(out, seq2seq=False)


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
