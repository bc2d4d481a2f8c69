"""Speed figures as ratios measured in one run (this machine is shared and noisy).

    python benchmarks/run.py [--model blip2-tiny] [--tasks synthetic] [--seeds 1]

Prints a JSON of figures and writes it to benchmarks/results/<date>.json:
- extractions_per_unique_image: visual-prompt forwards / distinct images over all tasks of a run (target 1.00)
- warm_over_cold_wall: wall time of a second identical run (warm feature cache) / the first (target <= 0.2
  for extraction-dominated runs; probe training is not cached, so it bounds this ratio from below)
- warm_extractions: forwards in the second run (target 0)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from spatialbench.report import Reporter, quiet_libraries
from spatialbench.runner import Runner
from spatialbench.specs import RunConfig


def _timed_run(config: RunConfig) -> tuple[float, object]:
    start = time.perf_counter()
    result = Runner(config, Reporter()).run()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="blip2-tiny")
    parser.add_argument("--tasks", default="synthetic")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(model=args.model, tasks=[args.tasks], seeds=args.seeds, output=Path(tmp) / "out",
                           cache_dir=Path(tmp) / "cache", device="cpu")
        cold_s, cold = _timed_run(config)
        warm_s, warm = _timed_run(config)
    figures = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": sys.version.split()[0],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": args.model,
        "tasks": args.tasks,
        "unique_images": cold.extraction.images,
        "extractions_per_unique_image": round(cold.extraction.extracted / cold.extraction.images, 4),
        "warm_extractions": warm.extraction.extracted,
        "cold_wall_s": round(cold_s, 2),
        "warm_wall_s": round(warm_s, 2),
        "warm_over_cold_wall": round(warm_s / cold_s, 3),
        "warm_over_cold_extraction": round(warm.extraction.seconds / max(cold.extraction.seconds, 1e-9), 3),
    }
    print(json.dumps(figures, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json").write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
