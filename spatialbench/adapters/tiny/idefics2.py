"""The tiny Idefics2 checkpoint(s), built in code from a small config (see builds.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...data.vocab import word_tokenizer
from . import IMAGE_SIZE


def tiny_config(tokenizer, **text_overrides):
    """A tiny Idefics2Config around `tokenizer` (which must already hold the processor's special tokens)."""
    from transformers import Idefics2Config, MistralConfig
    from transformers.models.idefics2.configuration_idefics2 import Idefics2PerceiverConfig, Idefics2VisionConfig

    vision = Idefics2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.05)
    text = MistralConfig(**{
        "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 24, "vocab_size": len(tokenizer), "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id,
        **text_overrides})
    perceiver = Idefics2PerceiverConfig(
        hidden_size=text.hidden_size, rms_norm_eps=text.rms_norm_eps, resampler_n_latents=8, resampler_depth=2,
        resampler_n_heads=2, resampler_head_dim=16, num_key_value_heads=1, initializer_range=0.2)
    return Idefics2Config(vision_config=vision.to_dict(), perceiver_config=perceiver.to_dict(),
                          text_config=text.to_dict(), image_token_id=tokenizer.convert_tokens_to_ids("<image>"))


def tiny_processor():
    """Word tokenizer + PIL image processor, joined by Idefics2Processor (which adds its special tokens)."""
    from transformers import Idefics2ImageProcessorPil, Idefics2Processor

    # Splitting on, as in the released config: the adapter must turn it off itself.
    images = Idefics2ImageProcessorPil(size={"shortest_edge": IMAGE_SIZE // 2, "longest_edge": IMAGE_SIZE},
                                       do_image_splitting=True)
    return Idefics2Processor(images, word_tokenizer(), image_seq_len=8)


def build_idefics2_tiny(out: Path) -> None:
    from transformers import Idefics2ForConditionalGeneration

    processor = tiny_processor()
    model = Idefics2ForConditionalGeneration(tiny_config(processor.tokenizer))
    with torch.no_grad():  # the latents start at ones: every latent, hence every prompt row, would be alike
        model.model.connector.perceiver_resampler.latents.normal_(0.0, 1.0)
    model.save_pretrained(out, max_shard_size="100KB")
    processor.save_pretrained(out)
