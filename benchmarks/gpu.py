"""The GPU check: is extraction fed fast enough to keep a GPU busy? One command, a few minutes.

    python benchmarks/gpu.py [--device cuda] [--dtype bf16,fp32] [--workers 0,4,8] [--images 512]
                             [--size real|mid] [--peak-tflops T] [--parts extraction,fits] [--out FILE]

Builds a real-size BLIP-2 vision encoder (ViT-g, 224 px) and Q-Former (12 layers, 32 queries) with
random weights on the device (`--size mid`: benchmarks/midsize.py's widths, for a CPU smoke run), then per dtype:
  bare       images/s of vision encoder + Q-Former forwards on pre-made pixel batches (the device's ceiling);
  pipeline   images/s of FeatureStore.ensure on COCO-size JPEG files (decode, the real BLIP-2 preprocessing,
             forward, shard writes), at each worker count, and its share of `bare`;
  mfu        FLOPs per image (counted by torch's FlopCounterMode on one forward) x bare images/s / peak;
and once (--parts fits):
  fits       probe fits/s of synth_relation's recipe (3 seeds x its lr grid, --fit-epochs each) on a BLIP-2-size
             prompt (32 x 768, --fit-items rows), trained as one group (probing/group.py) / one at a time, and
             whether the features were resident on the device (probing/visual.py's budget).
The peak is --peak-tflops, else looked up from the device name (dense bf16 / tf32 tensor-core figures of
the datasheets for the cards listed in PEAK_TFLOPS); without one, mfu is left out. Prints one JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PEAK_TFLOPS = {  # dense tensor-core peaks from NVIDIA's datasheets: (bf16, tf32)
    "H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0), "L40S": (362.0, 183.0),
    "A10": (125.0, 62.5), "L4": (121.0, 60.0),
}


def _card(dtype: str):
    from spatialbench.specs import ModelCard

    return ModelCard(name=f"gpu-check-{dtype}", family="blip2", checkpoint="none", dtype=dtype, point="resampler")


class _NoCheckpoint:
    def __init__(self, tag: str):
        self.tag = tag

    def fingerprint(self) -> str:
        return f"gpu-check:{self.tag}"


def build_adapter(size: str, dtype: str, device: str):
    """A BLIP-2 adapter over random weights (resampler point: vision encoder + Q-Former), on `device`."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, BlipImageProcessor, OPTConfig

    from spatialbench.adapters.blip2 import Blip2Adapter, Blip2Parts
    from spatialbench.data.vocab import word_tokenizer

    tokenizer = word_tokenizer()
    text = OPTConfig(hidden_size=64, word_embed_proj_dim=64, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                     vocab_size=len(tokenizer))
    if size == "real":
        config = Blip2Config(text_config=text.to_dict())  # transformers' defaults are blip2-opt-2.7b's ViT-g and Q-Former
    else:  # benchmarks/midsize.py's widths
        vision = Blip2VisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                                   image_size=224, patch_size=14)
        qformer = Blip2QFormerConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, intermediate_size=1536,
                                     encoder_hidden_size=384, vocab_size=len(tokenizer))
        config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                             num_query_tokens=32)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    with torch.device(device):
        parts = Blip2Parts(config).to(torch_dtype).eval().requires_grad_(False)
        embeddings = torch.nn.Embedding(len(tokenizer), 64)
    image = config.vision_config.image_size
    processor = BlipImageProcessor(size={"height": image, "width": image})
    adapter = Blip2Adapter(_card(dtype), _NoCheckpoint(f"{size}-{dtype}"), parts, embeddings, tokenizer, processor,
                           "resampler", device)
    adapter.config = config
    return adapter


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def bare(adapter, batch: int, rounds: int) -> tuple[float, float]:
    """(images/s of bare forwards, FLOPs per image)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = str(adapter.device)
    size = adapter.config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=adapter.dtype)
    counter = FlopCounterMode(display=False)
    with counter:
        adapter.visual_prompt(pixels[:1])
    flops = counter.get_total_flops()
    adapter.visual_prompt(pixels)  # warm-up: kernels chosen, memory pools grown
    _sync(device)
    start = time.perf_counter()
    for _ in range(rounds):
        adapter.visual_prompt(pixels)
    _sync(device)
    return batch * rounds / (time.perf_counter() - start), float(flops)


def pipeline(adapter, requests: list, work: Path, batch: int, workers: int) -> float:
    from spatialbench.features import FeatureStore

    cache = work / f"cache-{workers}"
    store = FeatureStore(adapter, cache, batch, workers=workers)
    _sync(str(adapter.device))
    start = time.perf_counter()
    store.ensure(requests)
    _sync(str(adapter.device))
    seconds = time.perf_counter() - start
    assert store.extracted == len(requests), (store.extracted, len(requests))
    shutil.rmtree(cache, ignore_errors=True)
    return len(requests) / seconds


def peak(device: str, dtype: str, given: float | None) -> float | None:
    if given:
        return given
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    hit = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None if hit is None else hit[0 if dtype == "bfloat16" else 1]


def batched_fits(device: str, epochs: int, items: int, seeds: int = 3) -> dict:
    """Fits/s of one group against one at a time on random features with the answer in token 0 (the speed
    of fitting is what is measured, not what the probe finds)."""
    from accelerate import Accelerator

    from spatialbench.probing.fit import ProbeInputs, Split, fit
    from spatialbench.probing.group import Member, fit_group
    from spatialbench.probing.heads import ProbeShape
    from spatialbench.probing.visual import resident_budget, standardised
    from spatialbench.registry import TaskRegistry

    spec = TaskRegistry().get("synth_relation").probe
    spec = spec.model_copy(update={"epochs": epochs, "patience": epochs})
    g = torch.Generator().manual_seed(0)
    n = {"train": items * 5 // 8, "validation": items // 8, "test": items // 4}
    total, q, d, k = sum(n.values()), 32, 768, 4
    target = torch.randint(0, k, (total,), generator=g)
    features = torch.randn(total, q, d, generator=g)
    features[torch.arange(total), 0, target] += 2.0
    query = torch.randint(0, 6, (total, 2), generator=g)
    splits, start = {}, 0
    for name, count in n.items():
        rows = torch.arange(start, start + count)
        splits[name] = Split(rows, query[rows], target[rows], torch.full((count, 2), 224.0).numpy())
        start += count
    inputs = ProbeInputs(standardised(features, splits["train"].image), splits,
                         ProbeShape(q, d, k, n_categories=6, n_slots=2), box=False)
    accelerator = Accelerator(cpu=device == "cpu")
    members = [Member(inputs, seed, lr) for seed in range(seeds) for lr in spec.lr]
    _sync(device)
    start_s = time.perf_counter()
    for m in members:
        fit(m.inputs, spec, m.seed, "accuracy", accelerator, lr=m.lr)
    _sync(device)
    alone = time.perf_counter() - start_s
    start_s = time.perf_counter()
    fit_group(members, spec, "accuracy", accelerator)
    _sync(device)
    grouped = time.perf_counter() - start_s
    return {"members": len(members), "epochs": epochs, "items": n, "prompt": [q, d],
            "features_mb": round(total * q * d * 4 / 2**20, 1), "resident_budget_mb": round(resident_budget(
                accelerator.device) / 2**20, 1), "one_at_a_time_fits_per_s": round(len(members) / alone, 4),
            "group_fits_per_s": round(len(members) / grouped, 4), "speedup": round(alone / grouped, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16,fp32")
    parser.add_argument("--workers", default="0,4,8")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="timed batches of the bare forward")
    parser.add_argument("--size", choices=["real", "mid"], default="real")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--parts", default="extraction,fits", help="extraction (per dtype), fits (once)")
    parser.add_argument("--fit-epochs", type=int, default=5, help="epochs of every probe fit of the fits part")
    parser.add_argument("--fit-items", type=int, default=2400, help="items of the fits part (train, val, test 5:1:2)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    import speed

    from spatialbench.run.report import quiet_libraries

    quiet_libraries()
    dtypes = [{"bf16": "bfloat16", "fp32": "float32"}[d.strip()] for d in args.dtype.split(",") if d.strip()]
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    report = {"device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else "cpu", "size": args.size, "images": args.images, "batch_size": args.batch_size, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        requests = speed.jpeg_requests(work / "jpegs", args.images) if "extraction" in parts else []
        for dtype in dtypes if "extraction" in parts else []:
            adapter = build_adapter(args.size, dtype, args.device)
            rate, flops = bare(adapter, args.batch_size, args.rounds)
            r = {"bare_images_per_s": round(rate, 1), "gflop_per_image": round(flops / 1e9, 1), "pipeline": {}}
            top = peak(args.device, dtype, args.peak_tflops)
            if top:
                r["peak_tflops"], r["mfu"] = top, round(rate * flops / (top * 1e12), 3)
            for w in workers:
                got = pipeline(adapter, requests, work, args.batch_size, w)
                r["pipeline"][str(w)] = {"images_per_s": round(got, 1), "share_of_bare": round(got / rate, 3)}
            report["results"][dtype] = r
            del adapter
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    if "fits" in parts:
        report["fits"] = batched_fits(args.device, args.fit_epochs, args.fit_items)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
