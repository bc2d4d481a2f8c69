"""Paired comparisons and control-task selectivity, by a cluster bootstrap over images.

Paired tests reuse the scoring of spatialbench.stats.metrics and its resampling scheme
(clusters = images, drawn with replacement, the same draws for every seed); here
the same draws are also shared by the two systems being compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import METRICS, PER_ITEM, Metric, _paired, per_item


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



def _cluster_draws(clusters, n_boot: int, seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    # Must match metrics.cluster_bootstrap_ci draw for draw, so that with the same
    # seed each system's replicates are exactly the ones behind its own CI there.
    ids, inv = np.unique(np.asarray(clusters), return_inverse=True)
    rng = np.random.default_rng(seed)
    return inv, len(ids), rng.integers(0, len(ids), size=(n_boot, len(ids)))


def _result(a: float, b: float, reps: np.ndarray) -> PairedResult:
    diff = a - b
    lo, hi = np.quantile(reps, [0.025, 0.975])
    # Shift method: centring the replicates on 0 approximates the null distribution
    # of the difference; the +1 counts the observed value as one of the draws, so p
    # is never 0. The tiny tolerance keeps float noise from splitting exact ties.
    extreme = np.abs(reps - diff) >= abs(diff) - 1e-12
    p = (np.count_nonzero(extreme) + 1) / (len(reps) + 1)
    return PairedResult(float(diff), (float(lo), float(hi)), float(p), float(a), float(b))


def paired_from_scores(scores_a, scores_b, clusters, n_boot: int = 2000, seed: int = 0) -> PairedResult:
    """Paired cluster bootstrap of mean(scores_a) - mean(scores_b).

    scores_a[i] and scores_b[i] are the two systems' scores on the same item i
    (e.g. seed-averaged per-item scores read from two results files, aligned by
    the caller). Each replicate resamples clusters with replacement and applies
    the same draw to both systems, so item-level difficulty shared by A and B
    cancels out of the difference. CI and p-value as in paired_bootstrap.
    """
    a, b, clusters = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float), np.asarray(clusters)
    if a.shape != b.shape or a.ndim != 1 or len(clusters) != len(a) or len(a) == 0:
        raise ValueError(f"need equal-length, non-empty 1-D scores and clusters, "
                         f"got {a.shape}, {b.shape}, {clusters.shape}")
    inv, n_clusters, draws = _cluster_draws(clusters, n_boot, seed)
    # A replicate's mean over its items is (sum over drawn clusters' totals) /
    # (sum of their sizes); the sizes are shared, so the difference of the two
    # means is the mean of per-item differences over the same items.
    size = np.bincount(inv, minlength=n_clusters).astype(float)
    d_sum = np.bincount(inv, weights=a - b, minlength=n_clusters)
    reps = d_sum[draws].sum(axis=1) / size[draws].sum(axis=1)
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
        # Seed-averaged per-item scores keep the mean exact and let the fast path run.
        sa = np.mean([per_item(metric, p, t) for p, t in side_a], axis=0)
        sb = np.mean([per_item(metric, p, t) for p, t in side_b], axis=0)
        return paired_from_scores(sa, sb, clusters, n_boot, seed)

    # Non-decomposable metrics (macro F1, callables) must be rescored per replicate.
    fn: Metric = METRICS[metric] if isinstance(metric, str) else metric

    def score(side, items=slice(None)):
        return float(np.mean([fn(p[items], t[items]) for p, t in side]))

    inv, n_clusters, draws = _cluster_draws(clusters, n_boot, seed)
    members = [np.flatnonzero(inv == c) for c in range(n_clusters)]
    reps = np.empty(n_boot)
    for r in range(n_boot):
        items = np.concatenate([members[c] for c in draws[r]])
        reps[r] = score(side_a, items) - score(side_b, items)
    return _result(score(side_a), score(side_b), reps)


def paired_bootstrap(
    metric: str | Metric, preds_a: list[np.ndarray], preds_b: list[np.ndarray],
    target, clusters, n_boot: int = 2000, seed: int = 0,
) -> PairedResult:
    """Compare systems A and B scored on the same test items.

    preds_a / preds_b hold one prediction array per seed; each system's score is
    its seed-averaged metric, and diff = score(A) - score(B). Each bootstrap
    replicate draws clusters (images) with replacement and rescores both systems
    on the same drawn items (the pairing); ci95 is the 2.5/97.5 percentile of the
    replicate differences d*.

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
    as Hewitt & Liang fix one control task), so the CI is the paired cluster
    bootstrap of the difference.
    """
    res = _compare(metric, [(p, np.asarray(task_target)) for p in task_preds],
                   [(p, np.asarray(control_target)) for p in control_preds], clusters, n_boot, seed)
    return SelectivityResult(res.a, res.b, res.diff, res.ci95)


def recovered_from_scores(scores, floor, ceiling, clusters, n_boot: int = 2000,
                          seed: int = 0) -> tuple[float, tuple[float, float]] | None:
    """(score - floor) / (ceiling - floor) of the means, with a percentile CI from the same cluster draws applied
    to all three (paired: the items are the same); None when the ceiling is not above the floor.

    Replicates whose ceiling does not exceed their floor have no ratio and are left out of the CI."""
    arrays = [np.asarray(x, dtype=float) for x in (scores, floor, ceiling)]
    clusters = np.asarray(clusters)
    if any(a.shape != arrays[0].shape or a.ndim != 1 for a in arrays) or len(clusters) != len(arrays[0]):
        raise ValueError("need three equal-length 1-D score arrays and one cluster per item")
    c, f, o = (a.mean() for a in arrays)
    if not o - f > 0:
        return None
    inv, n_clusters, draws = _cluster_draws(clusters, n_boot, seed)
    size = np.bincount(inv, minlength=n_clusters).astype(float)[draws].sum(axis=1)
    rep = [np.bincount(inv, weights=a, minlength=n_clusters)[draws].sum(axis=1) / size for a in arrays]
    span = rep[2] - rep[1]
    ratio = np.where(span > 0, (rep[0] - rep[1]) / np.where(span > 0, span, 1.0), np.nan)
    lo, hi = np.nanquantile(ratio, [0.025, 0.975])
    return float((c - f) / (o - f)), (float(lo), float(hi))
