"""Real-size BLIP-2 configs on the meta device: the declared prompt shape is what the model computes."""

import pytest
import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration
from transformers.models.blip_2 import modeling_blip_2

from spatialbench.adapters.blip2 import shape_at

VISION = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
              image_size=224, patch_size=14)
QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               encoder_hidden_size=1408, vocab_size=30522)
OPT_2_7B = dict(model_type="opt", hidden_size=2560, word_embed_proj_dim=2560, num_hidden_layers=32,
                num_attention_heads=32, ffn_dim=10240, vocab_size=50272)
FLAN_T5_XL = dict(model_type="t5", d_model=2048, d_ff=5120, num_layers=24, num_heads=32, d_kv=64, vocab_size=32128,
                  feed_forward_proj="gated-gelu")


@pytest.mark.parametrize("text, projected", [(OPT_2_7B, (32, 2560)), (FLAN_T5_XL, (32, 2048))],
                         ids=["blip2-opt-2.7b", "blip2-flan-t5-xl"])
def test_declared_shapes_match_the_real_size_model(text, projected, monkeypatch):
    # An all-ones mask is the same as no mask; building one calls .item(), which meta tensors refuse.
    monkeypatch.setattr(modeling_blip_2, "create_bidirectional_mask", lambda **kwargs: None)
    config = Blip2Config(vision_config=VISION, qformer_config=QFORMER, text_config=text, num_query_tokens=32)
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(config)
        out = model.get_image_features(pixel_values=torch.zeros(2, 3, 224, 224))
    assert tuple(out.pooler_output.shape[1:]) == shape_at(config, "projected") == projected
    assert tuple(out.qformer_outputs.last_hidden_state.shape[1:]) == shape_at(config, "resampler") == (32, 768)
    assert tuple(out.last_hidden_state.shape[1:]) == shape_at(config, "vision_patches") == (257, 1408)
    vision = sum(p.numel() for p in model.vision_model.parameters())
    assert 0.95e9 < vision < 1.05e9  # ~986M, as in the released checkpoint
