"""Peak resident memory of extraction and of training, each measurement in its own subprocess.

    python benchmarks/memory.py extract CARD N CACHE_DIR BATCH DEVICE
    python benchmarks/memory.py train CARD TASKS_DIR TASK CACHE_DIR OUT DEVICE

`extract` loads the card's adapter, builds N synthetic scene requests, runs FeatureStore.ensure over them
on an empty cache and prints one JSON line: the process's VmHWM (peak resident set, kernel-tracked)
before and after ensure, in kB. `train` runs TASK on a cache that already holds its features (every
regime and baseline, one seed) and prints the process's VmHWM after the run: the training phase's peak,
since extraction on a warm cache only reads each entry once to check it. Nothing is subtracted: the
peak is the whole process's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def extraction_peak(card: Path, n_images: int, cache_dir: Path, batch_size: int, device: str) -> dict:
    """Run `extract` in a fresh interpreter and return what it printed."""
    out = subprocess.run([sys.executable, __file__, "extract", str(card), str(n_images), str(cache_dir),
                          str(batch_size), device], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"extraction subprocess failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extract(card: str, n: int, cache_dir: str, batch_size: int, device: str) -> None:
    import time

    sys.path.insert(0, str(Path(__file__).parent))
    from speed import load_adapter, scene_requests

    from spatialbench.features import FeatureStore
    from spatialbench.run.report import quiet_libraries

    quiet_libraries()
    adapter = load_adapter(Path(card), device, Path(cache_dir))
    requests = scene_requests(n)
    before = {"hwm_kb": status_kb("VmHWM"), "rss_kb": status_kb("VmRSS")}
    store = FeatureStore(adapter, Path(cache_dir), batch_size)
    start = time.perf_counter()
    store.ensure(requests)
    seconds = time.perf_counter() - start
    print(json.dumps({"images": n, "extracted": store.extracted, "seconds": round(seconds, 2),
                      "before_ensure": before, "peak_kb": status_kb("VmHWM"), "rss_after_kb": status_kb("VmRSS")}))


TRAINING = ["--regime", "both", "--baselines", "blind,oracle,vision_patches,random_resampler,joint_random",
            "--seeds", "1", "--no-control", "--resampler-lr", "1e-4", "--workers", "0"]


def training_peak(card: Path, tasks_dir: Path, task: str, cache_dir: Path, out: Path, device: str) -> dict:
    """Extract TASK's features in one subprocess, then run it with every condition in a fresh one; the
    second's peak RSS."""
    for command in ("train", "train"):  # the first fills the cache (and trains); the second is measured
        done = subprocess.run([sys.executable, __file__, command, str(card), str(tasks_dir), task, str(cache_dir),
                               str(out), device], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"training subprocess failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _train(card: str, tasks_dir: str, task: str, cache_dir: str, out: str, device: str) -> None:
    import shutil
    import time

    from spatialbench.cli import app
    from typer.testing import CliRunner

    shutil.rmtree(out, ignore_errors=True)  # no finished fit is reused: the training is measured whole
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["run", "--model", card, "--tasks", task, "--include-path", tasks_dir,
                                      "--cache-dir", cache_dir, "--output", out, "--device", device, *TRAINING])
    if result.exit_code != 0:
        raise SystemExit(f"run failed ({result.exit_code}): {result.output[-3000:]}")
    results = json.loads(next(Path(out).glob("*/results.json")).read_text())
    print(json.dumps({"task": task, "n": results["tasks"][task]["n"], "extracted": results["extraction"]["extracted"],
                      "seconds": round(time.perf_counter() - start, 2), "peak_kb": status_kb("VmHWM"),
                      "conditions": sorted(results["tasks"][task]["conditions"])}))


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        _extract(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
    elif sys.argv[1] == "train":
        _train(*sys.argv[2:8])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
