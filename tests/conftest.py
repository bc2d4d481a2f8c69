"""Every test runs offline, with one throwaway cache per session (tiny checkpoints are built once)."""

import os
from pathlib import Path

import pytest

from tests.helpers import write_small_tasks
from tests.helpers.golden import GoldenRun, golden_config

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
