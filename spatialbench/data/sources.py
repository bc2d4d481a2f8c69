"""Load a task's examples through the loader its `dataset.source` names."""

from __future__ import annotations

from ..errors import SpatialbenchError
from ..specs import TaskSpec
from . import coco, refer, vsr  # noqa: F401  (each registers its source)
from .examples import TaskData
from .registry import _SOURCES, DataContext, register_source
from .synthetic import build_task_data

__all__ = ["DataContext", "load_task_data", "register_source"]


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

