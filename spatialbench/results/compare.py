"""Model vs model: a paired bootstrap over the test items two results files share.

Each run's samples file holds, per test item, every condition's headline score averaged over seeds.
Two runs of the same task version over the same data score the same items, so the difference of
their means gets a CI and p-value from the same clustered resampling (by image) as joint vs frozen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from ..atomic import atomic_write
from ..errors import SpatialbenchError
from .schema import RunResult, TaskResult, read_results
from ..specs import Strict
from ..stats import paired

SCHEMA_VERSION = 1


class Side(Strict):
    model: str
    results: str = Field(description="the results JSON this side was read from")
    condition: str = Field(description="frozen, joint, or a baseline: whose per-item scores were paired")


class TaskComparison(Strict):
    metric: str
    a: float = Field(description="A's headline score, seed-averaged, over the paired items")
    b: float
    diff: float = Field(description="a - b")
    ci95: tuple[float, float] = Field(description="95% paired bootstrap CI of the difference, resampled by image")
    p_value: float
    n_items: int
    n_images: int


class ModelComparison(Strict):
    schema_version: int = SCHEMA_VERSION
    a: Side
    b: Side
    tasks: dict[str, TaskComparison] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict, description="task -> why it was not compared")

    def write(self, path: Path) -> None:
        text = self.model_dump_json(indent=2)
        atomic_write(Path(path), lambda p: p.write_text(text))


def item_scores(results_path: Path, run: RunResult, task: TaskResult, condition: str) -> dict[str, tuple[float, str]]:
    """uid -> (seed-averaged headline score of `condition`, image id), from the task's samples file."""
    path = Path(results_path).parent / task.predictions_file
    primary = run.regimes[0]
    out = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SpatialbenchError(f"cannot read the task's samples file: {e}", file=str(path),
                                fix="compare needs the results JSON beside its samples_<task>.jsonl files") from None
    for number, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
            if "scores" in item:  # written since per-condition scores were recorded
                score = item["scores"][condition]
            elif condition == primary:  # older files: only the first regime's per-seed scores
                score = float(np.mean(list(item[task.headline].values())))
            else:
                raise SpatialbenchError(f"the file predates per-condition scores: only {primary!r} can be compared",
                                        file=str(path), fix=f"rerun the model, or compare --condition {primary}")
            out[item["uid"]] = (float(score), str(item["image_id"]))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SpatialbenchError(f"line {number}: not a samples line with a {condition!r} score ({e!r})",
                                    file=str(path)) from None
    return out


def _why_not(ta: TaskResult | None, tb: TaskResult | None, condition: str) -> str | None:
    """Why two runs' results for one task are not over the same items, or None if they are."""
    for side, t in (("A", ta), ("B", tb)):
        if t is None:
            return f"not in {side}"
        if t.status != "ok":
            return f"failed in {side}"
        if t.conditions and condition not in t.conditions:
            return f"{side} has no {condition!r} (it ran: {', '.join(t.conditions)})"
    if ta.version != tb.version:
        return f"task version {ta.version} in A, {tb.version} in B: not the same task"
    if ta.dataset_fingerprint != tb.dataset_fingerprint:
        return (f"dataset fingerprints differ ({ta.dataset_fingerprint} vs {tb.dataset_fingerprint}): "
                "other test items (another data copy, or --limit)")
    if ta.headline != tb.headline:
        return f"headline metric {ta.headline} in A, {tb.headline} in B"
    return None


def _missing_samples(*sides: tuple[Path, TaskResult]) -> str | None:
    missing = [str(p.parent / t.predictions_file) for p, t in sides if not (p.parent / t.predictions_file).is_file()]
    return f"no samples file {' or '.join(missing)}" if missing else None


def compare(path_a: Path, path_b: Path, condition: str = "frozen", n_boot: int = 2000) -> ModelComparison:
    """A - B on every task both runs scored, each run's `condition` paired item by item."""
    run_a, run_b = read_results(path_a), read_results(path_b)
    result = ModelComparison(a=Side(model=run_a.model.name, results=str(path_a), condition=condition),
                             b=Side(model=run_b.model.name, results=str(path_b), condition=condition))
    for name in sorted(set(run_a.tasks) | set(run_b.tasks)):
        ta, tb = run_a.tasks.get(name), run_b.tasks.get(name)
        why = _why_not(ta, tb, condition) or _missing_samples((Path(path_a), ta), (Path(path_b), tb))
        if why is None:
            a = item_scores(path_a, run_a, ta, condition)
            b = item_scores(path_b, run_b, tb, condition)
            if set(a) != set(b):
                why = f"the samples files list different test items ({len(set(a) ^ set(b))} not in both)"
        if why is not None:
            result.skipped[name] = why
            continue
        uids = sorted(a)
        clusters = np.array([a[u][1] for u in uids])
        r = paired.paired_from_scores([a[u][0] for u in uids], [b[u][0] for u in uids], clusters, n_boot=n_boot)
        result.tasks[name] = TaskComparison(metric=ta.headline, a=r.a, b=r.b, diff=r.diff, ci95=r.ci95,
                                            p_value=r.p_value, n_items=len(uids), n_images=len(set(clusters)))
    return result
