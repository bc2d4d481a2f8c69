"""Every test runs offline, with one throwaway cache per session (tiny checkpoints are built once)."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("spatialbench-cache")
    os.environ["SPATIALBENCH_CACHE"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "hf-datasets")  # never the user's ~/.cache
    return cache


SMALL_TASKS = {
    "small_region": ("region_localization", {}, "mlp"),
    "small_grid": ("region_localization", {"grid": 3}, "linear"),
    "small_relation": ("relation", {}, "mlp"),
    "small_vsr": ("vsr", {}, "attentive"),
    "small_grounding": ("grounding", {}, "attentive"),
}


def write_small_tasks(root: Path) -> Path:
    """Task YAMLs over a few small scenes, one per kind, in group `small`: seconds, not minutes."""
    import yaml

    root.mkdir(parents=True)
    for name, (kind, extra, arch) in SMALL_TASKS.items():
        spec = {
            "name": name, "kind": kind, "groups": ["small"],
            "dataset": {"source": "synthetic", "seed": 3, "image_size": 64,
                        "sizes": {"train": 40, "validation": 12, "test": 20}, **extra},
            # One lr, not a grid: these tasks test the machinery, and a grid multiplies every fit.
            "probe": {"architecture": arch, "width": 16, "depth": 1, "heads": 2, "epochs": 3, "patience": 2, "lr": 1e-3},
        }
        (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return root


@pytest.fixture
def small_tasks(tmp_path) -> Path:
    return write_small_tasks(tmp_path / "tasks")
