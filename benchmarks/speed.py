"""Speed figures that compare two ways of doing the same work, timed in one process run.

- throughput: FeatureStore.ensure (decode, preprocess, forward, cache write) vs a bare forward loop;
- joint_epoch: one joint-regime epoch over cached vision features vs recomputing them every batch;
- probe_grid: a learning-rate x seed grid in one `spatialbench run` vs one `spatialbench run` per probe;
- pipeline_workers: FeatureStore.ensure with an instant model, decoding in 2 worker processes vs in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from spatialbench.adapters.base import Adapter
from spatialbench.adapters.families import get_family
from spatialbench.data.sources import load_task_data
from spatialbench.data.synthetic import SyntheticImages, generate_scenes
from spatialbench.features import FeatureStore
from spatialbench.probing.fit import fit
from spatialbench.probing.inputs import build_inputs, feature_requests
from spatialbench.probing.joint import JointEncoder, ResamplerSnapshot
from spatialbench.probing.visual import Visual
from spatialbench.registry import resolve_card
from spatialbench.specs import SyntheticDataset, TaskSpec


def load_adapter(card: Path, device: str, cache_dir: Path) -> Adapter:
    return get_family("blip2").load(resolve_card(str(card)), device=device, cache_dir=cache_dir)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def scene_requests(n: int, seed: int = 7, image_size: int = 224) -> list:
    """(content key, None, loader) for n synthetic scenes, as the runner builds them (keys computed up front)."""
    ds = SyntheticDataset(seed=seed, image_size=image_size, sizes={"train": n, "validation": 1, "test": 1})
    scenes = generate_scenes(ds, "train")
    images = SyntheticImages({s.id: s for s in scenes})
    return [(images.content_key(s.id), None, lambda i=s.id: images.load(i)) for s in scenes]


def throughput(adapter: Adapter, work: Path, n_images: int, batch_size: int, rounds: int, device: str) -> dict:
    """Images/s of FeatureStore.ensure on a cold cache vs a loop of adapter.visual_prompt on pre-made tensors.

    Both sides see the same n images in batches of the same size. Rounds alternate (ensure, bare, ensure,
    bare, ...) after one warm-up batch, so a slow spell of the shared machine hits both sides alike.
    """
    requests = scene_requests(n_images)
    pixels = [adapter.preprocess([loader() for _, _, loader in requests[i:i + batch_size]])
              for i in range(0, n_images, batch_size)]
    adapter.visual_prompt(pixels[0])  # warm-up: first-call allocations and kernel selection
    _sync(device)
    ensure_s, bare_s = [], []
    for r in range(rounds):
        cache = work / f"throughput-cache-{r}"
        store = FeatureStore(adapter, cache, batch_size)
        start = time.perf_counter()
        store.ensure(requests)
        _sync(device)
        ensure_s.append(time.perf_counter() - start)
        assert store.extracted == n_images, (store.extracted, n_images)
        start = time.perf_counter()
        for batch in pixels:
            adapter.visual_prompt(batch)
        _sync(device)
        bare_s.append(time.perf_counter() - start)
        shutil.rmtree(cache, ignore_errors=True)
    ensure_total, bare_total = sum(ensure_s), sum(bare_s)
    return {
        "images": n_images, "batch_size": batch_size, "rounds": rounds,
        "ensure_s": [round(s, 3) for s in ensure_s], "bare_forward_s": [round(s, 3) for s in bare_s],
        "ensure_images_per_s": round(n_images * rounds / ensure_total, 3),
        "bare_forward_images_per_s": round(n_images * rounds / bare_total, 3),
        "ratio": round(bare_total / ensure_total, 4),  # = ensure throughput / bare throughput
    }


class RecomputeVisionEncoder(JointEncoder):
    """The joint regime without the vision cache: every batch runs the frozen vision tower on pixel values.

    Rows are preprocessed pixel values [B, 3, H, W]; adapter.vision_features (no grad: the tower is frozen)
    then the trainable resampler and the same fixed standardisation as JointEncoder.
    """

    def forward(self, rows: torch.Tensor, texts: list[str] | None) -> torch.Tensor:
        with torch.no_grad():
            vision = self.adapter.vision_features(rows.to(self.adapter.device, self.adapter.dtype))
        return super().forward(vision, texts)


def joint_epoch(adapter: Adapter, task: TaskSpec, cache_dir: Path, batch_size: int, device: str) -> dict:
    """Seconds of one joint epoch (train + validation pass) with cached vision features vs recomputed ones.

    Both sides run train.fit for 2 epochs from the same resampler weights, seed and items; the figure is
    the time between the end of epoch 1 and the end of epoch 2 (the on_epoch callback), so model set-up,
    the first epoch's allocations and the final test pass are not counted.
    """
    from accelerate import Accelerator

    data = load_task_data(task)
    store = FeatureStore(adapter, cache_dir, batch_size)
    vision = FeatureStore(adapter, cache_dir, batch_size, point="vision_patches")
    requests = feature_requests(task, data, adapter)
    loaders = {key: loader for key, _, loader in requests}
    vision.ensure([(key, None, loader) for key, loader in loaders.items()])
    store.ensure(requests, vision=vision)
    inputs = build_inputs(task, data, store, adapter)
    keys = [key for key, _ in inputs.row_keys]
    vision_rows = Visual(vision.rows([(key, None) for key in keys]))  # read a batch at a time, as the runner does
    pixels = torch.cat([adapter.preprocess([loaders[k]() for k in keys[i:i + batch_size]]).cpu()
                        for i in range(0, len(keys), batch_size)])
    train_rows = inputs.splits["train"].image.unique()
    accelerator = Accelerator(cpu=device == "cpu")
    snapshot = ResamplerSnapshot(adapter)
    spec = task.probe.model_copy(update={"epochs": 2, "patience": 10})
    out = {"task": task.name, "items": {k: len(v) for k, v in inputs.splits.items()},
           "images": len(keys), "probe_batch_size": spec.batch_size}
    for side, features, encoder_cls in (("cached", vision_rows, JointEncoder),
                                        ("recompute", pixels, RecomputeVisionEncoder)):
        # same items and shape: the probe reads prompts in both (pixels are 4-D, so not with_features)
        side_inputs = dataclasses.replace(inputs, features=features if isinstance(features, Visual) else Visual(features))
        snapshot.restore()
        encoder = encoder_cls(adapter, vision_rows, train_rows, None)
        stamps: list[float] = []

        def on_epoch(epoch: int, val: float, stamps: list[float] = stamps) -> None:
            _sync(device)
            stamps.append(time.perf_counter())

        start = time.perf_counter()
        result = fit(side_inputs, spec, 0, task.headline, accelerator, on_epoch=on_epoch, encoder=encoder,
                     encoder_lr=adapter.card.resampler_lr[0])  # the first of its grid, as the runner starts
        out[f"{side}_fit_s"] = round(time.perf_counter() - start, 3)
        out[f"{side}_epoch_s"] = round(stamps[1] - stamps[0], 3)
        out[f"{side}_val"] = round(result.val_score, 4)
        snapshot.restore()
    out["ratio"] = round(out["recompute_epoch_s"] / out["cached_epoch_s"], 3)
    return out


def spatialbench_run(args: list[str]) -> tuple[float, str]:
    """Wall seconds and stderr of `spatialbench run ARGS` in a fresh interpreter (imports included)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "spatialbench.cli", "run", *args], env=env, check=False,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"spatialbench run {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stderr


def _fit_seconds(output: Path) -> list[float]:
    """Seconds of every probe fit a run made, from its results JSON."""
    import json

    results = json.loads(next(Path(output).glob("*/results.json")).read_text())
    return [seed["seconds"] for task in results["tasks"].values() for seed in task["seeds"]]


def probe_grid(card: Path, tasks_dir: Path, names: list[str], seeds: int, cache_dir: Path, work: Path,
               device: str) -> dict:
    """One `spatialbench run` fitting every (lr, seed) probe vs one `spatialbench run` per probe.

    `names` are task YAMLs that differ only in the probe's lr, over the same scenes, already extracted
    into `cache_dir` (warm for both sides). Each side writes to its own --output, so no fit is reused.
    `spatialbench run` has no option to start the seeds elsewhere than 0, so each per-probe run fits
    seed 0; the tasks' patience equals their epochs, so every fit runs the same number of epochs whatever
    its seed and both sides do the same training work.
    """
    common = ["--model", str(card), "--include-path", str(tasks_dir), "--cache-dir", str(cache_dir),
              "--baselines", "none", "--no-control", "--device", device]
    one, _ = spatialbench_run([*common, "--tasks", ",".join(names), "--seeds", str(seeds),
                               "--output", str(work / "grid-one")])
    one_fits = _fit_seconds(work / "grid-one")
    per_probe, per_probe_fits = [], []
    for name in names:
        for s in range(seeds):
            out = work / f"grid-each-{name}-{s}"
            per_probe.append(spatialbench_run([*common, "--tasks", name, "--seeds", "1", "--output", str(out)])[0])
            per_probe_fits += _fit_seconds(out)
    overhead = [wall - fit for wall, fit in zip(per_probe, per_probe_fits)]
    return {"tasks": names, "probes": len(names) * seeds, "one_run_s": round(one, 2),
            "per_probe_runs_s": round(sum(per_probe), 2), "per_probe_run_s": [round(s, 2) for s in per_probe],
            "one_run_fit_s": [round(s, 2) for s in one_fits], "per_probe_fit_s": [round(s, 2) for s in per_probe_fits],
            "mean_fit_s": round(sum(one_fits + per_probe_fits) / len(one_fits + per_probe_fits), 2),
            "mean_process_overhead_s": round(sum(overhead) / len(overhead), 2),
            "ratio": round(sum(per_probe) / one, 3)}


def jpeg_requests(work: Path, n: int, size: tuple[int, int] = (640, 480)) -> list:
    """(content key, None, loader) for n COCO-size JPEG files written to `work`: decoding is real work."""
    import numpy as np
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    requests = []
    for i in range(n):
        path = work / f"{i}.jpg"
        noise = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)  # smooth enough to compress
        Image.fromarray(noise).resize(size, Image.BILINEAR).save(path, quality=90)
        requests.append((f"jpeg-{i}", None, lambda p=path: Image.open(p).convert("RGB")))
    return requests


def instant(adapter: Adapter) -> None:
    """Replace, on this adapter only, the one forward FeatureStore.ensure runs (`prompts_at`: every point and
    layer from one pass) by zeros of each point's shape, so what is timed is the pipeline alone. The vision
    encoder is made to raise, so a store that stops going through `prompts_at` fails this benchmark instead
    of timing the model (it did once: 9 images/s). Undone by `restore_model`."""
    adapter.prompts_at = lambda pixels, points, text=None: {p: torch.zeros(len(pixels), *adapter.shape_at(p))
                                                            for p in points}

    def refuse(*_):
        raise AssertionError("the instant model ran the vision encoder: FeatureStore.ensure bypassed prompts_at")
    adapter.vision_features = refuse


def restore_model(adapter: Adapter) -> None:
    del adapter.prompts_at, adapter.vision_features  # the class's own again


def pipeline_workers(adapter: Adapter, work: Path, n_images: int, batch_size: int, workers: int, rounds: int) -> dict:
    """Images/s of FeatureStore.ensure when the model costs nothing: the pipeline's own ceiling (decode,
    the model's real preprocessing, cache writes), with `workers` decoding processes vs none.

    The instant model (`instant`) is set on this adapter only; rounds alternate (0, workers, 0, ...)."""
    requests = jpeg_requests(work / "jpegs", n_images)
    instant(adapter)
    seconds: dict[int, list[float]] = {0: [], workers: []}
    try:
        for r in range(rounds):
            for w in (0, workers):
                cache = work / f"pipeline-cache-{r}-{w}"
                store = FeatureStore(adapter, cache, batch_size, workers=w)
                start = time.perf_counter()
                store.ensure(requests)
                seconds[w].append(time.perf_counter() - start)
                assert store.extracted == n_images, (store.extracted, n_images)
                shutil.rmtree(cache, ignore_errors=True)
    finally:
        restore_model(adapter)
    rate = {w: n_images * rounds / sum(s) for w, s in seconds.items()}
    return {"images": n_images, "image_size": [640, 480], "batch_size": batch_size, "rounds": rounds,
            "workers": workers, "seconds": {str(w): [round(x, 3) for x in s] for w, s in seconds.items()},
            "images_per_s": {str(w): round(v, 2) for w, v in rate.items()}, "ratio": round(rate[workers] / rate[0], 3)}


def pipeline_workers_fresh(card: Path, device: str, cache_dir: Path, work: Path, n_images: int, batch_size: int,
                           workers: int, rounds: int) -> dict:
    """pipeline_workers in a fresh interpreter, as `spatialbench run` extracts in its own process.

    In the full benchmark run the parent holds every earlier figure's objects; the forked decoding workers
    then measured 1.55 there against 1.74 for the same figure alone (docs/benchmarks.md), which is the
    benchmark's own state, not the pipeline's."""
    command = [sys.executable, __file__, "pipeline", str(card), device, str(cache_dir), str(work)]
    out = subprocess.run(command + [str(v) for v in (n_images, batch_size, workers, rounds)], check=False,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pipeline subprocess failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if sys.argv[1:2] != ["pipeline"]:
        raise SystemExit("usage: python benchmarks/speed.py pipeline CARD DEVICE CACHE_DIR WORK N BATCH WORKERS ROUNDS")
    from spatialbench.run.report import quiet_libraries

    quiet_libraries()
    card, device, cache_dir, work = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
    n, batch, workers, rounds = map(int, sys.argv[6:10])
    print(json.dumps(pipeline_workers(load_adapter(card, device, cache_dir), work, n, batch, workers, rounds)))
