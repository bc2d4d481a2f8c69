"""Speed and memory figures of spatialbench, each a ratio measured within one run (the machine is shared
and noisy, so absolute seconds mean little; a ratio of two things timed side by side means more).

    python benchmarks/run.py [--quick] [--real-size] [--device cpu|cuda] [--dtype fp32|bf16|fp32,bf16]
                             [--only NAME,...] [--out DIR] [--keep]

Prints one JSON and writes it to benchmarks/results/<UTC date>.json. Every figure has a value, a
target and pass/fail; docs/benchmarks.md says exactly what each compares. The model is a mid-size
BLIP-2 (benchmarks/midsize.py: 224 px, patch 14, 6 x 384 vision encoder, 32 queries, 2 x 384 Q-Former,
tiny OPT) built locally into a temporary cache; tasks are the shipped synthetic tasks (or smaller copies
with --quick), so everything runs offline.

Figures (NAME for --only):
  extraction    extractions_per_unique_image: visual-prompt forwards / distinct images, all synthetic tasks (== 1.00)
  warm          warm_over_cold_wall: a second identical run (warm cache, finished fits reused) / the first (<= 0.2)
  throughput    end-to-end extraction (FeatureStore.ensure) / bare adapter forward loop, images/s (>= 0.8)
  joint         joint epoch recomputing the vision tower / over cached vision features (>= 3)
  grid          9 probes as 9 `spatialbench run`s / in one `spatialbench run` (>= 2)
  pipeline      extraction images/s with an instant model (decode, preprocess, cache writes: the pipeline's
                own ceiling), 2 decoding workers / none (>= 1.6 on 2 cores)
  memory        peak RSS of extracting 10N images / of N images (<= 1.10)
  cache         bytes per image each shipped real card caches: its prompt vs the cheapest tensor on its path
                (Adapter.cached_as), from the shapes the card declares and the dtype its cache keeps (after <= before)
  training      peak RSS of training (frozen, joint and every baseline, warm cache) on 10N images / on N (<= 1.2)
  batched       batched_fit_speedup: fits/s of a synthetic task's default grid (3 seeds x 2 lr, synth_relation's
                recipe on GRID_SIZES scenes) trained as one group / the same fits one at a time (>= 5; every seed
                selects the same lr and every member's test metric is within 0.002)
  realsize      peak RSS loading real-size blip2-opt-2.7b for extraction / fp32 bytes of vision, Q-Former,
                queries and projection (<= 1.3); runs only with --real-size (writes ~15.5 GB to disk and deletes it)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import midsize
import synthtasks
import torch
import transformers

from spatialbench.run.report import quiet_libraries
from spatialbench.registry import resolve_card

FIGURES = ("extraction", "warm", "throughput", "pipeline", "joint", "grid", "batched", "memory", "training", "cache",
           "realsize")
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
QUICK_SIZES = {"train": 120, "validation": 30, "test": 60}
JOINT_SIZES = {"train": 96, "validation": 16, "test": 16}
JOINT_SIZES_QUICK = {"train": 32, "validation": 8, "test": 8}
GRID_SIZES = {"train": 120, "validation": 30, "test": 60}  # the first scenes of every larger set: cached already


def _dtypes(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DTYPES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {sorted(DTYPES)}, comma-separated (got {text!r})")
    return list(dict.fromkeys(names))


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "machine": f"{platform.machine()} {cpu}".strip(), "os": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (OSError, ValueError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def figure(value, target: str, ok: bool, **detail) -> dict:
    return {"value": value, "target": target, "pass": bool(ok), **detail}


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.cache = work / "cache"
        self.dtypes = [DTYPES[d] for d in args.dtype]
        self.dtype = self.dtypes[0]  # every figure; the throughput figure also for each further dtype
        self.card = midsize.write_card(work, self.cache, self.dtype)
        self.tasks_dir = work / "tasks"
        self.tasks_dir.mkdir(parents=True, exist_ok=True)
        self.sizes = QUICK_SIZES if args.quick else None  # None: the shipped synthetic group as it is
        self.selector = synthtasks.synthetic_group(self.tasks_dir, self.sizes)
        self.figures: dict[str, dict] = {}
        self._adapter = None

    @property
    def adapter(self):
        if self._adapter is None:
            import speed

            self._adapter = speed.load_adapter(self.card, self.args.device, self.cache)
        return self._adapter

    def cli_args(self, output: Path) -> list[str]:
        return ["--model", str(self.card), "--tasks", self.selector, "--seeds", str(self.args.seeds),
                "--output", str(output), "--cache-dir", str(self.cache), "--include-path", str(self.tasks_dir),
                "--device", self.args.device, "--batch-size", str(self.args.batch_size),
                "--baselines", "none", "--no-control", "--regime", "frozen"]

    # figures 1 and 3 (and the ones run.py always had): the whole synthetic group, cold then warm, each a
    # `spatialbench run` in a fresh interpreter, as a user would run it twice
    def extraction_and_warm(self) -> None:
        import re

        import speed

        out = self.work / "out"
        cold_s, _ = speed.spatialbench_run(self.cli_args(out))
        cold = json.loads(next(out.glob("*/results.json")).read_text())
        warm_s, warm_log = speed.spatialbench_run(self.cli_args(out))
        warm = json.loads(next(out.glob("*/results.json")).read_text())
        fits = re.search(r"probe fits: (\d+) fitted, (\d+) reused", warm_log)
        ex, wex = cold["extraction"], warm["extraction"]
        per_image = ex["extracted"] / ex["images"]
        failed = [n for n, t in {**cold["tasks"], **warm["tasks"]}.items() if t["status"] != "ok"]
        self.figures["extractions_per_unique_image"] = figure(
            round(per_image, 4), "== 1.00", abs(per_image - 1.0) < 1e-9 and not failed,
            tasks=sorted(cold["tasks"]), unique_images=ex["images"], extracted=ex["extracted"], failed_tasks=failed)
        ratio = warm_s / cold_s
        self.figures["warm_over_cold_wall"] = figure(
            round(ratio, 4), "<= 0.2", ratio <= 0.2, cold_wall_s=round(cold_s, 2), warm_wall_s=round(warm_s, 2),
            cold_extraction_s=round(ex["seconds"], 2), warm_extraction_s=round(wex["seconds"], 2),
            warm_over_cold_extraction=round(wex["seconds"] / max(ex["seconds"], 1e-9), 4),
            cold_train_s=round(sum(t["timings"].get("train", 0) for t in cold["tasks"].values()), 2),
            warm_cells_fitted=int(fits.group(1)) if fits else None,
            warm_cells_reused=int(fits.group(2)) if fits else None, seeds=self.args.seeds)
        self.figures["warm_extractions"] = figure(wex["extracted"], "== 0", wex["extracted"] == 0,
                                                  reused=wex["reused"])

    def throughput(self) -> None:
        import speed

        n = 64 if self.args.quick else self.args.images
        rounds = 1 if self.args.quick else 2
        for dtype in self.dtypes:
            if dtype == self.dtype:
                adapter, name = self.adapter, "extraction_throughput_ratio"
            else:
                card = midsize.write_card(self.work, self.cache, dtype)
                adapter = speed.load_adapter(card, self.args.device, self.cache)
                name = f"extraction_throughput_ratio_{dtype}"
            r = speed.throughput(adapter, self.work, n, self.args.batch_size, rounds, self.args.device)
            ratio = r.pop("ratio")
            self.figures[name] = figure(ratio, ">= 0.8", ratio >= 0.8, **r, dtype=dtype)

    def joint(self) -> None:
        import speed

        n = JOINT_SIZES_QUICK if self.args.quick else JOINT_SIZES
        task = synthtasks.variant(self.work / "variants", "synth_vsr", "bench_joint_vsr", sizes=n)
        r = speed.joint_epoch(self.adapter, task, self.cache, self.args.batch_size, self.args.device)
        ratio = r.pop("ratio")
        self.figures["joint_cached_speedup"] = figure(ratio, ">= 3", ratio >= 3, **r)

    def grid(self) -> None:
        import speed

        lrs = (3e-4, 1e-3, 3e-3)
        epochs = 10
        names = []
        for lr in lrs:
            name = f"bench_grid_lr{lr:g}".replace(".", "p").replace("-", "m")
            synthtasks.variant(self.tasks_dir / "grid", "synth_relation", name, sizes=GRID_SIZES,
                                lr=lr, epochs=epochs, patience=epochs)
            names.append(name)
        self._warm_cache(names, self.tasks_dir / "grid")
        r = speed.probe_grid(self.card, self.tasks_dir / "grid", names, 3, self.cache, self.work,
                             self.args.device)
        ratio = r.pop("ratio")
        f, s = r["mean_fit_s"], r["mean_process_overhead_s"]
        self.figures["probe_grid_speedup"] = figure(
            ratio, ">= 2", ratio >= 2, **r, epochs_per_fit=epochs, learning_rates=list(lrs), scenes=GRID_SIZES,
            # 9 (S + f) / (S + 9 f) with S the per-process overhead and f one fit: >= 2 while f <= 7/9 S
            model_ratio=round(9 * (s + f) / (s + 9 * f), 3), break_even_fit_s=round(7 / 9 * s, 2))

    def batched(self) -> None:
        import fits
        from accelerate import Accelerator

        task = synthtasks.variant(self.tasks_dir / "batched", "synth_relation", "bench_batched_relation",
                                  sizes=QUICK_SIZES if self.args.quick else GRID_SIZES)
        _, inputs = fits.task_inputs(task.name, str(self.card), self.cache, self.args.device, task=task)
        r = fits.measure(task, inputs, 3, Accelerator(cpu=self.args.device == "cpu"))
        ratio = r.pop("speedup")
        ok = ratio >= 5 and r["same_selected_lr"] and r["max_test_difference"] <= 0.002
        self.figures["batched_fit_speedup"] = figure(ratio, ">= 5", ok, **r, scenes=task.dataset.sizes,
                                                     threads=torch.get_num_threads())

    def _warm_cache(self, names: list[str], directory: Path) -> None:
        """Extract the grid tasks' images (the same scenes as the synthetic group: usually already cached)."""
        from spatialbench.data.sources import load_task_data
        from spatialbench.features import FeatureStore
        from spatialbench.probing.inputs import feature_requests
        from spatialbench.registry import TaskRegistry

        registry = TaskRegistry([directory])
        store = FeatureStore(self.adapter, self.cache, self.args.batch_size)
        for name in names:
            task = registry.get(name)
            store.ensure(feature_requests(task, load_task_data(task), self.adapter))

    def pipeline(self) -> None:
        import speed

        # Enough images that the workers' one-off start (about 0.17 s per ensure here, measured) is a small
        # share, as in a real extraction of thousands; 4 alternating rounds, because single rounds on this
        # shared VM vary by up to 40%.
        n, rounds = (256, 2) if self.args.quick else (1024, 4)
        r = speed.pipeline_workers_fresh(self.card, self.args.device, self.cache, self.work / "pipeline", n,
                                         self.args.batch_size, workers=2, rounds=rounds)
        ratio = r.pop("ratio")
        self.figures["pipeline_worker_speedup"] = figure(ratio, ">= 1.6", ratio >= 1.6, **r)

    def memory(self) -> None:
        import memory

        # The small side holds at least two full batches: the allocator's peak is reached at the second batch,
        # and a run smaller than one batch has smaller activations, so its peak would be too low.
        large = 640 if self.args.quick else self.args.memory_images
        small = large // 10
        if small < 2 * self.args.batch_size:
            raise ValueError(f"--memory-images {large}: the small side ({small}) must hold two batches "
                             f"of {self.args.batch_size}")
        peaks = {n: memory.extraction_peak(self.card, n, self.work / f"memory-cache-{n}", self.args.batch_size,
                                           self.args.device) for n in (small, large)}
        ratio = peaks[large]["peak_kb"] / peaks[small]["peak_kb"]
        self.figures["extraction_peak_rss_growth"] = figure(
            round(ratio, 4), "<= 1.10", ratio <= 1.10, small_images=small, large_images=large,
            small_peak_mb=round(peaks[small]["peak_kb"] / 1024, 1),
            large_peak_mb=round(peaks[large]["peak_kb"] / 1024, 1),
            small=peaks[small], large=peaks[large])

    def cache_bytes(self) -> None:
        from spatialbench.adapters.families import get_family
        from spatialbench.run.devices import resolve_stored_dtype
        from spatialbench.run.plan import geometry
        from spatialbench.registry import ModelRegistry

        cards = {}
        registry = ModelRegistry()
        for name in registry.names():
            card = registry.get(name)
            if card.checkpoint.startswith("tiny:") or card.declares is None:
                continue
            dtype = resolve_stored_dtype(card.stored_dtype, card.dtype, "cpu")
            family, geo = get_family(card.family), geometry(card, card.point, dtype)
            stored = family.cached_as.get(card.point, (card.point, ""))[0]
            stored = stored if stored in family.points else card.point
            cards[name] = {"point": card.point, "stored": stored, "stored_dtype": dtype,
                           "before": geo.row_bytes(card.point), "after": geo.row_bytes(stored),
                           "vision_patches": geo.row_bytes("vision_patches")}
        ok = all(c["after"] <= c["before"] for c in cards.values())
        smallest = min(c["after"] / c["before"] for c in cards.values())
        self.figures["cache_bytes_per_image"] = figure(round(smallest, 4), "after <= before", ok, cards=cards)

    def training(self) -> None:
        import memory

        small = {"train": 24, "validation": 8, "test": 8} if self.args.quick else {"train": 60, "validation": 20, "test": 20}
        sizes = {n: {k: v * n for k, v in small.items()} for n in (1, 10)}
        peaks = {}
        for n, split_sizes in sizes.items():
            name = f"bench_training_{n}x"
            synthtasks.variant(self.tasks_dir, "synth_region_grid", name, split_sizes, epochs=2, patience=2, lr=[1e-3])
            peaks[n] = memory.training_peak(self.card, self.tasks_dir, name, self.cache, self.work / f"training-{n}",
                                            self.args.device)
        ratio = peaks[10]["peak_kb"] / peaks[1]["peak_kb"]
        self.figures["training_peak_rss_growth"] = figure(
            round(ratio, 4), "<= 1.2", ratio <= 1.2, small_peak_mb=round(peaks[1]["peak_kb"] / 1024, 1),
            large_peak_mb=round(peaks[10]["peak_kb"] / 1024, 1), small=peaks[1], large=peaks[10])

    def realsize(self) -> None:
        import realsize

        start = time.perf_counter()
        r = realsize.run(self.work)
        ratio = r.pop("ratio")
        self.figures["realsize_load_peak_rss"] = figure(ratio, "<= 1.3", ratio <= 1.3, **r,
                                                        seconds=round(time.perf_counter() - start, 1))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller scene sets and image counts (a few minutes)")
    parser.add_argument("--real-size", action="store_true", help="also the real-size BLIP-2 load figure")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", type=_dtypes, default=["fp32"],
                        help="the mid-size model's weights, fp32 or bf16; 'fp32,bf16' also times extraction in bf16")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(FIGURES)}")
    parser.add_argument("--seeds", type=int, default=1, help="probe seeds in the cold/warm runs")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads here and in every subprocess (OMP_NUM_THREADS); 0: torch's default")
    parser.add_argument("--batch-size", type=int, default=32, help="extraction batch size")
    parser.add_argument("--images", type=int, default=128, help="images per round of the throughput figure")
    parser.add_argument("--memory-images", type=int, default=1000, help="the larger image count of the RSS figure")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory (printed)")
    args = parser.parse_args(argv)
    only = [f.strip() for f in args.only.split(",") if f.strip()] or [f for f in FIGURES if f != "realsize"]
    if args.real_size and "realsize" not in only:
        only.append("realsize")
    unknown = [f for f in only if f not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; choose from {list(FIGURES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.threads > 0:  # subprocesses inherit it; this process is set directly
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    quiet_libraries()
    start = time.perf_counter()
    report = {**machine(), "device": args.device, "dtype": [DTYPES[d] for d in args.dtype], "quick": args.quick,
              "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])}
    work = Path(tempfile.mkdtemp(prefix="spatialbench-bench-"))
    errors: dict[str, str] = {}
    try:
        bench = Bench(args, work)
        report["model"] = {"name": midsize.NAME, "card": midsize.DESCRIPTION,
                           "parameters": midsize.parameter_count(Path(resolve_card(str(bench.card)).checkpoint))}
        report["tasks"] = bench.selector if args.quick is False else f"{bench.selector} (sizes {QUICK_SIZES})"
        steps = {"extraction": bench.extraction_and_warm, "warm": bench.extraction_and_warm,
                 "throughput": bench.throughput, "pipeline": bench.pipeline, "joint": bench.joint, "grid": bench.grid,
                 "batched": bench.batched, "memory": bench.memory,
                 "training": bench.training, "cache": bench.cache_bytes, "realsize": bench.realsize}
        done = set()
        for name in only:
            step = steps[name]
            if step in done:
                continue
            done.add(step)
            t = time.perf_counter()
            print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
            try:
                step()
            except Exception as e:  # noqa: BLE001 - one broken figure must not hide the others
                errors[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"
                print(errors[name], file=sys.stderr)
            print(f"[benchmarks] {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        report["figures"] = bench.figures
    finally:
        if args.keep:
            print(f"[benchmarks] work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["errors"] = errors
    report["all_pass"] = not errors and all(f["pass"] for f in report["figures"].values())
    report["wall_s"] = round(time.perf_counter() - start, 1)
    text = json.dumps(report, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
