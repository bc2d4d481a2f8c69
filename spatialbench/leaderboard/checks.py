"""Internal consistency of one results file: numbers that cannot all be true at once.

Every problem names its field path (`tasks.<task>.conditions.<condition>.metrics.<metric>.ci95`), so a
submitter can find it. The registry-dependent checks (task known, version, split sizes) are in validate.py.
"""

from __future__ import annotations

import math

from ..errors import SpatialbenchError
from ..results import MetricSummary, Paired, RunResult, TaskResult
from ..specs import BASELINES, SPLITS, TARGET_METRICS, is_layer
from ..stats.metrics import PER_ITEM

KNOWN_METRICS = sorted({m for names in TARGET_METRICS.values() for m in names})
BOUNDED = set(KNOWN_METRICS)  # accuracy, macro-F1, Acc@IoU>=0.5 and mean IoU are all fractions
REGIMES = ("frozen", "joint")
TOL = 1e-6  # float noise of a mean written to JSON and read back


class Problems(list):
    """The problems found in one file."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def add(self, field: str, message: str, fix: str | None = None) -> None:
        self.append(SpatialbenchError(message, file=self.file, field=field, fix=fix))


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _bounded(out: Problems, field: str, value: float, bounded: bool) -> bool:
    if not math.isfinite(value):
        out.add(field, f"{value} is not a finite number")
        return False
    if bounded and not 0.0 <= value <= 1.0:
        out.add(field, f"{_fmt(value)} is outside [0, 1]")
        return False
    return True


def check_summary(out: Problems, field: str, metric: str, m: MetricSummary, n_seeds: int) -> None:
    """Range, CI ordering, CI containing the mean, and mean == mean(per_seed) for one metric."""
    bounded = metric in BOUNDED
    ok = _bounded(out, f"{field}.mean", m.mean, bounded)
    if not math.isfinite(m.std) or m.std < 0:
        out.add(f"{field}.std", f"{_fmt(m.std)} is not a standard deviation (must be finite and >= 0)")
    lo, hi = m.ci95
    ci_ok = _bounded(out, f"{field}.ci95", lo, bounded) and _bounded(out, f"{field}.ci95", hi, bounded)
    if ci_ok and lo > hi:
        out.add(f"{field}.ci95", f"lower bound {_fmt(lo)} exceeds upper bound {_fmt(hi)}")
    # The percentile bootstrap of a mean of per-item scores contains the observed mean; for macro-F1, a
    # non-decomposable metric, the bootstrap is biased downward and may legitimately miss it.
    elif ci_ok and ok and metric in PER_ITEM and not lo - TOL <= m.mean <= hi + TOL:
        out.add(f"{field}.ci95", f"does not contain the mean {_fmt(m.mean)}")
    for i, v in enumerate(m.per_seed):
        _bounded(out, f"{field}.per_seed.{i}", v, bounded)
    if len(m.per_seed) != n_seeds:
        out.add(f"{field}.per_seed", f"{len(m.per_seed)} value(s) for the run's {n_seeds} seed(s) that trained")
    elif m.per_seed and ok and abs(sum(m.per_seed) / len(m.per_seed) - m.mean) > TOL:
        out.add(f"{field}.mean", f"{_fmt(m.mean)} is not the mean of per_seed "
                                 f"({_fmt(sum(m.per_seed) / len(m.per_seed))})")


def check_paired(out: Problems, field: str, p: Paired, expected_diff: float | None) -> None:
    """A paired difference: its CI contains it, p is a probability, and it is the difference it claims."""
    if not _bounded(out, f"{field}.diff", p.diff, False):
        return
    if abs(p.diff) > 1.0 + TOL and p.metric in BOUNDED:
        out.add(f"{field}.diff", f"{_fmt(p.diff)} is outside [-1, 1] (a difference of two fractions)")
    lo, hi = p.ci95
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        out.add(f"{field}.ci95", f"[{_fmt(lo)}, {_fmt(hi)}] is not an interval")
    elif not lo - TOL <= p.diff <= hi + TOL:
        out.add(f"{field}.ci95", f"does not contain the difference {_fmt(p.diff)}")
    if not 0.0 < p.p_value <= 1.0:
        out.add(f"{field}.p_value", f"{_fmt(p.p_value)} is not a p-value in (0, 1]")
    if expected_diff is not None and abs(p.diff - expected_diff) > TOL:
        out.add(f"{field}.diff", f"{_fmt(p.diff)} is not the difference of the two means ({_fmt(expected_diff)})")


def _check_metrics(out: Problems, field: str, metrics: dict[str, MetricSummary], n_seeds: int,
                   allowed: list[str]) -> None:
    for name, m in metrics.items():
        if name not in allowed:
            out.add(f"{field}.{name}", f"unknown metric '{name}' for this task; expected one of {allowed}")
            continue
        check_summary(out, f"{field}.{name}", name, m, n_seeds)


def _check_sizes(out: Problems, where: str, task: TaskResult, limit: int | None) -> None:
    for split in task.n:
        if split not in SPLITS:
            out.add(f"{where}.n.{split}", f"unknown split; expected {list(SPLITS)}")
    for split, images in task.n_images.items():
        n = task.n.get(split)
        if n is None:
            out.add(f"{where}.n_images.{split}", "has no matching entry in n")
        elif images > n:
            out.add(f"{where}.n_images.{split}", f"{images} images for {n} examples (each example has one image)")
    for split, n in task.n.items():
        if n < 0 or (limit is not None and n > limit):
            out.add(f"{where}.n.{split}", f"{n} examples, outside [0, limit={limit}]")


def _trained_seeds(result: RunResult, cond) -> list[int]:
    """The run's seeds less those whose training failed (left out of the metrics by the runner)."""
    failed = getattr(cond, "failed_seeds", None) or {}  # getattr: older results schemas have no failed_seeds
    return [s for s in result.seeds if s not in failed]


def _check_condition(out: Problems, result: RunResult, task: TaskResult, field: str, name: str, cond,
                     allowed: list[str], headline: str | None) -> None:
    """One regime or baseline: its role, seeds, metrics, control and selectivity, and per-group scores."""
    listed = [*result.regimes, *result.baselines, *result.layers]
    expected_role = ("regime" if name in REGIMES else "baseline" if name in BASELINES
                     else "layer" if is_layer(name) else None)
    if expected_role is None:
        out.add(field, f"unknown condition '{name}'; expected one of {[*REGIMES, *BASELINES]} or a layer "
                       "(vision.n, resampler.n)")
    elif cond.role != expected_role:
        out.add(f"{field}.role", f"'{cond.role}', but {name} is a {expected_role}")
    if name not in listed:
        out.add(field, f"'{name}' is not among the run's regimes {result.regimes}, baselines {result.baselines} "
                       f"or layers {result.layers}")
    trained = _trained_seeds(result, cond)
    failed = sorted(set(getattr(cond, "failed_seeds", {})) - set(result.seeds))
    if failed:
        out.add(f"{field}.failed_seeds", f"seeds {failed} are not among the run's seeds {result.seeds}")
    _check_metrics(out, f"{field}.metrics", cond.metrics, len(trained), allowed)
    seeds = [s.seed for s in cond.seeds]
    if seeds and seeds != trained:
        out.add(f"{field}.seeds", f"seeds {seeds} differ from the run's seeds that trained {trained}")
    if cond.control is not None:
        check_summary(out, f"{field}.control", headline or "", cond.control, len(trained))
    if cond.selectivity is not None and headline in cond.metrics:
        control = cond.control.mean if cond.control is not None else None
        check_paired(out, f"{field}.selectivity", cond.selectivity,
                     cond.metrics[headline].mean - control if control is not None else None)
    if cond.recovered is not None:
        _check_recovered(out, f"{field}.recovered", task, cond, headline)
    for group_key, values in cond.by_group.items():
        for value, g in values.items():
            _bounded(out, f"{field}.by_group.{group_key}.{value}.mean", g.mean, headline in BOUNDED)
        total, test = sum(g.n for g in values.values()), task.n.get("test")
        if test is not None and total > test:
            out.add(f"{field}.by_group.{group_key}", f"{total} items in all, more than n.test = {test}")


def _check_recovered(out: Problems, field: str, task: TaskResult, cond, headline: str | None) -> None:
    """(score - blind) / (oracle - blind) of the headline means, with a CI around it."""
    lo, hi = cond.recovered.ci95
    if not all(math.isfinite(x) for x in (cond.recovered.value, lo, hi)) or lo > hi:
        out.add(f"{field}.ci95", f"[{_fmt(lo)}, {_fmt(hi)}] is not an interval around a finite value")
    refs = [task.conditions.get(name) for name in ("blind", "oracle")]
    if any(r is None for r in refs):
        out.add(field, "is given, but the task lacks the blind or the oracle condition it is measured against")
        return
    if headline not in PER_ITEM or any(headline not in c.metrics for c in (cond, *refs)):
        return
    score, floor, ceiling = (c.metrics[headline].mean for c in (cond, *refs))
    if ceiling - floor > TOL and abs(cond.recovered.value - (score - floor) / (ceiling - floor)) > 1e-4:
        out.add(f"{field}.value", f"{_fmt(cond.recovered.value)} is not (score - blind) / (oracle - blind) = "
                                  f"{_fmt((score - floor) / (ceiling - floor))}")


def check_task(out: Problems, result: RunResult, key: str, task: TaskResult, allowed: list[str],
               headline: str | None) -> None:
    """Everything about one task that needs no registry beyond the allowed metrics and the headline."""
    where = f"tasks.{key}"
    primary = next((r for r in result.regimes if r in task.conditions), None)
    n_seeds = len(_trained_seeds(result, task.conditions[primary])) if primary else len(result.seeds)
    if task.name != key:
        out.add(f"{where}.name", f"'{task.name}' differs from its key '{key}'")
    if task.status == "failed":
        if not task.error:
            out.add(f"{where}.error", "a failed task must say why it failed")
        return
    if not task.metrics:
        out.add(f"{where}.metrics", "status is 'ok' but there are no metrics", fix="a task without scores is 'failed'")
        return
    headline = task.headline or headline
    if headline and headline not in task.metrics:
        out.add(f"{where}.headline", f"headline metric '{headline}' is missing from metrics {sorted(task.metrics)}")
    if headline and headline not in task.chance:
        out.add(f"{where}.chance", f"has no chance level for the headline metric '{headline}'")
    for name, value in task.chance.items():
        _bounded(out, f"{where}.chance.{name}", value, name in BOUNDED)
    _check_sizes(out, where, task, result.limit)
    if "test" not in task.n:
        out.add(f"{where}.n.test", "an 'ok' task must say how many test examples it scored")
    _check_metrics(out, f"{where}.metrics", task.metrics, n_seeds, allowed)
    conditions = task.conditions  # schema v1 has none: its metrics are the frozen regime, checked above
    if primary and conditions[primary].metrics != task.metrics:
        out.add(f"{where}.metrics", f"differs from conditions.{primary}.metrics (the first regime's, by definition)")
    for name, cond in conditions.items():
        _check_condition(out, result, task, f"{where}.conditions.{name}", name, cond, allowed, headline)
    for name, p in task.comparisons.items():
        a, b = conditions.get(p.a), conditions.get(p.b)
        expected = None
        if a is None or b is None:
            out.add(f"{where}.comparisons.{name}", f"compares '{p.a}' with '{p.b}', which are not both conditions")
        elif p.metric in a.metrics and p.metric in b.metrics:
            expected = a.metrics[p.metric].mean - b.metrics[p.metric].mean
        check_paired(out, f"{where}.comparisons.{name}", p, expected)


def check_run(out: Problems, result: RunResult) -> None:
    """File-level facts: seeds, regimes and baselines."""
    if not result.seeds:
        out.add("seeds", "no seeds: every score is a mean over at least one seed")
    elif len(set(result.seeds)) != len(result.seeds):
        out.add("seeds", f"{result.seeds} repeats a seed")
    for name in result.regimes:
        if name not in REGIMES:
            out.add("regimes", f"unknown regime '{name}'; expected {list(REGIMES)}")
    for name in result.baselines:
        if name not in BASELINES:
            out.add("baselines", f"unknown baseline '{name}'; expected {list(BASELINES)}")
    for name in result.layers:
        if not is_layer(name):
            out.add("layers", f"'{name}' is not a layer name (vision.n or resampler.n, n from 1)")
    if len(set(result.layers)) != len(result.layers):
        out.add("layers", f"{result.layers} repeats a layer")
    if result.limit is not None and result.limit < 1:
        out.add("limit", f"{result.limit} is not a positive example cap")
