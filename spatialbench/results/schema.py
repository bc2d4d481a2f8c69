"""The results JSON: a pydantic schema, written atomically after every task."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from .. import __version__
from ..errors import SpatialbenchError, from_validation_error
from ..atomic import atomic_write
from ..specs import ModelCard, ProbeSpec, Strict

# 2 added conditions (regimes, baselines, control, MDL) and comparisons; 3 the oracle, recovered, probe_parameters
# and task notes; 4 the validation-selected lr grid, joint_random, the comparisons' p_holm, the joint regime's
# training recipe, the data seed and the test images seen in train; 5 layer-wise probing (role "layer", layers,
# extraction points). Older files still read.
SCHEMA_VERSION = 5
BUILD_INFO = "_build_info.json"  # written into the wheel by hatch_build.py
LIMIT_NOTE = "testing only: --limit capped the examples per split; these numbers are not comparable"


class MetricSummary(Strict):
    mean: float
    std: float
    ci95: tuple[float, float] = Field(description="95% bootstrap CI over test items resampled by image")
    per_seed: list[float]


class GridPoint(Strict):
    lr: float | None
    resampler_lr: float | None = None
    validation: float = Field(description="headline on validation at this point's best epoch")
    best_epoch: int


class SeedRun(Strict):
    seed: int
    best_epoch: int
    epochs_run: int
    validation: float = Field(description="headline metric on validation at the selected epoch")
    seconds: float = Field(description="training time of this seed, every grid point included")
    lr: float | None = Field(None, description="the probe lr selected on validation")
    resampler_lr: float | None = Field(None, description="the resampler lr selected on validation (trained resampler)")
    grid: list[GridPoint] = Field(default_factory=list, description="every grid point fitted, when there were several")


class GroupScore(Strict):
    n: int
    mean: float  # headline metric on this group's test items, averaged over seeds


class Paired(Strict):
    """A paired bootstrap over the same test items, resampled by image."""

    a: str
    b: str
    metric: str
    diff: float = Field(description="a - b, seed-averaged")
    ci95: tuple[float, float]
    p_value: float
    p_holm: float | None = Field(None, description="Holm-adjusted over every comparison of every task in the run")


class Recovered(Strict):
    """The share of the floor-to-ceiling headroom a condition recovers: (score - blind) / (oracle - blind)."""

    value: float
    ci95: tuple[float, float] = Field(description="paired bootstrap over test images, the same draws for all three")


class Mdl(Strict):
    codelength_bits: float
    uniform_bits: float
    compression: float


JOINT_RECIPE = ("AdamW; weight decay (each task's probe.weight_decay) on linear weights only, not on norms, biases "
                "or query tokens; linear warmup over probe.warmup of the steps, then cosine to zero; gradient-norm "
                "clipping at probe.clip_grad_norm over probe and resampler together")


class JointTraining(Strict):
    """How the joint regime (and joint_random) trained the resampler."""

    recipe: str = JOINT_RECIPE
    resampler_lr: list[float] = Field(description="the grid, crossed with the probe's lr grid and selected on validation")
    resampler_mode: Literal["train", "eval"] = Field(description="train: the resampler's dropout is on in training")
    mixed_precision: str


class ConditionResult(Strict):
    """One way of probing a task: a regime (frozen, joint), a baseline (blind, oracle, random_resampler,
    vision_patches, joint_random) or, with --layers, one layer (vision.n, resampler.n), probed frozen."""

    role: Literal["regime", "baseline", "layer"]
    metrics: dict[str, MetricSummary]
    by_group: dict[str, dict[str, GroupScore]] = Field(default_factory=dict)
    seeds: list[SeedRun] = Field(default_factory=list)
    control: MetricSummary | None = Field(None, description="headline on the control task (explicit tasks)")
    selectivity: Paired | None = Field(None, description="task - control on the same items")
    mdl: Mdl | None = None
    resampler_start: list[str] = Field(default_factory=list, description="joint: digest of the start weights per seed")
    failed_seeds: dict[int, str] = Field(
        default_factory=dict, description="seeds whose training failed (e.g. a NaN loss), with why; left out of the metrics"
    )
    probe_parameters: int | None = Field(None, description="trainable parameters of the probe over this condition's input")
    recovered: Recovered | None = Field(
        None, description="(score - blind) / (oracle - blind) on the headline; absent without both, or when the "
        "oracle is not above blind")


class TaskResult(Strict):
    name: str
    kind: str
    version: int
    status: Literal["ok", "failed"]
    error: str | None = None
    target: str | None = None
    headline: str | None = None
    dataset_fingerprint: str | None = None
    n: dict[str, int] = Field(default_factory=dict, description="examples per split")
    n_images: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, MetricSummary] = Field(default_factory=dict)
    chance: dict[str, float] = Field(default_factory=dict, description="best constant predictor fitted on train")
    by_group: dict[str, dict[str, GroupScore]] = Field(default_factory=dict)
    probe: ProbeSpec | None = None
    seeds: list[SeedRun] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    predictions_file: str | None = None
    conditions: dict[str, ConditionResult] = Field(default_factory=dict)
    comparisons: dict[str, Paired] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list, description="what this task could not do and why (e.g. no oracle)")
    test_images_in_train: float | None = Field(
        None, description="share of test items whose image also occurs in train (by_group 'image' splits them)")


class ExtractionStats(Strict):
    images: int = 0
    prompts: int = Field(0, description="distinct visual prompts: images, or (image, text) where the resampler reads text")
    extracted: int = 0
    reused: int = 0
    recomputed: int = 0
    failed: int = Field(0, description="images that could not be read (their tasks are marked failed)")
    vision_extracted: int = Field(0, description="vision-encoder forwards for the vision-feature cache")
    by_process: list[int] = Field(default_factory=list, description="prompts extracted by each process")
    points: list[str] = Field(default_factory=list, description="what each forward filled, where one forward "
                              "filled several (a --layers run: the prompt, the vision features, every layer)")
    seconds: float = 0.0


class RunResult(Strict):
    schema_version: Literal[1, 2, 3, 4, 5] = SCHEMA_VERSION
    tool_version: str = __version__
    git_hash: str | None = None
    git_hash_source: str | None = Field(None, description="where git_hash came from: 'checkout', 'build' (baked into "
                                        "the installed wheel), or 'unknown: <why>'")
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    command: str = ""
    model: ModelCard
    checkpoint: str = Field(description="the resolved checkpoint fingerprint the features came from")
    point: str
    geometry: str = Field("processor", description="how images were fit to the model's input before its processor "
                          "(adapters/geometry.py): 'processor' alone, or 'pad_to_square' (LLaVA-1.5's own padding)")
    visual_prompt_shape: tuple[int, int]
    seeds: list[int]
    regimes: list[str] = Field(default_factory=lambda: ["frozen"])
    baselines: list[str] = Field(default_factory=list)
    resampler_lr: float | list[float] | None = Field(
        None, description="the joint regime's resampler learning rate(s), if it ran (a grid since schema 4)")
    joint_training: JointTraining | None = None
    mixed_precision: str | None = Field(None, description="the probes' (and a trained resampler's) autocast")
    stored_dtype: str | None = Field(None, description="the dtype the feature cache kept the prompts in (None: "
                                     "a run before 16-bit storage, which kept the card's dtype)")
    data_seed: int | None = Field(None, description="the synthetic scenes' seed, when --data-seed replaced the tasks'")
    limit: int | None = None
    limit_note: str | None = None
    device: str = "cpu"
    layers: list[str] = Field(default_factory=list, description="the layers probed (--layers), in forward order")
    extraction: ExtractionStats = Field(default_factory=ExtractionStats)
    tasks: dict[str, TaskResult] = Field(default_factory=dict)

    def write(self, path: Path) -> None:
        text = self.model_dump_json(indent=2)
        atomic_write(path, lambda p: p.write_text(text))


def read_results(path: Path) -> RunResult:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON, bad UTF-8, an int past Python's digit limit
        raise SpatialbenchError(f"not a readable JSON file: {e}", file=str(path)) from None
    except RecursionError:
        raise SpatialbenchError("not a readable JSON file: nested too deeply", file=str(path)) from None
    try:
        return RunResult.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, str(path), model=RunResult) from None


def git_hash(root: Path | None = None) -> str | None:
    """The commit of the code: of a source checkout, with "-dirty" when tracked files differ from it (the
    numbers may then not come from that commit's code or tasks); of an installed wheel, the one baked in when
    it was built (hatch_build.py); None when neither is known (see provenance)."""
    return provenance(root)[0]


def provenance(root: Path | None = None) -> tuple[str | None, str]:
    """(commit, where it came from: "checkout", "build", or why it is unknown)."""
    root = root or Path(__file__).resolve().parents[2]  # the checkout holding spatialbench/
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=5)
            changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"unknown: a checkout, but git did not answer ({type(e).__name__})"
        commit = head.stdout.strip()
        if not commit:
            return None, "unknown: a checkout, but git gave no commit"
        dirty = changed.returncode == 0 and changed.stdout.strip()
        return (commit + "-dirty" if dirty else commit), "checkout"
    baked = Path(__file__).resolve().parents[1] / BUILD_INFO  # spatialbench/_build_info.json
    if baked.is_file():
        info = json.loads(baked.read_text())
        return (info["commit"], "build") if info.get("commit") else (None, f"unknown: {info.get('why')}")
    return None, "unknown: neither a checkout nor a built wheel (no _build_info.json)"
