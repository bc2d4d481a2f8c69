"""Data-source registry: a task's `dataset.source` names the function that loads its examples."""

from __future__ import annotations

from typing import Callable

from ..errors import SpatialbenchError
from ..specs import TaskSpec
from .examples import TaskData
from .synthetic import build_task_data

Loader = Callable[[TaskSpec], TaskData]
_SOURCES: dict[str, Loader] = {}


def register_source(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        _SOURCES[name] = fn
        return fn

    return wrap


@register_source("synthetic")
def _synthetic(task: TaskSpec) -> TaskData:
    return build_task_data(task.kind, task.dataset, dict(task.splits))


def load_task_data(task: TaskSpec, limit: int | None = None) -> TaskData:
    """The task's examples; `limit` (testing only) keeps the first N of each split."""
    source = task.dataset.source
    if source not in _SOURCES:
        raise SpatialbenchError(f"no loader for dataset source '{source}'", field="dataset.source")
    data = _SOURCES[source](task)
    empty = [name for name, items in data.splits.items() if not items]
    if empty:
        raise SpatialbenchError(f"task '{task.name}': split(s) {empty} have no examples",
                                field="dataset", fix="enlarge the dataset or check the split mapping")
    if limit is not None:
        data.splits = {name: items[:limit] for name, items in data.splits.items()}
    return data
