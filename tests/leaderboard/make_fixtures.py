"""Regenerate tests/leaderboard/fixtures/*.json from real runs of tiny models on the tiny tasks beside them.

    HF_HUB_OFFLINE=1 python tests/leaderboard/make_fixtures.py

The browser and validation tests read these files instead of running the models (a run takes minutes on
two CPU cores; the tests' budget is seconds). Three families, both regimes, the floor and ceiling baselines,
control tasks, and BLIP-2's layers with the reference levels drawn across them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
RUNS = {
    "blip2-tiny": ["--regime", "both", "--baselines", "blind,oracle,vision_patches", "--control", "--layers", "all"],
    "kosmos2-tiny": ["--regime", "both", "--baselines", "none", "--control"],
    "idefics2-tiny": ["--regime", "frozen", "--baselines", "none", "--no-control"],
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for model, flags in RUNS.items():
            command = ["spatialbench", "run", "--model", model, "--tasks", "tiny", "--seeds", "2",
                       "--include-path", "tests/leaderboard/fixtures/tasks", "--device", "cpu",
                       "--output", f"{tmp}/out", "--cache-dir", f"{tmp}/cache", *flags]
            print("+", " ".join(command), flush=True)
            subprocess.run(command, check=True, cwd=HERE.parents[1])
            shutil.copyfile(Path(tmp) / "out" / model / "results.json", FIXTURES / f"{model}.json")


if __name__ == "__main__":
    sys.exit(main())
