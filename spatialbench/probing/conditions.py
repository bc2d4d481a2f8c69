"""Every way a task is probed in one run: the regimes (frozen, joint) and the baselines (blind: the floor;
oracle: the ceiling; random_resampler; vision_patches; joint_random: the joint regime from a random start),
each over the same items and seeds and selected on validation over the same grid, plus control tasks for
the explicit probes, the paired comparisons between them, and each condition's share of the floor-to-ceiling
headroom."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..adapters.base import Adapter
from ..adapters.layers import select as select_layers
from ..features import FeatureStore
from ..results import ConditionResult, GridPoint, MetricSummary, Paired, Recovered, SeedRun
from ..specs import RunConfig, TaskSpec
from ..stats import control, metrics
from ..stats.paired import paired_from_scores, recovered_from_scores
from . import scoring
from .cells import Choice
from .fit import FitResult, ProbeInputs, fit
from .heads import ProbeShape, check_budget, count_parameters
from .inputs import probe_shape
from .joint import JointEncoder, ResamplerSnapshot, resample_all
from .oracle import oracle_features, oracle_shape
from .visual import Constant, Visual, standardised

# The contrasts each task reports, where the run has both sides: (a, b) tests a - b.
COMPARISONS = (("joint", "frozen"), ("joint", "joint_random"), ("frozen", "blind"), ("vision_patches", "frozen"),
               ("oracle", "frozen"))


@dataclass
class Condition:
    name: str
    role: str  # "regime", "baseline" or "layer"
    inputs: ProbeInputs  # the items and the probe's input shape (and the features, unless drawn per seed)
    encoder: Callable[[], JointEncoder] | None = None  # trained with the probe: a fresh encoder per fit
    start: str = "checkpoint"  # where a trained resampler starts: the checkpoint, or "random" (joint_random)
    per_seed: Callable[[int], ProbeInputs] | None = None  # features drawn anew for each seed (random_resampler)

    def inputs_for(self, seed: int) -> ProbeInputs:
        return self.per_seed(seed) if self.per_seed else self.inputs


@dataclass
class _Sources:
    """What the baselines are built from, for one task."""

    inputs: ProbeInputs
    vision: Visual | None  # the vision features of every feature row, read on demand
    adapter: Adapter
    snapshot: ResamplerSnapshot | None
    objects: dict | None
    config: RunConfig
    resampler_mode: str = "train"
    scratch: Path | None = None  # where prompts drawn per seed are held on disk
    layers: dict | None = None  # layer -> its rows for every feature row (--layers), in forward order

    @property
    def texts(self) -> list[str] | None:
        """Each feature row's text, where the resampler reads one (InstructBLIP)."""
        keys = self.inputs.row_keys
        return [t for _, t in keys] if keys and keys[0][1] is not None else None

    def standardised(self, rows) -> ProbeInputs:
        return self.inputs.with_features(standardised(rows, self.inputs.splits["train"].image))


def _blind(src: _Sources) -> Condition:
    """The language prior: the same constant prompt for every item."""
    return Condition("blind", "baseline", src.inputs.with_features(Constant(src.inputs.features.shape)))


def _vision_patches(src: _Sources) -> Condition:
    """The vision encoder's patch tokens before the resampler: what there was to keep."""
    return Condition("vision_patches", "baseline", src.standardised(src.vision.rows))


def _random_prompts(src: _Sources, seed: int) -> ProbeInputs:
    """The resampler re-drawn from the model's own initialisation (once per seed) and frozen: what the
    architecture gives untrained. Seed s draws the same weights joint_random's seed s starts from."""
    src.snapshot.randomise(seed)
    try:
        prompts = FeatureStore.scratch(src.scratch, resample_all(src.adapter, src.vision, src.texts))
    finally:
        src.snapshot.restore()
    return src.standardised(prompts)


def _random_resampler(src: _Sources) -> Condition:
    return Condition("random_resampler", "baseline", src.inputs, per_seed=lambda seed: _random_prompts(src, seed))


def _oracle(src: _Sources) -> Condition:
    """A prompt built from the annotations (the ceiling); see oracle.py."""
    return Condition("oracle", "baseline", src.standardised(oracle_features(src.objects, src.inputs.row_images)))


def _joint(src: _Sources, name: str = "joint", role: str = "regime", start: str = "checkpoint") -> Condition:
    """The resampler trained with the probe, on the cached vision features; the probe reads prompts."""
    inputs, vision = src.inputs, src.vision
    train_rows = inputs.splits["train"].image.unique()
    joint_inputs = inputs.with_features(vision)
    joint_inputs.shape = inputs.shape  # the probe reads prompts, not vision features
    config = src.config
    return Condition(name, role, joint_inputs, start=start, encoder=lambda: JointEncoder(
        src.adapter, vision, train_rows, src.texts, checkpointing=config.gradient_checkpointing,
        train_mode=src.resampler_mode == "train"))


def _joint_random(src: _Sources) -> Condition:
    """The joint regime from the model's own random initialisation (drawn per seed): what training the
    architecture gives with this budget, so the joint - joint_random gap is the pretrained start's."""
    return _joint(src, "joint_random", "baseline", start="random")


BASELINES: dict[str, Callable[[_Sources], Condition]] = {
    "blind": _blind, "random_resampler": _random_resampler, "vision_patches": _vision_patches, "oracle": _oracle,
    "joint_random": _joint_random}
NEEDS_VISION = {"random_resampler", "vision_patches", "joint_random"}  # and the joint regime


def unavailable(baseline: str, objects: dict | None, regimes: list[str]) -> str | None:
    """Why a baseline cannot be built for a task, or None: the oracle needs every object's box; joint_random
    is the joint regime's control and runs only beside it."""
    if baseline == "oracle" and objects is None:
        return "the dataset gives no box for every object"
    if baseline == "joint_random" and "joint" not in regimes:
        return "it is the joint regime's control: run with --regime joint or both"
    return None


def available(baseline: str, objects: dict | None, regimes: list[str]) -> bool:
    return unavailable(baseline, objects, regimes) is None


def _layer(src: _Sources, layer: str) -> Condition:
    """One layer's output, probed as the frozen regime probes the prompt."""
    return Condition(layer, "layer", src.standardised(src.layers[layer]))


def _frozen(src: _Sources) -> Condition:
    """The pretrained resampler's prompt, fixed: only the probe learns."""
    return Condition("frozen", "regime", src.inputs)


REGIMES: dict[str, Callable[[_Sources], Condition]] = {"frozen": _frozen, "joint": _joint}


def planned(config: RunConfig, objects_known: bool, layers: list[str] = ()) -> list[tuple[str, str]]:
    """(name, role) of every condition a run of `config` fits on a task, in order; `objects_known`: the data
    gives every object's box (the oracle); `layers`: the probed layers. The run builds these conditions
    (plan below) and `spatialbench plan` counts their cells: both from this list."""
    regimes = config.regimes
    objects = {} if objects_known else None
    return ([(r, "regime") for r in REGIMES if r in regimes]
            + [(b, "baseline") for b in config.baselines if available(b, objects, regimes)]
            + [(layer, "layer") for layer in layers])


def plan(config: RunConfig, inputs: ProbeInputs, vision: Visual | None, adapter: Adapter,
         snapshot: ResamplerSnapshot | None, objects: dict | None = None,
         resampler_mode: str = "train", scratch: Path | None = None, layers: dict | None = None) -> list[Condition]:
    """The conditions this run asks for, over the task's feature rows (`vision`: their vision features;
    `layers`: each probed layer's rows)."""
    src = _Sources(inputs, vision, adapter, snapshot, objects, config, resampler_mode, scratch, layers)
    build = {**REGIMES, **BASELINES}
    return [_layer(src, name) if role == "layer" else build[name](src)
            for name, role in planned(config, objects is not None, list(layers or {}))]


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
    prompt["joint_random"] = shape
    return {**{r: shape for r in config.regimes},
            **{b: prompt[b] for b in config.baselines if available(b, objects, config.regimes)},
            **{layer: shape.with_prompt(*adapter.shape_at(layer)) for layer in probed_layers(config, adapter)}}


def probed_layers(config: RunConfig, adapter: Adapter) -> list[str]:
    """The layers --layers asks for, checked against the adapter's, in forward order."""
    return select_layers(adapter.layers, config.layers) if config.layers else []


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


def seed_scores(headline: str, fits: list[FitResult], inputs: ProbeInputs) -> np.ndarray:
    """Per-item headline scores of each seed, [seeds, N] (the headline metrics are means of per-item scores)."""
    test = inputs.splits["test"]
    target = test.target.numpy()
    out = []
    for f in fits:
        pred, tgt = (metrics.denormalise(f.test_pred, test.sizes), metrics.denormalise(target, test.sizes)) \
            if inputs.box else (f.test_pred, target)
        out.append(metrics.per_item(headline, pred, tgt))
    return np.stack(out)


def paired(a: str, b: str, metric: str, scores_a: np.ndarray, scores_b: np.ndarray, clusters: np.ndarray) -> Paired:
    r = paired_from_scores(scores_a, scores_b, clusters)
    return Paired(a=a, b=b, metric=metric, diff=r.diff, ci95=tuple(r.ci95), p_value=r.p_value)


def comparisons(scores: dict[str, np.ndarray], metric: str, clusters: np.ndarray,
                layers: list[str] = ()) -> dict[str, Paired]:
    """Every contrast of COMPARISONS whose two conditions the task has, and each layer against the one before
    it (what that layer gains or loses); p_holm is filled in over the run."""
    pairs = [(a, b) for a, b in COMPARISONS if a in scores and b in scores] + list(zip(layers[1:], layers[:-1]))
    return {f"{a}_vs_{b}": paired(a, b, metric, scores[a], scores[b], clusters) for a, b in pairs}


def fit_one(cond: Condition, inputs: ProbeInputs, task: TaskSpec, seed: int, choice: Choice, accelerator,
            snapshot: ResamplerSnapshot | None, on_epoch) -> FitResult:
    """One seed and grid point of one condition (its own inputs, or a control task's); a trained resampler
    starts from the checkpoint, or from the model's own initialisation drawn with this seed (joint_random)."""
    encoder = start = None
    if cond.encoder is not None:
        snapshot.restore()
        if cond.start == "random":
            snapshot.randomise(seed)
        start = snapshot.digest()
        encoder = cond.encoder()
    try:
        result = fit(inputs, task.probe, seed, task.headline, accelerator, on_epoch=on_epoch, encoder=encoder,
                     encoder_lr=choice.resampler_lr, lr=choice.lr)
    finally:
        if encoder is not None:
            snapshot.restore()
    result.start = start
    return result


def select(fits: list[FitResult]) -> FitResult:
    """The grid point with the best validation headline (its validation loss breaks ties; then the grid's order)."""
    return max(fits, key=lambda f: (f.val_score, -f.val_loss if np.isfinite(f.val_loss) else -np.inf))


def seed_run(chosen: FitResult, grid: list[FitResult]) -> SeedRun:
    return SeedRun(seed=chosen.seed, best_epoch=chosen.best_epoch, epochs_run=chosen.epochs_run,
                   validation=chosen.val_score, seconds=sum(f.seconds for f in grid), lr=chosen.lr,
                   resampler_lr=chosen.resampler_lr,
                   grid=[GridPoint(lr=f.lr, resampler_lr=f.resampler_lr, validation=f.val_score,
                                   best_epoch=f.best_epoch) for f in grid] if len(grid) > 1 else [])


def summarise(cond: Condition, fits: list[FitResult], grids: list[list[FitResult]], starts: list[str], task: TaskSpec,
              examples, clusters: np.ndarray, control_fits: list[FitResult] | None,
              control_sets: list[ProbeInputs] | None) -> ConditionResult:
    """A condition's result from its selected fit per seed (`grids`: every grid point of each seed)."""
    test = cond.inputs.splits["test"]
    result = ConditionResult(
        role=cond.role,
        metrics=scoring.summarise(task.metrics, fits, test, clusters, cond.inputs.box),
        by_group=scoring.by_group(task.headline, fits, test, examples, cond.inputs.box),
        seeds=[seed_run(f, g) for f, g in zip(fits, grids)],
        resampler_start=starts,
        probe_parameters=count_parameters(cond.inputs.shape, task.probe),
    )
    if control_fits:
        control_items = np.concatenate([seed_scores(task.headline, [f], c) for f, c in zip(control_fits, control_sets)])
        values = [float(np.mean(s)) for s in control_items]
        mean, std = metrics.mean_std(values)
        zero = np.zeros(control_items.shape[1])
        result.control = MetricSummary(mean=mean, std=std, ci95=tuple(paired_from_scores(control_items, zero,
                                                                                         clusters).ci95),
                                       per_seed=values)
        result.selectivity = paired(cond.name, f"{cond.name}_control", task.headline,
                                    seed_scores(task.headline, fits, cond.inputs), control_items, clusters)
    return result


def recovered(scores: dict[str, np.ndarray], clusters: np.ndarray) -> dict[str, Recovered]:
    """Each condition's (score - blind) / (oracle - blind), where the run has both and the oracle is above blind."""
    if "blind" not in scores or "oracle" not in scores:
        return {}
    out = {}
    for name, s in scores.items():
        if name in ("blind", "oracle"):  # 0 and 1 by definition
            continue
        r = recovered_from_scores(s, scores["blind"], scores["oracle"], clusters)
        if r is not None:
            out[name] = Recovered(value=r[0], ci95=r[1])
    return out
