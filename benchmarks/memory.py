"""Peak resident memory of extraction, each measurement in its own subprocess.

    python benchmarks/memory.py extract CARD N CACHE_DIR BATCH DEVICE

loads the card's adapter, builds N synthetic scene requests, runs FeatureStore.ensure over them on an
empty cache and prints one JSON line: the process's VmHWM (peak resident set, kernel-tracked) before
and after ensure, in kB. Nothing is subtracted: the peak is the whole process's.
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
    from spatialbench.report import quiet_libraries

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


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        _extract(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
