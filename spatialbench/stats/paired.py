"""Paired comparisons, control-task selectivity and the recovered share, by the hierarchical bootstrap of
stats.bootstrap (seeds, then images); the image draws are shared by the systems compared."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bootstrap import Resampling, percentile
from .metrics import COUNTED, METRICS, PER_ITEM, Metric, _paired, per_item


@dataclass(frozen=True)
class PairedResult:
    diff: float                   # mean metric(A) - mean metric(B)
    ci95: tuple[float, float]     # percentile CI of the difference
    p_value: float                # two-sided, shift method (see paired_bootstrap)
    a: float                      # seed-averaged metric of A
    b: float                      # seed-averaged metric of B


@dataclass(frozen=True)
class SelectivityResult:
    task: float
    control: float
    selectivity: float            # task - control
    ci95: tuple[float, float]



def _result(a: float, b: float, reps: np.ndarray) -> PairedResult:
    diff = a - b
    lo, hi = percentile(reps)
    # Shift method: centring the replicates on 0 approximates the null distribution
    # of the difference; the +1 counts the observed value as one of the draws, so p
    # is never 0. The tiny tolerance keeps float noise from splitting exact ties.
    extreme = np.abs(reps - diff) >= abs(diff) - 1e-12
    p = (np.count_nonzero(extreme) + 1) / (len(reps) + 1)
    return PairedResult(float(diff), (float(lo), float(hi)), float(p), float(a), float(b))


def _scores(x, n_items: int | None = None) -> np.ndarray:
    """Per-item scores as [seeds, N]: a 1-D array is one seed (or scores already averaged over seeds)."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    if x.ndim != 2 or x.shape[1] == 0 or (n_items is not None and x.shape[1] != n_items):
        raise ValueError(f"need non-empty [N] or [seeds, N] scores over the same items, got shape {x.shape}")
    return x


def paired_from_scores(scores_a, scores_b, clusters, n_boot: int = 2000, seed: int = 0) -> PairedResult:
    """Paired hierarchical bootstrap of mean(scores_a) - mean(scores_b).

    scores_a and scores_b are the two systems' per-item scores on the same items, [N] or [seeds, N] (a
    system's seeds need not match the other's in number). Each replicate draws images with replacement,
    the same for both systems, so item-level difficulty shared by A and B cancels out of the difference,
    and each system's seeds independently. CI and p-value as in paired_bootstrap.
    """
    clusters = np.asarray(clusters)
    a = _scores(scores_a, len(clusters))
    b = _scores(scores_b, len(clusters))
    resampling = Resampling(clusters, n_boot, seed)
    reps = resampling.means(a) - resampling.means(b)
    return _result(a.mean(), b.mean(), reps)


def _compare(metric, side_a, side_b, clusters, n_boot, seed) -> PairedResult:
    """side_a/side_b: one (pred, target) pair per seed; targets may differ by side."""
    if not side_a or not side_b:
        raise ValueError("need predictions from at least one seed for each system")
    clusters = np.asarray(clusters)
    side_a = [_paired(p, t) for p, t in side_a]
    side_b = [_paired(p, t) for p, t in side_b]
    if any(len(t) != len(clusters) for _, t in side_a + side_b):
        raise ValueError("every prediction array must cover the same items as clusters")

    if isinstance(metric, str) and metric in PER_ITEM:
        return paired_from_scores([per_item(metric, p, t) for p, t in side_a],
                                  [per_item(metric, p, t) for p, t in side_b], clusters, n_boot, seed)

    fn: Metric = METRICS[metric] if isinstance(metric, str) else metric
    resampling = Resampling(clusters, n_boot, seed)
    if isinstance(metric, str) and metric in COUNTED:
        counted = COUNTED[metric]
        reps = [resampling.summed(counted.counts(side), counted.score) for side in (side_a, side_b)]
    else:  # any other metric (a callable) is rescored on each replicate's items
        reps = [resampling.rescored(lambda s, items, side=side: fn(side[s][0][items], side[s][1][items]),
                                    len(side)) for side in (side_a, side_b)]
    a, b = (float(np.mean([fn(p, t) for p, t in side])) for side in (side_a, side_b))
    return _result(a, b, reps[0] - reps[1])


def paired_bootstrap(
    metric: str | Metric, preds_a: list[np.ndarray], preds_b: list[np.ndarray],
    target, clusters, n_boot: int = 2000, seed: int = 0,
) -> PairedResult:
    """Compare systems A and B scored on the same test items.

    preds_a / preds_b hold one prediction array per seed; each system's score is
    its seed-averaged metric, and diff = score(A) - score(B). Each bootstrap
    replicate draws clusters (images) with replacement and rescores both systems
    on the same drawn items (the pairing), each on its own draw of its seeds;
    ci95 is the 2.5/97.5 percentile of the replicate differences d*.

    p_value (two-sided) uses the shift method: under H0 the difference is
    distributed like d* - diff, so p = (#{|d* - diff| >= |diff|} + 1) / (n_boot + 1).
    Identical systems give p = 1; the smallest possible p is 1 / (n_boot + 1).
    """
    target = np.asarray(target)
    return _compare(metric, [(p, target) for p in preds_a], [(p, target) for p in preds_b],
                    clusters, n_boot, seed)


def selectivity(
    task_preds: list[np.ndarray], control_preds: list[np.ndarray],
    task_target, control_target, clusters, metric: str | Metric,
    n_boot: int = 1000, seed: int = 0,
) -> SelectivityResult:
    """Hewitt & Liang (2019) selectivity: task score - control-task score.

    Both probes are scored on the same test items (control_target relabels them
    with control_targets / control_boxes; use one control map for all probe seeds,
    as Hewitt & Liang fix one control task), so the CI is the paired
    bootstrap of the difference.
    """
    res = _compare(metric, [(p, np.asarray(task_target)) for p in task_preds],
                   [(p, np.asarray(control_target)) for p in control_preds], clusters, n_boot, seed)
    return SelectivityResult(res.a, res.b, res.diff, res.ci95)


def recovered_from_scores(scores, floor, ceiling, clusters, n_boot: int = 2000,
                          seed: int = 0) -> tuple[float, tuple[float, float]] | None:
    """(score - floor) / (ceiling - floor) of the means, with a percentile CI from the hierarchical bootstrap:
    the same image draws for all three (paired: the items are the same), each its own seed draws. Each of
    the three is [N] or [seeds, N]; None when the ceiling is not above the floor.

    Replicates whose ceiling does not exceed their floor have no ratio and are left out of the CI."""
    clusters = np.asarray(clusters)
    arrays = [_scores(x, len(clusters)) for x in (scores, floor, ceiling)]
    c, f, o = (a.mean() for a in arrays)
    if not o - f > 0:
        return None
    resampling = Resampling(clusters, n_boot, seed)
    rep = [resampling.means(a) for a in arrays]
    span = rep[2] - rep[1]
    ratio = np.where(span > 0, (rep[0] - rep[1]) / np.where(span > 0, span, 1.0), np.nan)
    return float((c - f) / (o - f)), percentile(ratio)
