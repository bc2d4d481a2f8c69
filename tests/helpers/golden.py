"""The fixed tiny run whose results file is recorded (tests/fixtures/golden): every condition, both regimes,
control tasks, MDL and every layer over four small tasks, one run shared by the tests that read it.

Features are kept in float32, as when it was recorded (a run's default became 16-bit storage after)."""

from dataclasses import dataclass
from pathlib import Path

from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
ARGS = ["--model", "blip2-tiny", "--tasks", "golden_grid,golden_relation,golden_vsr,golden_region",
        "--include-path", str(GOLDEN / "tasks"), "--seeds", "2", "--regime", "both", "--baselines", "all", "--mdl",
        "--layers", "all", "--device", "cpu", "--workers", "0", "--stored-dtype", "float32"]


@dataclass
class GoldenRun:
    runner: Runner  # after its run: its snapshot, cells and results path
    result: dict  # the results file, as JSON
    fitted: int  # probe fits the run made
    cells: Path  # where they are


def golden_config(output: Path) -> RunConfig:
    return RunConfig(model="blip2-tiny", tasks=["golden_grid,golden_relation,golden_vsr,golden_region"], seeds=2,
                     regime="both", device="cpu", workers=0, mdl=True, layers="all",
                     include_paths=[GOLDEN / "tasks"], output=output, stored_dtype="float32")
