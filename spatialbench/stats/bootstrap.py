"""The one resampling scheme behind every CI and paired test: a hierarchical bootstrap, seeds then images.

A probe's score varies with its training seed as well as with the test items, and the items of one image
are correlated (a scene asks several questions). Each replicate therefore draws, with replacement, as
many images (clusters) as there are and, for every system scored, as many of its seeds as it has; the
replicate's score is the mean over the drawn seeds of each seed's mean over the drawn images' items. A
condition whose seeds disagree gets a wider interval than one whose seeds agree, which an item-level
bootstrap of seed-averaged scores cannot show.

Systems compared on the same items share the image draws (the pairing: item difficulty cancels) but draw
their seeds independently: seed 0 of two conditions are two unrelated trainings.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class Resampling:
    """The image draws of one bootstrap, and the seed draws of each system in the order they are asked for.

    With the same clusters, n_boot and seed, two Resamplings make the same draws, so a system's replicates
    in a paired test are exactly those behind its own CI when it is asked for first."""

    def __init__(self, clusters, n_boot: int, seed: int):
        ids, self.inv = np.unique(np.asarray(clusters), return_inverse=True)
        self.n_clusters, self.n_boot = len(ids), n_boot
        self.rng = np.random.default_rng(seed)
        self.draws = self.rng.integers(0, self.n_clusters, size=(n_boot, self.n_clusters))
        offsets = self.draws + np.arange(n_boot)[:, None] * self.n_clusters
        # counts[b, c]: how often image c is drawn in replicate b (an image drawn twice counts twice).
        self.counts = np.bincount(offsets.ravel(), minlength=n_boot * self.n_clusters).reshape(
            n_boot, self.n_clusters).astype(float)
        self.size = self.counts @ np.bincount(self.inv, minlength=self.n_clusters).astype(float)

    def seed_picks(self, n_seeds: int) -> np.ndarray:
        """[n_boot, n_seeds] indices of the seeds each replicate draws, for one system."""
        return self.rng.integers(0, n_seeds, size=(self.n_boot, n_seeds))

    def means(self, scores) -> np.ndarray:
        """Replicates of the mean of per-item scores: [N] (one seed, or seed-averaged) or [seeds, N]."""
        scores = np.atleast_2d(np.asarray(scores, dtype=float))
        if scores.shape[1] != len(self.inv):
            raise ValueError(f"scores cover {scores.shape[1]} items, clusters {len(self.inv)}")
        per_cluster = np.stack([np.bincount(self.inv, weights=s, minlength=self.n_clusters) for s in scores])
        totals = self.counts @ per_cluster.T  # [n_boot, seeds]: each seed's total over the drawn images
        picked = np.take_along_axis(totals, self.seed_picks(len(scores)), axis=1)
        return picked.mean(axis=1) / self.size

    def summed(self, item_counts: list[np.ndarray], score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Replicates of a metric computed from counts summed over items (metrics.Counted): item_counts holds
        one [N, m] array per seed; each replicate scores the drawn images' summed counts of each drawn seed.
        The same replicates as rescored gives for that metric, without a Python loop over them."""
        picks = self.seed_picks(len(item_counts))
        scores = []
        for counts in item_counts:
            per_cluster = np.zeros((self.n_clusters, counts.shape[1]))
            np.add.at(per_cluster, self.inv, counts)
            scores.append(score(self.counts @ per_cluster))  # [n_boot]: this seed on every replicate's images
        return np.stack(scores)[picks, np.arange(self.n_boot)[:, None]].mean(axis=1)

    def rescored(self, score: Callable[[int, np.ndarray], float], n_seeds: int) -> np.ndarray:
        """Replicates of a metric that is neither a mean of per-item scores nor a Counted one (a callable):
        score(seed, items) is recomputed on each replicate's items, for each drawn seed."""
        members = [np.flatnonzero(self.inv == c) for c in range(self.n_clusters)]
        picks = self.seed_picks(n_seeds)
        reps = np.empty(self.n_boot)
        for b in range(self.n_boot):
            items = np.concatenate([members[c] for c in self.draws[b]])
            reps[b] = np.mean([score(s, items) for s in picks[b]])
        return reps


def percentile(reps: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = (1.0 - level) / 2
    lo, hi = np.nanquantile(reps, [tail, 1.0 - tail])
    return float(lo), float(hi)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate).

    Sorted ascending, the k-th smallest (k from 0) is multiplied by (m - k), running maxima keep the order,
    and nothing exceeds 1. Returned in the input's order."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted
