"""The tiny IDEFICS checkpoint(s), built in code from a small config (see builds.py)."""

from __future__ import annotations

from pathlib import Path


from ...data.vocab import word_tokenizer
from . import IMAGE_SIZE

IMAGE_TOKENS = ("<fake_token_around_image>", "<image>")  # what IdeficsProcessor needs in the vocabulary


def build_idefics_tiny(out: Path) -> None:
    from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsProcessor
    from transformers.models.idefics.image_processing_pil_idefics import IdeficsImageProcessorPil

    tokenizer = word_tokenizer(extra_special=())
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    base_vocab = len(tokenizer)  # as in idefics-9b, the image tokens live in the decoupled extra vocabulary
    tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    config = IdeficsConfig(
        vocab_size=base_vocab, additional_vocab_size=len(IMAGE_TOKENS), hidden_size=48, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=2, cross_layer_interval=1, qk_layer_norms=True,
        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        alpha_initializer="ones",  # the default zero gates hide the image from the LLM ("normal" fails on float alphas)
        initializer_range=0.3,  # at 0.02 the latents swamp the image: prompts barely differ across images
        use_resampler=True,  # the released checkpoints use it; IdeficsConfig() does not
        perceiver_config={"use_resampler": True, "resampler_n_latents": 8, "resampler_depth": 2,
                          "resampler_n_heads": 2, "resampler_head_dim": 16, "qk_layer_norms_perceiver": True},
        vision_config={"embed_dim": 32, "image_size": IMAGE_SIZE, "patch_size": 8, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
    )
    model = IdeficsForVisionText2Text(config)
    model.save_pretrained(out, max_shard_size="100KB")
    IdeficsProcessor(IdeficsImageProcessorPil(image_size=IMAGE_SIZE), tokenizer).save_pretrained(out)
