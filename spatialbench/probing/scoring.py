"""From per-seed test predictions to the numbers in the results: metrics, CIs, chance, groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..data.examples import Example
from ..results import GroupScore, MetricSummary
from ..stats import metrics
from .fit import FitResult, Split


def _pixels(boxes: np.ndarray, split: Split) -> np.ndarray:
    return metrics.denormalise(boxes, split.sizes)


def summarise(names: list[str], fits: list[FitResult], test: Split, clusters: np.ndarray, box: bool,
              n_boot: int = 1000) -> dict[str, MetricSummary]:
    target = test.target.numpy()
    preds = [f.test_pred for f in fits]
    if box:
        target, preds = _pixels(target, test), [_pixels(p, test) for p in preds]
    out = {}
    for name in names:
        per_seed = [metrics.METRICS[name](p, target) for p in preds]
        mean, std = metrics.mean_std(per_seed)
        lo, hi = metrics.cluster_bootstrap_ci(name, preds, target, clusters, n_boot=n_boot)
        out[name] = MetricSummary(mean=mean, std=std, ci95=(lo, hi), per_seed=per_seed)
    return out


def chance(names: list[str], train: Split, test: Split, box: bool) -> dict[str, float]:
    sizes = test.sizes if box else None
    return {n: metrics.chance_level(n, train.target.numpy(), test.target.numpy(), sizes) for n in names}


def by_group(headline: str, fits: list[FitResult], test: Split, examples: list[Example],
             box: bool) -> dict[str, dict[str, GroupScore]]:
    """Headline metric per value of each group key (e.g. per relation), averaged over seeds."""
    target = test.target.numpy()
    preds = [f.test_pred for f in fits]
    if box:
        target, preds = _pixels(target, test), [_pixels(p, test) for p in preds]
    out: dict[str, dict[str, GroupScore]] = {}
    keys = sorted({k for ex in examples for k in ex.groups})
    for key in keys:
        values = np.array([ex.groups.get(key, "") for ex in examples])
        out[key] = {}
        for value in sorted(set(values) - {""}):
            idx = np.flatnonzero(values == value)
            score = np.mean([metrics.METRICS[headline](p[idx], target[idx]) for p in preds])
            out[key][value] = GroupScore(n=len(idx), mean=float(score))
    return out


def write_predictions(path: Path, examples: list[Example], fits: list[FitResult], headline: str, test: Split,
                      box: bool, item_scores: dict[str, np.ndarray] | None = None, condition: str = "frozen",
                      classes: list[str] | None = None, categories: list[str] | None = None) -> None:
    """One JSON line per test item: what it asked, the answer, and every seed's prediction and score under
    `condition` (the run's first regime), with the names of query categories and classes beside their ids,
    and under "scores" each condition's headline score averaged over seeds, which `spatialbench compare`
    pairs item by item with another run's."""
    target = test.target.numpy()
    per_item_name = headline if headline in metrics.PER_ITEM else ("accuracy" if not box else "mean_iou")
    scores = []
    for f in fits:
        pred, tgt = (_pixels(f.test_pred, test), _pixels(target, test)) if box else (f.test_pred, target)
        scores.append(metrics.per_item(per_item_name, pred, tgt))
    lines = []
    for i, ex in enumerate(examples):
        named = {}
        if categories and isinstance(ex.query, tuple):
            named["query_names"] = [categories[c] for c in ex.query]
        if classes and not box:
            named["target_name"] = classes[ex.target]
            named["prediction_names"] = {str(f.seed): classes[int(f.test_pred[i])] for f in fits}
        lines.append(json.dumps({
            "uid": ex.uid, "image_id": ex.image_id, "query": ex.query, "target": ex.target, "groups": ex.groups,
            **named, "condition": condition,
            "predictions": {str(f.seed): np.asarray(f.test_pred[i]).tolist() for f in fits},
            per_item_name: {str(f.seed): float(s[i]) for f, s in zip(fits, scores)},
            **({"scores": {name: float(v[i]) for name, v in item_scores.items()}} if item_scores else {}),
        }))
    atomic_write(path, lambda p: p.write_text("\n".join(lines) + "\n"))
