"""Every way a task is probed in one run: the regimes (frozen, joint) and the baselines (blind: the floor;
oracle: the ceiling; random_resampler; vision_patches), each over the same items and seeds, plus control
tasks for the explicit probes, the paired comparisons between them, and each condition's share of the
floor-to-ceiling headroom."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..adapters.base import Adapter
from ..results import ConditionResult, MetricSummary, Paired, Recovered, SeedRun
from ..specs import RunConfig, TaskSpec
from ..stats import control, metrics
from ..stats.paired import paired_from_scores, recovered_from_scores
from . import scoring
from .fit import FitResult, ProbeInputs, fit, standardise
from .heads import ProbeShape, check_budget, count_parameters
from .inputs import probe_shape
from .joint import JointEncoder, ResamplerSnapshot, resample_all
from .oracle import oracle_features, oracle_shape

RANDOM_RESAMPLER_SEED = 1234


@dataclass
class Condition:
    name: str
    role: str  # "regime" or "baseline"
    inputs: ProbeInputs
    encoder: Callable[[], JointEncoder] | None = None  # joint: a fresh encoder per seed


@dataclass
class _Sources:
    """What the baselines are built from, for one task."""

    inputs: ProbeInputs
    vision: torch.Tensor | None
    adapter: Adapter
    snapshot: ResamplerSnapshot | None
    objects: dict | None

    @property
    def texts(self) -> list[str] | None:
        """Each feature row's text, where the resampler reads one (InstructBLIP)."""
        keys = self.inputs.row_keys
        return [t for _, t in keys] if keys and keys[0][1] is not None else None

    def standardised(self, features: torch.Tensor) -> ProbeInputs:
        return self.inputs.with_features(standardise(features, self.inputs.splits["train"].image))


def _blind(src: _Sources) -> ProbeInputs:
    """The language prior: the same constant prompt for every item."""
    return src.inputs.with_features(torch.zeros_like(src.inputs.features))


def _vision_patches(src: _Sources) -> ProbeInputs:
    """The vision encoder's patch tokens before the resampler: what there was to keep."""
    return src.standardised(src.vision)


def _random_resampler(src: _Sources) -> ProbeInputs:
    """The resampler re-drawn at random and frozen: what the architecture gives untrained."""
    src.snapshot.randomise(RANDOM_RESAMPLER_SEED)
    prompts = resample_all(src.adapter, src.vision, src.texts)
    src.snapshot.restore()
    return src.standardised(prompts)


def _oracle(src: _Sources) -> ProbeInputs:
    """A prompt built from the annotations (the ceiling); see oracle.py."""
    return src.standardised(oracle_features(src.objects, src.inputs.row_images))


BASELINES: dict[str, Callable[[_Sources], ProbeInputs]] = {
    "blind": _blind, "random_resampler": _random_resampler, "vision_patches": _vision_patches, "oracle": _oracle}
NEEDS_VISION = {"random_resampler", "vision_patches"}  # and the joint regime: the vision-feature cache


def unavailable(baseline: str, objects: dict | None) -> str | None:
    """Why a baseline cannot be built for a task, or None: the oracle needs every object's box."""
    return "the dataset gives no box for every object" if baseline == "oracle" and objects is None else None


def available(baseline: str, objects: dict | None) -> bool:
    return unavailable(baseline, objects) is None


def plan(config: RunConfig, inputs: ProbeInputs, vision: torch.Tensor | None, adapter: Adapter,
         snapshot: ResamplerSnapshot | None, objects: dict | None = None) -> list[Condition]:
    """The conditions this run asks for, over the task's feature rows."""
    regimes = ["frozen", "joint"] if config.regime == "both" else [config.regime]
    out = []
    if "frozen" in regimes:
        out.append(Condition("frozen", "regime", inputs))
    if "joint" in regimes:
        train_rows = inputs.splits["train"].image.unique()
        texts = _Sources(inputs, vision, adapter, snapshot, objects).texts
        train_texts = [texts[i] for i in train_rows.tolist()] if texts else None
        joint_inputs = inputs.with_features(vision)
        joint_inputs.shape = inputs.shape  # the probe reads prompts, not vision features
        out.append(Condition("joint", "regime", joint_inputs,
                             lambda: JointEncoder(adapter, vision[train_rows], train_texts,
                                                  checkpointing=config.gradient_checkpointing)))
    src = _Sources(inputs, vision, adapter, snapshot, objects)
    out += [Condition(name, "baseline", BASELINES[name](src)) for name in config.baselines if available(name, objects)]
    return out


def check_budgets(config: RunConfig, task: TaskSpec, data, adapter: Adapter) -> None:
    """Refuse, before any extraction, a probe above its parameter budget on any condition the run will fit."""
    shapes = planned_shapes(config, probe_shape(task, data, adapter), adapter, data.objects, set(data.image_ids()))
    for name, shape in shapes.items():
        check_budget(shape, task.probe, f"the {name} input")


def planned_shapes(config: RunConfig, shape: ProbeShape, adapter: Adapter, objects: dict | None,
                   images: set[str]) -> dict[str, ProbeShape]:
    """The probe shape of every condition the run will fit, before anything is extracted (for the budget)."""
    prompt = {"blind": shape, "random_resampler": shape, "vision_patches": shape.with_prompt(
        *adapter.shape_at("vision_patches")) if "vision_patches" in adapter.points else shape}
    if objects is not None:
        prompt["oracle"] = shape.with_prompt(*oracle_shape(objects, images))
    regimes = ["frozen", "joint"] if config.regime == "both" else [config.regime]
    return {**{r: shape for r in regimes}, **{b: prompt[b] for b in config.baselines if available(b, objects)}}


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
        probe_parameters=count_parameters(cond.inputs.shape, task.probe),
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


def recovered(items: dict[str, np.ndarray], clusters: np.ndarray) -> dict[str, Recovered]:
    """Each condition's (score - blind) / (oracle - blind), where the run has both and the oracle is above blind."""
    if "blind" not in items or "oracle" not in items:
        return {}
    out = {}
    for name, scores in items.items():
        if name in ("blind", "oracle"):  # 0 and 1 by definition
            continue
        r = recovered_from_scores(scores, items["blind"], items["oracle"], clusters)
        if r is not None:
            out[name] = Recovered(value=r[0], ci95=r[1])
    return out


def _mean_ci(scores: np.ndarray, clusters: np.ndarray) -> tuple[float, float]:
    """Clustered bootstrap CI of a mean of per-item scores (a difference against zero)."""
    return tuple(paired_from_scores(scores, np.zeros_like(scores), clusters).ci95)
