"""A mid-size BLIP-2-architecture model, built locally for the benchmarks (never shipped as a card).

224 px, patch 14 (257 vision tokens), a 6-layer 384-wide vision encoder, 32 queries, a 2-layer 384-wide
Q-Former and a 2-layer OPT: big enough that model compute, not Python, dominates an extraction batch,
small enough for a CPU. Random weights: its probe scores mean nothing; only its speed is of interest.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from spatialbench.adapters.tiny.builds import BUILDS, Build, materialise
from spatialbench.data.vocab import word_tokenizer

NAME = "blip2-mid"
IMAGE_SIZE = 224
DESCRIPTION = ("BLIP-2 architecture, random weights: 224 px, patch 14, vision 6 x 384 (MLP 1536), 32 queries, "
               "Q-Former 2 x 384, OPT 2 x 128, projected prompt 32 x 128")


def build_blip2_mid(out: Path) -> None:
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    tokenizer = word_tokenizer()
    vision = Blip2VisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                               image_size=IMAGE_SIZE, patch_size=14, initializer_range=0.02)
    qformer = Blip2QFormerConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=1536,
                                 encoder_hidden_size=384, vocab_size=len(tokenizer), initializer_range=0.02)
    text = OPTConfig(hidden_size=128, word_embed_proj_dim=128, num_hidden_layers=2, ffn_dim=256, num_attention_heads=2,
                     vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=32, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.5)  # zero-initialised queries would all be identical
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(out)


def write_card(work: Path, cache_dir: Path, dtype: str = "float32") -> Path:
    """Build the checkpoint (once per cache dir) and a card YAML that points at its directory.

    The card names the directory, not `tiny:blip2-mid`, so `spatialbench run` subprocesses, which do
    not import this module and so do not know the builder, load it like any local checkpoint.
    """
    BUILDS.setdefault(NAME, Build(build_blip2_mid))
    checkpoint = materialise(NAME, cache_dir)
    card = {"name": NAME, "family": "blip2", "checkpoint": str(checkpoint), "dtype": dtype, "point": "projected",
            "description": "benchmark-only mid-size BLIP-2 (random weights)"}
    path = Path(work) / f"{NAME}-{dtype}.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def parameter_count(checkpoint: Path) -> dict[str, int]:
    """Parameters per top-level part (vision_model, qformer, language_model, ...) of a saved checkpoint."""
    from math import prod

    from safetensors import safe_open

    counts: dict[str, int] = {}
    for shard in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                part = key.split(".")[0]
                counts[part] = counts.get(part, 0) + prod(f.get_slice(key).get_shape())
    return counts
