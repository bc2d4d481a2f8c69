"""A rerun into an output that already holds results adds to them instead of replacing them.

A run writes OUTPUT/<card>/results.json. Rerunning with other tasks (`--tasks synth_vsr` after `--tasks all`)
or other conditions (`--regime joint` after a frozen run, other baselines) keeps everything the earlier runs
measured: tasks this run does not touch are carried over as they were, and a task it reruns keeps the earlier
conditions this run does not produce, when they were measured on the same data (task version and dataset
fingerprint). What this run measures replaces the earlier number for the same condition.

Numbers are only merged when they are comparable. If the file holds results of another checkpoint, point,
geometry, seeds, limit, precision, stored dtype, data seed or joint-training recipe, the run is refused before any work,
with the differences named: write to another --output, or move the file away.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpatialbenchError
from .schema import RunResult, TaskResult, read_results
from ..specs import layer_order

# Fields whose difference makes two runs' numbers incomparable.
SAME = ("checkpoint", "point", "geometry", "seeds", "limit", "mixed_precision", "stored_dtype", "data_seed")


def previous(path: Path, result: RunResult) -> RunResult | None:
    """The results already at `path` when they can be merged into `result`; None when there are none."""
    if not path.is_file():
        return None
    before = read_results(path)
    differs = {f: (getattr(before, f), getattr(result, f)) for f in SAME if getattr(before, f) != getattr(result, f)}
    if before.joint_training and result.joint_training and before.joint_training != result.joint_training:
        differs["joint_training"] = (before.joint_training.model_dump(), result.joint_training.model_dump())
    if differs:
        listed = "; ".join(f"{f}: {a!r} there, {b!r} now" for f, (a, b) in differs.items())
        raise SpatialbenchError(f"{path} holds results this run's cannot be merged with ({listed})", file=str(path),
                                fix="write to another --output, or move that results.json away")
    return before


def start(result: RunResult, before: RunResult | None, rerun: set[str]) -> None:
    """Carry the earlier tasks this run does not rerun, and the earlier run's regimes, baselines and recipe."""
    if before is None:
        return
    result.tasks.update({name: task for name, task in before.tasks.items() if name not in rerun})
    result.regimes = [r for r in ("frozen", "joint") if r in {*before.regimes, *result.regimes}]
    result.baselines = list(dict.fromkeys([*before.baselines, *result.baselines]))
    result.layers = sorted({*before.layers, *result.layers}, key=layer_order)  # the kept tasks' layers too
    result.joint_training = result.joint_training or before.joint_training
    if result.resampler_lr is None:
        result.resampler_lr = before.resampler_lr


def task(new: TaskResult, before: RunResult | None) -> TaskResult:
    """A rerun task with the earlier run's other conditions (and their comparisons) on the same data kept."""
    old = before.tasks.get(new.name) if before else None
    if (old is None or old.status != "ok" or new.status != "ok" or old.version != new.version
            or old.dataset_fingerprint != new.dataset_fingerprint):
        return new
    kept = {name: c for name, c in old.conditions.items() if name not in new.conditions}
    compared = {name: c for name, c in old.comparisons.items() if name not in new.comparisons}
    return new.model_copy(update={"conditions": {**kept, **new.conditions},
                                  "comparisons": {**compared, **new.comparisons}})
