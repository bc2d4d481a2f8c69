"""The tiny LLaVA checkpoint(s), built in code from a small config (see builds.py)."""

from __future__ import annotations

from pathlib import Path


from ...data.vocab import word_tokenizer
from . import IMAGE_SIZE


def build_llava_tiny(out: Path) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = word_tokenizer(("<image>",))  # LlavaProcessor does not add <image> itself
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32,
        image_size=IMAGE_SIZE, patch_size=8,
    )
    text = LlamaConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    patches = (IMAGE_SIZE // 8) ** 2
    config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_seq_length=patches,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",  # as llava-1.5
    )
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(out, max_shard_size="100KB")
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE,
                                                                                    "width": IMAGE_SIZE})
    LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(out)
    tokenizer.save_pretrained(out)
    images.save_pretrained(out)
