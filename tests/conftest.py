"""Every test runs offline, with one throwaway cache per session (tiny checkpoints are built once).

The suite runs in two worker processes (pytest-xdist, `-n 2 --dist loadfile` in pyproject.toml; `-n 0` runs it
in one): most tests are single-threaded Python, so one process leaves a core idle. A file's tests share a worker,
so its module fixtures are made once; the golden run is made once in each worker that reads it.
"""

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Before torch is imported: two workers with two compute threads each on two cores spend their time
    # waiting on each other (the suite took twice as long). Subprocesses inherit it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # xdist sets an 80-column terminal in its workers; rich would fix that width when the CLI's consoles are
    # made, and the tests that ask for a wider one through COLUMNS would wrap.
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)

import pytest  # noqa: E402

from tests.helpers import write_small_tasks  # noqa: E402
from tests.helpers.golden import GoldenRun, golden_config  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("spatialbench-cache")
    os.environ["SPATIALBENCH_CACHE"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "hf-datasets")  # never the user's ~/.cache
    return cache


@pytest.fixture
def small_tasks(tmp_path) -> Path:
    return write_small_tasks(tmp_path / "tasks")


@pytest.fixture(scope="session")
def golden_run(tmp_path_factory) -> GoldenRun:
    """The fixed tiny run of tests/fixtures/golden, made once and read by every test that needs a run with
    every condition, both regimes, control tasks, MDL and layers."""
    from spatialbench.run.runner import Runner

    runner = Runner(golden_config(tmp_path_factory.mktemp("golden") / "out"))
    result = runner.run().model_dump(mode="json")
    return GoldenRun(runner, result, runner.cells.fitted, runner.cells.root)
