"""Loading a real-size BLIP-2 (Salesforce/blip2-opt-2.7b's config) for extraction: peak resident memory.

The checkpoint is written locally at real size with arbitrary values, sharded like a Hub checkpoint
(~2 GB safetensors shards + model.safetensors.index.json), one shard at a time, so the writer never
holds more than one shard. The load runs in a subprocess through the blip2 adapter (a card YAML whose
`checkpoint` is that directory):

    python benchmarks/realsize.py load CARD

prints one JSON line: VmRSS before the load, VmHWM after it (every loaded tensor touched), after one
224 px forward, and the keys read. The figure divides the peak by the fp32 bytes of the vision encoder,
Q-Former, query tokens and projection (the tensors extraction needs besides the token-embedding table).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from math import prod
from pathlib import Path

import torch

# As tests/adapters/test_blip2_real_size.py: the released blip2-opt-2.7b sizes.
VISION = {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
          "image_size": 224, "patch_size": 14}
QFORMER = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
           "encoder_hidden_size": 1408, "vocab_size": 30522}
OPT_2_7B = {"model_type": "opt", "hidden_size": 2560, "word_embed_proj_dim": 2560, "num_hidden_layers": 32,
            "num_attention_heads": 32, "ffn_dim": 10240, "vocab_size": 50272}
SHARD_BYTES = 2_000_000_000  # save_pretrained(max_shard_size="2GB")
EXTRACTION = ("vision_model.", "qformer.", "query_tokens", "language_projection.")


def real_config():
    from transformers import Blip2Config

    return Blip2Config(vision_config=VISION, qformer_config=QFORMER, text_config=OPT_2_7B, num_query_tokens=32)


def write_checkpoint(out: Path) -> dict:
    """Write the real-size checkpoint shard by shard; returns sizes (bytes) by part."""
    from safetensors.torch import save_file
    from transformers import Blip2ForConditionalGeneration, BlipImageProcessor

    from spatialbench.data.vocab import word_tokenizer

    config = real_config()
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(config)
    state = model.state_dict()
    state.pop("language_model.lm_head.weight")  # tied to embed_tokens: save_pretrained does not write it
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    del model, state
    shards: list[list[str]] = [[]]
    size = 0
    for key, (shape, dtype) in shapes.items():  # in state-dict order, as save_pretrained shards
        nbytes = prod(shape) * dtype.itemsize
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    out.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: torch.empty(shapes[k][0], dtype=shapes[k][1]).uniform_(-0.02, 0.02) for k in keys}
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
        weight_map.update(dict.fromkeys(keys, name))
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(out)
    word_tokenizer().save_pretrained(out)
    BlipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
    parts: dict[str, int] = {}
    for key, (shape, dtype) in shapes.items():
        part = "extraction" if key.startswith(EXTRACTION) else "llm_embed_tokens" \
            if key == "language_model.model.decoder.embed_tokens.weight" else "llm_other"
        parts[part] = parts.get(part, 0) + prod(shape) * 4
    return {"shards": len(shards), "total_bytes": total, "fp32_bytes": parts}


def measure_load(card: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "load", str(card)], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"real-size load subprocess failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load(card_path: str) -> None:
    import time

    import transformers

    from spatialbench.adapters.families import get_family
    from spatialbench.run.report import quiet_libraries
    from spatialbench.registry import resolve_card

    def kb(field: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    quiet_libraries()
    card = resolve_card(card_path)
    # Warm-up as in tests/adapters/test_memory.py: import every module the load uses (a meta-device build
    # costs no memory) and read the tokenizer and processor once, so the baseline is code, not tensors.
    config = transformers.AutoConfig.from_pretrained(card.checkpoint)
    with torch.device("meta"):
        transformers.Blip2ForConditionalGeneration(config)
    transformers.AutoTokenizer.from_pretrained(card.checkpoint)
    transformers.AutoImageProcessor.from_pretrained(card.checkpoint)
    family = get_family(card.family)
    before = {"rss_kb": kb("VmRSS"), "hwm_kb": kb("VmHWM")}
    start = time.perf_counter()
    adapter = family.load(card, device="cpu")
    with torch.no_grad():
        for p in adapter.parameters():  # touch every loaded tensor: mapped pages count once used
            p.sum()
    load_s = time.perf_counter() - start
    after_load = {"hwm_kb": kb("VmHWM"), "rss_kb": kb("VmRSS")}
    from PIL import Image

    start = time.perf_counter()
    prompt = adapter.visual_prompt(adapter.preprocess([Image.new("RGB", (224, 224), (128, 90, 30))]))
    forward_s = time.perf_counter() - start
    keys = sorted(adapter.loaded_keys)
    print(json.dumps({
        "before_load": before, "after_load": after_load, "load_s": round(load_s, 2),
        "after_forward_hwm_kb": kb("VmHWM"), "forward_s": round(forward_s, 2), "prompt_shape": list(prompt.shape),
        "loaded_params": sum(p.numel() for p in adapter.parameters()),
        "keys_read": len(keys), "llm_decoder_keys_read": sum(k.startswith("language_model.model.decoder.layers")
                                                             for k in keys),
    }))


def run(work: Path) -> dict:
    """Write, measure, delete. Returns the figure's details."""
    import time

    import yaml

    ckpt = work / "blip2-opt-2.7b-realsize"
    try:
        start = time.perf_counter()
        written = write_checkpoint(ckpt)
        write_s = time.perf_counter() - start
        card = work / "blip2-realsize.yaml"
        card.write_text(yaml.safe_dump({"name": "blip2-realsize", "family": "blip2", "checkpoint": str(ckpt),
                                        "dtype": "float32", "point": "projected"}))
        start = time.perf_counter()
        measured = measure_load(card)
        measured["subprocess_s"] = round(time.perf_counter() - start, 2)
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    budget = written["fp32_bytes"]["extraction"]
    peak = measured["after_load"]["hwm_kb"] * 1024
    return {
        "checkpoint": {**written, "write_s": round(write_s, 2), "deleted": not ckpt.exists()},
        "load": measured,
        "peak_rss_bytes": peak,
        "growth_bytes": peak - measured["before_load"]["rss_kb"] * 1024,
        "extraction_fp32_bytes": budget,
        "ratio": round(peak / budget, 4),
        "growth_ratio": round((peak - measured["before_load"]["rss_kb"] * 1024) / budget, 4),
    }


if __name__ == "__main__":
    if sys.argv[1] == "load":
        _load(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
