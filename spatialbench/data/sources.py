"""Data-source registry: a task's `dataset.source` names the function that loads its examples."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SpatialbenchError
from ..specs import TaskSpec
from .examples import TaskData
from .synthetic import build_task_data


@dataclass(frozen=True)
class DataContext:
    """Where real data lives on this machine: flags first, then environment variables."""

    data_dir: Path | None = None
    coco_root: Path | None = None

    @classmethod
    def from_flags(cls, data_dir: Path | None = None, coco_root: Path | None = None) -> DataContext:
        env = lambda name: Path(os.environ[name]) if os.environ.get(name) else None
        return cls(data_dir or env("SPATIALBENCH_DATA"), coco_root or env("COCO_ROOT"))

    def path(self, template: str, field: str, **values: str) -> Path:
        """Fill {data_dir}, {coco_root} and any given placeholders of a dataset path."""
        needed = {"data_dir": (self.data_dir, "--data-dir or $SPATIALBENCH_DATA"),
                  "coco_root": (self.coco_root, "--coco-root or $COCO_ROOT")}
        for name, (value, how) in needed.items():
            if "{" + name + "}" in template:
                if value is None:
                    raise SpatialbenchError(f"'{template}' needs {{{name}}}, which is not set", field=field,
                                            fix=f"pass {how}, or write an absolute path in the task YAML")
                values[name] = str(value)
        try:
            return Path(template.format(**values)).expanduser()
        except (KeyError, IndexError) as e:
            raise SpatialbenchError(f"unknown placeholder {e} in '{template}'", field=field) from None


Loader = Callable[[TaskSpec, DataContext], TaskData]
_SOURCES: dict[str, Loader] = {}


def register_source(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        _SOURCES[name] = fn
        return fn

    return wrap


@register_source("synthetic")
def _synthetic(task: TaskSpec, ctx: DataContext) -> TaskData:
    return build_task_data(task.kind, task.dataset, dict(task.splits))


def load_task_data(task: TaskSpec, limit: int | None = None, ctx: DataContext | None = None) -> TaskData:
    """The task's examples; `limit` (testing only) keeps the first N of each split."""
    source = task.dataset.source
    if source not in _SOURCES:
        raise SpatialbenchError(f"no loader for dataset source '{source}'", field="dataset.source")
    data = _SOURCES[source](task, ctx or DataContext.from_flags())
    empty = [name for name, items in data.splits.items() if not items]
    if empty:
        raise SpatialbenchError(f"task '{task.name}': split(s) {empty} have no examples",
                                field="dataset", fix="enlarge the dataset or check the split mapping")
    if limit is not None:
        data.splits = {name: items[:limit] for name, items in data.splits.items()}
    return data
