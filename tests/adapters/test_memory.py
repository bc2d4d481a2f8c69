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
import json, sys
import torch, transformers
from spatialbench.adapters.families import get_family
from spatialbench.specs import ModelCard

def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

# Warm-up, so the measurement sees tensors, not code: import every module the load will use by building the
# whole model on the meta device (no memory), and read the tokenizer and image processor once.
config = transformers.AutoConfig.from_pretrained(sys.argv[2])
with torch.device("meta"):
    getattr(transformers, config.architectures[0])(config)
transformers.AutoTokenizer.from_pretrained(sys.argv[2])
transformers.AutoImageProcessor.from_pretrained(sys.argv[2])
if sys.argv[1] != "full":
    get_family(sys.argv[1])

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = status_kb("VmRSS")
if sys.argv[1] == "full":  # the control: the whole model, LLM included, as from_pretrained loads it
    model = getattr(transformers, sys.argv[3]).from_pretrained(sys.argv[2])
    keys, params = [n for n, _ in model.named_parameters()], list(model.parameters())
else:
    adapter = get_family(sys.argv[1]).load(ModelCard(name="heavy", family=sys.argv[1], checkpoint=sys.argv[2]))
    keys, params = sorted(adapter.loaded_keys), adapter.parameters()
for p in params:  # touch every loaded tensor: memory-mapped weights count once they are used
    p.float().sum()
print(json.dumps({"growth_kb": status_kb("VmHWM") - before, "keys": keys}))
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
    control = _peak_growth("full", str(tmp_path), "Blip2ForConditionalGeneration")
    adapter = _peak_growth("blip2", str(tmp_path))
    # The control shows the measurement sees an LLM load; the adapter's peak must stay far below it.
    assert control["growth_kb"] * 1024 > 0.8 * llm_bytes
    assert adapter["growth_kb"] * 1024 < 0.25 * llm_bytes, adapter["growth_kb"]
    assert not any(k.startswith("language_model.model.decoder.layers") for k in adapter["keys"])
