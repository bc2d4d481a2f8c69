"""Every way a task is probed in one run: the regimes (frozen, joint) and the baselines (blind,
random_resampler, vision_patches), each over the same items and seeds, plus control tasks for the
explicit probes and the paired comparisons between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..adapters.base import Adapter
from ..results import ConditionResult, MetricSummary, Paired, SeedRun
from ..specs import RunConfig, TaskSpec
from ..stats import control, metrics
from ..stats.paired import paired_from_scores
from . import scoring
from .fit import FitResult, ProbeInputs, fit, standardise
from .joint import JointEncoder, ResamplerSnapshot, resample_all

RANDOM_RESAMPLER_SEED = 1234


@dataclass
class Condition:
    name: str
    role: str  # "regime" or "baseline"
    inputs: ProbeInputs
    encoder: Callable[[], JointEncoder] | None = None  # joint: a fresh encoder per seed


def plan(config: RunConfig, inputs: ProbeInputs, vision: torch.Tensor | None, adapter: Adapter,
         snapshot: ResamplerSnapshot | None) -> list[Condition]:
    """The conditions this run asks for, over the task's feature rows."""
    regimes = ["frozen", "joint"] if config.regime == "both" else [config.regime]
    out = []
    if "frozen" in regimes:
        out.append(Condition("frozen", "regime", inputs))
    if "joint" in regimes:
        train_rows = inputs.splits["train"].image.unique()
        texts = [t for _, t in inputs.row_keys] if inputs.row_keys and inputs.row_keys[0][1] is not None else None
        train_texts = [texts[i] for i in train_rows.tolist()] if texts else None
        joint_inputs = inputs.with_features(vision)
        joint_inputs.shape = inputs.shape  # the probe reads prompts, not vision features
        out.append(Condition("joint", "regime", joint_inputs,
                             lambda: JointEncoder(adapter, vision[train_rows], train_texts,
                                                  checkpointing=config.gradient_checkpointing)))
    for baseline in config.baselines:
        if baseline == "blind":  # the language prior: the same constant prompt for every item
            out.append(Condition("blind", "baseline", inputs.with_features(torch.zeros_like(inputs.features))))
        elif baseline == "vision_patches":
            train = inputs.splits["train"].image
            out.append(Condition("vision_patches", "baseline", inputs.with_features(standardise(vision, train))))
        elif baseline == "random_resampler":
            snapshot.randomise(RANDOM_RESAMPLER_SEED)
            texts = [t for _, t in inputs.row_keys] if inputs.row_keys and inputs.row_keys[0][1] is not None else None
            prompts = resample_all(adapter, vision, texts)
            snapshot.restore()
            train = inputs.splits["train"].image
            out.append(Condition("random_resampler", "baseline", inputs.with_features(standardise(prompts, train))))
    return out


def control_inputs(inputs: ProbeInputs, n_classes: int, seed: int) -> ProbeInputs:
    """Control task (after Hewitt & Liang): each item's target relabelled by a mapping fixed for the
    queried category (for relations, the subject's), drawn once per seed; see control.control_targets."""
    targets = {}
    for name, split in inputs.splits.items():
        category, target = split.query.numpy()[:, 0], split.target.numpy()
        if inputs.box:
            targets[name] = torch.tensor(control.control_boxes(category, target, seed), dtype=torch.float32)
        else:
            targets[name] = torch.tensor(control.control_targets(category, target, n_classes, seed), dtype=torch.long)
    return inputs.with_targets(targets)


def item_scores(headline: str, fits: list[FitResult], inputs: ProbeInputs) -> np.ndarray:
    """Per-item headline scores averaged over seeds (the headline metrics are means of per-item scores)."""
    test = inputs.splits["test"]
    target = test.target.numpy()
    out = []
    for f in fits:
        pred, tgt = (metrics.denormalise(f.test_pred, test.sizes), metrics.denormalise(target, test.sizes)) \
            if inputs.box else (f.test_pred, target)
        out.append(metrics.per_item(headline, pred, tgt))
    return np.mean(out, axis=0)


def paired(a: str, b: str, metric: str, scores_a: np.ndarray, scores_b: np.ndarray, clusters: np.ndarray) -> Paired:
    r = paired_from_scores(scores_a, scores_b, clusters)
    return Paired(a=a, b=b, metric=metric, diff=r.diff, ci95=tuple(r.ci95), p_value=r.p_value)


def fit_one(cond: Condition, inputs: ProbeInputs, task: TaskSpec, seed: int, accelerator, resampler_lr: float,
            snapshot: ResamplerSnapshot | None, on_epoch) -> FitResult:
    """One seed of one condition (its own inputs, or a control task's); joint fits start from the checkpoint."""
    encoder = start = None
    if cond.encoder is not None:
        snapshot.restore()  # every seed and task starts from the checkpoint's resampler
        start = snapshot.digest()
        encoder = cond.encoder()
    result = fit(inputs, task.probe, seed, task.headline, accelerator, on_epoch=on_epoch, encoder=encoder,
                 encoder_lr=resampler_lr)
    if encoder is not None:
        snapshot.restore()
    result.start = start
    return result


def summarise(cond: Condition, fits: list[FitResult], starts: list[str], task: TaskSpec, examples,
              clusters: np.ndarray, control_fits: list[FitResult] | None,
              control_sets: list[ProbeInputs] | None) -> ConditionResult:
    test = cond.inputs.splits["test"]
    result = ConditionResult(
        role=cond.role,
        metrics=scoring.summarise(task.metrics, fits, test, clusters, cond.inputs.box),
        by_group=scoring.by_group(task.headline, fits, test, examples, cond.inputs.box),
        seeds=[SeedRun(seed=f.seed, best_epoch=f.best_epoch, epochs_run=f.epochs_run, validation=f.val_score,
                       seconds=f.seconds) for f in fits],
        resampler_start=starts,
    )
    if control_fits:
        per_seed = [item_scores(task.headline, [f], c) for f, c in zip(control_fits, control_sets)]
        control_items = np.mean(per_seed, axis=0)
        values = [float(np.mean(s)) for s in per_seed]
        mean, std = metrics.mean_std(values)
        lo, hi = _mean_ci(control_items, clusters)
        result.control = MetricSummary(mean=mean, std=std, ci95=(lo, hi), per_seed=values)
        result.selectivity = paired(cond.name, f"{cond.name}_control", task.headline,
                                    item_scores(task.headline, fits, cond.inputs), control_items, clusters)
    return result


def _mean_ci(scores: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Clustered bootstrap CI of a mean of per-item scores (a difference against zero)."""
    return tuple(paired_from_scores(scores, np.zeros_like(scores), clusters).ci95)
