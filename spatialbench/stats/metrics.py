"""Scores for probe predictions: class indices or boxes, plus their bootstrap CIs (seeds, then images).

Class targets are 1-D int arrays; box targets are [N, 4] arrays of (x0, y0, x1, y1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .bootstrap import Resampling, percentile

Metric = Callable[[np.ndarray, np.ndarray], float]

CLASS_METRICS = ("accuracy", "macro_f1")
BOX_METRICS = ("acc_iou50", "mean_iou")


def _paired(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if len(pred) != len(target):
        raise ValueError(f"pred has {len(pred)} items, target has {len(target)}")
    if len(target) == 0:
        raise ValueError("cannot score zero items")
    return pred, target


def accuracy(pred, target) -> float:
    pred, target = _paired(pred, target)
    return float(np.mean(pred == target))


def macro_f1(pred, target, n_classes: int | None = None) -> float:
    """Mean F1 over the classes seen in target or pred (sklearn's default labels)."""
    pred, target = _paired(pred, target)
    if n_classes is not None and (max(pred.max(), target.max()) >= n_classes or min(pred.min(), target.min()) < 0):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    # Re-index the labels that occur, so unseen classes never enter the mean.
    labels, idx = np.unique(np.concatenate([pred, target]), return_inverse=True)
    p, t = idx[: len(pred)], idx[len(pred):]
    k = len(labels)
    tp = np.bincount(t[p == t], minlength=k)
    fp = np.bincount(p, minlength=k) - tp
    fn = np.bincount(t, minlength=k) - tp
    # 2tp / (2tp + fp + fn) is F1, and is 0 exactly when precision + recall is 0;
    # every class here has a true or predicted item, so the denominator is positive.
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def box_iou(pred, target) -> np.ndarray:
    """Row-wise IoU of [N, 4] boxes; empty or inverted boxes score 0, never NaN."""
    pred, target = _paired(np.asarray(pred, dtype=float), np.asarray(target, dtype=float))
    if pred.ndim != 2 or pred.shape[1] != 4 or target.shape != pred.shape:
        raise ValueError(f"boxes must be [N, 4], got {pred.shape} and {target.shape}")

    def area(b):
        return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)

    lo = np.maximum(pred[:, :2], target[:, :2])
    hi = np.minimum(pred[:, 2:], target[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = area(pred) + area(target) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def denormalise(boxes, sizes) -> np.ndarray:
    """[0, 1] boxes times per-item (width, height) -> pixel boxes."""
    boxes, sizes = _paired(np.asarray(boxes, dtype=float), np.asarray(sizes, dtype=float))
    return boxes * np.tile(sizes, 2)


def _acc_iou50_items(pred, target) -> np.ndarray:
    # Inclusive: an IoU of exactly 0.5 counts as a hit (the usual detection convention).
    return (box_iou(pred, target) >= 0.5).astype(float)


# Metrics that are a plain mean of per-item scores; these get the fast bootstrap.
PER_ITEM: dict[str, Metric] = {
    "accuracy": lambda pred, target: (np.asarray(pred) == np.asarray(target)).astype(float),
    "acc_iou50": _acc_iou50_items,
    "mean_iou": box_iou,
}

METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "acc_iou50": lambda pred, target: float(np.mean(_acc_iou50_items(pred, target))),
    "mean_iou": lambda pred, target: float(np.mean(box_iou(pred, target))),
}


def _f1_counts(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Per item, one-hot over the labels any pair uses: [true positive | predicted | true], [N, 3K] each."""
    labels = np.unique(np.concatenate([np.concatenate([p, t]) for p, t in pairs]))
    eye = np.eye(len(labels))
    out = []
    for pred, target in pairs:
        p, t = eye[np.searchsorted(labels, pred)], eye[np.searchsorted(labels, target)]
        out.append(np.concatenate([t * (pred == target)[:, None], p, t], axis=1))
    return out


def _f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """macro_f1 from summed counts [..., 3K]: a class neither true nor predicted among the items is left out,
    as macro_f1 leaves out a label that does not occur (2tp + fp + fn is predicted + true)."""
    k = counts.shape[-1] // 3
    tp, predicted, true = counts[..., :k], counts[..., k:2 * k], counts[..., 2 * k:]
    seen = predicted + true > 0
    f1 = np.divide(2 * tp, predicted + true, out=np.zeros_like(tp), where=seen)
    return f1.sum(axis=-1) / seen.sum(axis=-1)


@dataclass(frozen=True)
class Counted:
    """A metric that is a function of per-item counts summed over the items (macro F1 of a confusion's
    margins): a bootstrap replicate sums the drawn images' counts instead of rescoring its items one by one."""

    counts: Callable[[list[tuple[np.ndarray, np.ndarray]]], list[np.ndarray]]  # (pred, target) per seed -> [N, m]
    score: Callable[[np.ndarray], np.ndarray]  # [..., m] summed counts -> [...] metric


COUNTED: dict[str, Counted] = {"macro_f1": Counted(_f1_counts, _f1_from_counts)}


def per_item(name: str, pred, target) -> np.ndarray:
    """Per-item scores whose mean is METRICS[name]; only for decomposable metrics."""
    if name not in PER_ITEM:
        raise KeyError(f"{name!r} has no per-item form; decomposable metrics: {sorted(PER_ITEM)}")
    pred, target = _paired(pred, target)
    return PER_ITEM[name](pred, target)


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("mean_std of no values")
    # ddof=1 is undefined for a single value; report no spread rather than NaN.
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), std


def cluster_bootstrap_ci(
    metric: str | Metric,
    preds_per_seed: list[np.ndarray],
    target: np.ndarray,
    clusters: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of the seed-averaged metric by the hierarchical bootstrap of stats.bootstrap: each
    replicate draws the seeds and the clusters (images) with replacement.

    Items from one image are correlated, so resampling items alone would understate the uncertainty; seeds
    that disagree widen the interval.
    """
    target = np.asarray(target)
    clusters = np.asarray(clusters)
    if not preds_per_seed:
        raise ValueError("need predictions from at least one seed")
    if len(clusters) != len(target):
        raise ValueError(f"clusters has {len(clusters)} items, target has {len(target)}")
    preds = [_paired(p, target)[0] for p in preds_per_seed]
    resampling = Resampling(clusters, n_boot, seed)
    if isinstance(metric, str) and metric in PER_ITEM:
        reps = resampling.means([PER_ITEM[metric](p, target) for p in preds])
    elif isinstance(metric, str) and metric in COUNTED:
        counted = COUNTED[metric]
        reps = resampling.summed(counted.counts([(p, target) for p in preds]), counted.score)
    else:
        fn = METRICS[metric] if isinstance(metric, str) else metric
        reps = resampling.rescored(lambda s, items: fn(preds[s][items], target[items]), len(preds))
    return percentile(reps, level)


def chance_level(name: str, train_target, test_target, test_sizes=None) -> float:
    """Test score of the best constant predictor fitted on train.

    Class metrics: the training majority class (ties -> smallest label).
    Box metrics: the mean training box, on normalised boxes; with test_sizes
    (N, 2) of (width, height) both sides are scored in pixels. (Scaling each
    axis leaves an axis-aligned IoU unchanged, so the two agree up to rounding.)
    """
    train_target, test_target = np.asarray(train_target), np.asarray(test_target)
    if name in CLASS_METRICS:
        labels, counts = np.unique(train_target, return_counts=True)
        pred = np.full(len(test_target), labels[np.argmax(counts)])
    elif name in BOX_METRICS:
        pred = np.tile(train_target.astype(float).mean(axis=0), (len(test_target), 1))
        if test_sizes is not None:
            pred, test_target = denormalise(pred, test_sizes), denormalise(test_target, test_sizes)
    else:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(METRICS)}")
    return METRICS[name](pred, test_target)
