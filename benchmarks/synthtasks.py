"""Benchmark task YAMLs: copies of the shipped synthetic tasks, written to a temporary directory.

They are passed to the runner with `include_paths` (`--include-path` on the command line), so the
benchmarks run offline on the same scene generator and probe settings as the shipped tasks.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from spatialbench.registry import TaskRegistry
from spatialbench.specs import TaskSpec

GROUP = "bench_synthetic"


def _write(spec: TaskSpec, directory: Path) -> Path:
    data = spec.model_dump(mode="json", exclude_defaults=False)
    path = Path(directory) / f"{spec.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def synthetic_group(directory: Path, sizes: dict[str, int] | None) -> str:
    """Copies of every shipped synthetic task in group `bench_synthetic` (with `sizes`, if given).

    Returns the --tasks selector: the shipped `synthetic` group itself when `sizes` is None.
    """
    if sizes is None:
        return "synthetic"
    Path(directory).mkdir(parents=True, exist_ok=True)
    for spec in TaskRegistry().resolve("synthetic"):
        copy = spec.model_copy(deep=True)
        copy.name, copy.groups = f"bench_{spec.name}", [GROUP]
        copy.dataset.sizes = dict(sizes)
        _write(copy, directory)
    return GROUP


def variant(directory: Path, base: str, name: str, sizes: dict[str, int] | None = None, **probe) -> TaskSpec:
    """A copy of shipped task `base` named `name`, with other scene counts and probe settings."""
    spec = TaskRegistry().get(base).model_copy(deep=True)
    spec.name, spec.groups = name, ["bench_variants"]
    if sizes is not None:
        spec.dataset.sizes = dict(sizes)
    # validated, so `lr=1e-3` becomes the grid [1e-3] it is once read (model_copy would keep the float)
    spec.probe = type(spec.probe).model_validate({**spec.probe.model_dump(), **probe})
    Path(directory).mkdir(parents=True, exist_ok=True)
    _write(spec, directory)
    return TaskSpec.model_validate(spec.model_dump())
