"""Calibrations: what the unit tests check only in small must hold at full size before a number rests on it.

    python benchmarks/calibrate.py               # every calibration
    python benchmarks/calibrate.py ceiling       # or some: ceiling, testbed

Each one runs at the size where its claim is expected to hold, checks the claim, and writes its record to
docs/runs/calibration/<name>.json (the measured values, the thresholds, pass or fail, the commit, the date and
the machine). Run them before any result that rests on them, and after a change to the code they cover:

- ceiling: the oracle prompt solves synth_vsr-style minimal pairs ("the A is left of the B" beside "the B is
  left of the A": the same image and the same words) that the caption alone cannot (probing/oracle.py and the
  attentive head's order-aware query; tests/probing/test_ceiling.py runs the same task in small).
- testbed: both pretraining stages of the testbed learn their objectives at a reduced budget
  (testbed/build.py; tests/testbed/test_build.py runs them for a few steps).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "runs" / "calibration"

# The minimal pairs over scenes of two objects, at the size where the oracle is solved (0.997 on 2026-12-03;
# at 800 scenes and 15 epochs it stayed on its plateau at 0.554).
PAIRS_VSR = {"name": "pairs_vsr", "kind": "vsr", "groups": ["ceiling"],
             "dataset": {"source": "synthetic", "seed": 5, "image_size": 64, "min_objects": 2, "max_objects": 2,
                         "sizes": {"train": 1200, "validation": 100, "test": 200}},
             "probe": {"epochs": 20, "patience": 8, "lr": 1e-3}}


def ceiling(work: Path) -> dict:
    from spatialbench.run.runner import Runner
    from spatialbench.specs import RunConfig

    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "pairs_vsr.yaml").write_text(yaml.safe_dump(PAIRS_VSR))
    config = RunConfig(model="blip2-tiny", tasks=["pairs_vsr"], seeds=1, output=work / "out", include_paths=[tasks],
                       device="cpu", control=False, baselines=["blind", "oracle"], cache_dir=work / "cache")
    task = Runner(config).run().tasks["pairs_vsr"]
    accuracy = {name: round(c.metrics["accuracy"].mean, 4) for name, c in task.conditions.items()}
    checks = {"oracle >= 0.95": accuracy["oracle"] >= 0.95, "blind <= 0.6": accuracy["blind"] <= 0.6}
    return {"task": PAIRS_VSR, "model": "blip2-tiny", "test_accuracy": accuracy, "checks": checks}


# The budgets the testbed's unit test used before it was shrunk (and their margins): small enough for minutes,
# large enough that each stage's objective visibly learns. The shipped builds' own budgets are in testbed/build.py.
VISION = {"train_scenes": 400, "validation_scenes": 100, "steps": 150}
CAPTION = {"train_scenes": 400, "validation_scenes": 100, "steps": 200, "lr": 2e-3}


def testbed(work: Path) -> dict:
    from spatialbench.testbed import build
    from spatialbench.testbed import pretraining as pt

    build.pretrain_vision(work / "vision", pt.Budget(**VISION))
    stages = {"vision": json.loads((work / "vision" / build.METRICS).read_text())["stages"][0]}
    for objective in pt.OBJECTIVES:
        build.pretrain_captioner(work / objective, objective, work / "vision", pt.Budget(**CAPTION))
        stages[objective] = json.loads((work / objective / build.METRICS).read_text())["stages"][1]
    v, names, boxes = stages["vision"], stages["names"], stages["names+boxes"]
    checks = {
        "vision loss < 0.25 x untrained": v["after"]["loss"] < 0.25 * v["before"]["loss"],
        "object patches named > 0.15": v["after"]["object_patch_accuracy"] > 0.15,
        "vision box L1 < 0.5 x untrained": v["after"]["box_l1"] < 0.5 * v["before"]["box_l1"],
        **{f"{o}: caption loss < 0.5 x untrained": s["after"]["caption_loss"] < 0.5 * s["before"]["caption_loss"]
           for o, s in (("names", names), ("names+boxes", boxes))},
        **{f"{o}: token accuracy +0.2": s["after"]["token_accuracy"] > s["before"]["token_accuracy"] + 0.2
           for o, s in (("names", names), ("names+boxes", boxes))},
        "names+boxes: box L1 < 0.8 x untrained": boxes["after"]["box_l1"] < 0.8 * boxes["before"]["box_l1"],
    }
    return {"budgets": {"vision": VISION, "caption": CAPTION},
            "before_after": {k: {"before": s["before"], "after": s["after"]} for k, s in stages.items()},
            "checks": checks}


CALIBRATIONS = {"ceiling": ceiling, "testbed": testbed}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "load_at_start": os.getloadavg()[0], "python": platform.python_version()}


def main(names: list[str]) -> int:
    from spatialbench.results import provenance

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    unknown = [n for n in names if n not in CALIBRATIONS]
    if unknown:
        print(f"unknown calibration(s) {unknown}; choose from {list(CALIBRATIONS)}", file=sys.stderr)
        return 2
    RECORDS.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names or list(CALIBRATIONS):
        started, start = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
        host = machine()
        with tempfile.TemporaryDirectory() as work:
            record = CALIBRATIONS[name](Path(work))
        record = {"calibration": name, "passed": all(record["checks"].values()), **record,
                  "commit": provenance()[0], "started": started, "seconds": round(time.perf_counter() - start, 1),
                  "machine": host, "command": f"python benchmarks/calibrate.py {name}"}
        (RECORDS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: {'pass' if record['passed'] else 'FAIL'} {record['checks']} ({record['seconds']} s)")
        if not record["passed"]:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
