"""Load a task's examples through the loader its `dataset.source` names."""

from __future__ import annotations

import math
from numbers import Integral, Real

from ..errors import SpatialbenchError
from ..registry import spec_file
from ..specs import SPLITS, TaskSpec
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
    empty = [name for name in SPLITS if not data.splits.get(name)]
    if empty:
        raise _empty_splits(task, empty)
    _check_targets(task, data)
    if limit is not None:
        data.splits = {name: items[:limit] for name, items in data.splits.items()}
    data.mark_seen_images()
    return data


def _empty_splits(task: TaskSpec, empty: list[str]) -> SpatialbenchError:
    """Which split of which task file came out empty, where it came from, and what to change."""
    file = spec_file(task)
    named = ", ".join(f"'{s}'" + ("" if task.splits[s] == s else f" (source split '{task.splits[s]}')") for s in empty)
    field, fix = f"splits.{empty[0]}", ("check that the source split holds annotations and that the task's filters "
                                        "(e.g. min_area, validation_fraction) leave some; or map it to another split")
    if task.dataset.source == "synthetic":
        zero = [s for s in empty if task.dataset.sizes[s] < 1]
        field = f"dataset.sizes.{zero[0]}" if zero else "dataset.sizes"
        fix = "give every split at least one scene in dataset.sizes" if zero else "generate more scenes"
    return SpatialbenchError(f"task '{task.name}': split(s) {named} have no examples",
                             file=str(file) if file else None, field=field, fix=fix)


def _check_targets(task: TaskSpec, data: TaskData) -> None:
    """Every target is in the task's label set (a class index below len(classes), or a proper box), so a
    loader's mistake is reported with the example, not met later as an index error inside the probe."""
    n = len(data.classes or [])
    for split in SPLITS:
        for ex in data.splits[split]:
            t = ex.target
            if task.target == "box":
                ok = (isinstance(t, (tuple, list)) and len(t) == 4
                      and all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in t)
                      and t[2] > t[0] and t[3] > t[1])
                expected = "a box (x0, y0, x1, y1) of finite numbers with x1 > x0 and y1 > y0"
            else:
                ok = isinstance(t, Integral) and not isinstance(t, bool) and 0 <= t < n
                expected = f"a class index in 0..{n - 1} of {(data.classes or [])[:6]}" if n else "a class list"
            if not ok:
                file = spec_file(task)
                raise SpatialbenchError(
                    f"task '{task.name}': example {ex.uid} (split '{split}') has target {t!r}, outside the label set: "
                    f"expected {expected}", file=str(file) if file else None, field="target",
                    fix="the data source produced this label; check its annotations, or report a loader bug")
