"""Measured, not assumed: extracting from a checkpoint whose LLM dominates its size never loads the LLM.

BLIP-2's load is measured here (and Idefics2's in test_idefics2.py); every family's loader is also checked by
counts: which tensors it reads and which shards it opens (test_<family>.py, RecordingHandle)."""

import json
import subprocess
import sys

import torch

# Peak resident memory during the load, above what the process held just before it: the kernel's own high-water
# mark (VmHWM), reset to the current resident set just before the load (clear_refs 5), so the imports' peak
# does not hide it; a count the kernel keeps, whatever else the machine is doing.
PROBE = """
import gc, json, sys
import torch, transformers
from spatialbench.adapters.families import get_family
from spatialbench.specs import ModelCard

family, path, full_class = sys.argv[1:4]

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

def growth_kb(load):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = status_kb("VmRSS")
    keys, params = load()
    for p in params:  # touch every loaded tensor: memory-mapped weights count once they are used
        p.float().sum()
    return status_kb("VmHWM") - before, keys

# Warm-up, so the measurement sees tensors, not code: import every module the load will use by building the
# whole model on the meta device (no memory), and read the tokenizer and image processor once.
config = transformers.AutoConfig.from_pretrained(path)
with torch.device("meta"):
    getattr(transformers, config.architectures[0])(config)
transformers.AutoTokenizer.from_pretrained(path)
transformers.AutoImageProcessor.from_pretrained(path)
get_family(family)

def adapter():
    loaded = get_family(family).load(ModelCard(name="heavy", family=family, checkpoint=path))
    return sorted(loaded.loaded_keys), loaded.parameters()

def full():  # the control: the whole model, LLM included, as from_pretrained loads it
    model = getattr(transformers, full_class).from_pretrained(path)
    return [n for n, _ in model.named_parameters()], list(model.parameters())

# The adapter first: memory the control frees would be reused by a later load without raising the resident set.
adapter_kb, keys = growth_kb(adapter)
gc.collect()
control_kb, _ = growth_kb(full)
print(json.dumps({"adapter_kb": adapter_kb, "control_kb": control_kb, "keys": keys}))
"""


def _llm_heavy_blip2(path):
    from transformers import BlipImageProcessor, Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    from spatialbench.data.vocab import word_tokenizer

    torch.manual_seed(0)
    text = OPTConfig(hidden_size=512, word_embed_proj_dim=512, ffn_dim=2048, num_hidden_layers=8,
                     num_attention_heads=8, vocab_size=512, max_position_embeddings=64)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            encoder_hidden_size=32, vocab_size=512),
        text_config=text.to_dict(), num_query_tokens=8)
    model = Blip2ForConditionalGeneration(config)
    model.save_pretrained(path, max_shard_size="20MB")
    word_tokenizer().save_pretrained(path)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return sum(p.numel() * 4 for n, p in model.named_parameters() if n.startswith("language_model.model.decoder.layers"))


def _peak_growth(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_blip2_extraction_memory_stays_far_below_the_llm_size(tmp_path):
    llm_bytes = _llm_heavy_blip2(tmp_path)
    assert llm_bytes > 90e6  # the decoder layers dominate the checkpoint (12.6 MB a layer)
    measured = _peak_growth("blip2", str(tmp_path), "Blip2ForConditionalGeneration")
    # The control shows the measurement sees an LLM load; the adapter's peak must stay far below it.
    assert measured["control_kb"] * 1024 > 0.8 * llm_bytes
    assert measured["adapter_kb"] * 1024 < 0.25 * llm_bytes, measured["adapter_kb"]
    assert not any(k.startswith("language_model.model.decoder.layers") for k in measured["keys"])
