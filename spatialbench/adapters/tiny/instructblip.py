"""The tiny InstructBLIP checkpoint(s), built in code from a small config (see builds.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...data.vocab import WORDS, word_tokenizer
from . import IMAGE_SIZE


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


def build_instructblip_tiny(out: Path) -> None:
    _build_tiny(out, seq2seq=False)


def build_instructblip_t5_tiny(out: Path) -> None:
    _build_tiny(out, seq2seq=True)
