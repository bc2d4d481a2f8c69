"""Everything a user writes or reads, as pydantic models that refuse unknown keys."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

TaskKind = Literal["region_localization", "relation", "vsr", "grounding"]
SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
# The reference conditions: blind is the floor (the language prior), oracle the ceiling (a prompt built from the
# annotations), random_resampler the untrained architecture, vision_patches what there was to compress.
# joint_random (the joint regime from a random start) is the joint regime's control and runs only beside it.
BASELINES = ("blind", "oracle", "random_resampler", "vision_patches", "joint_random")
LAYER_STAGES = ("vision", "resampler")  # layer names are <stage>.<n>, n from 1, stages in forward order


def is_layer(name: str) -> bool:
    """Whether a condition or point name is a layer (`--layers`): vision.n or resampler.n."""
    return re.fullmatch(rf"({'|'.join(LAYER_STAGES)})\.[1-9][0-9]*", name) is not None


def layer_order(name: str) -> tuple[int, int]:
    """A layer's place in forward order (sort key)."""
    stage, n = name.split(".")
    return LAYER_STAGES.index(stage), int(n)


# The metrics each target type can report; the first listed in a task is its headline.
TARGET_METRICS: dict[str, tuple[str, ...]] = {
    "class": ("accuracy", "macro_f1"),
    "grid": ("accuracy", "macro_f1"),
    "box": ("acc_iou50", "mean_iou"),
}
DEFAULT_TARGET: dict[str, str] = {
    "region_localization": "box",
    "relation": "class",
    "vsr": "class",
    "grounding": "box",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _grid(value: Any) -> Any:
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# A learning rate or a grid of them, written as one number or a list; always a list once read.
StoredDtype = Literal["auto", "float32", "bfloat16", "float16"]
LrGrid = Annotated[list[Annotated[float, Field(gt=0.0)]], BeforeValidator(_grid), Field(min_length=1)]


class ProbeSpec(Strict):
    """The probe head and how it is trained (see docs/methodology.md for why these defaults)."""

    architecture: Literal["attentive", "linear", "mlp", "attention"] = Field(
        "attentive", description="attentive: read-out queries cross-attending into the prompt (the default for "
        "every task); linear: one query-chosen linear read-out; mlp: the flattened prompt (size grows with it); "
        "attention: the old name of attentive")
    width: int = Field(64, ge=1, description="hidden width")
    depth: int = Field(2, ge=1, description="read-out blocks (attentive) or hidden layers (mlp)")
    heads: int = Field(1, ge=1, description="attention heads (attentive)")
    readouts: int = Field(4, ge=1, description="learned read-out queries (attentive)")
    input_width: int = Field(16, ge=1, description="attentive, linear: each visual token is projected to this "
                             "width first; the only part of the probe whose size depends on the prompt's")
    max_parameters: int = Field(5_000_000, ge=1, description="a probe with more trainable parameters is refused "
                                "before any extraction (the flattened mlp over a large prompt)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lr: LrGrid = Field(default_factory=lambda: [3e-4, 1e-3], description="learning rate, or a grid: every seed "
                       "is fitted at each value and the best on validation is kept (test is scored once)")
    weight_decay: float = Field(0.05, ge=0.0)
    warmup: float = Field(0.05, ge=0.0, lt=1.0, description="share of the training steps with a linear lr warmup; "
                          "then cosine decay to zero at the last epoch")
    clip_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient-norm clipping; null: none")
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(10, ge=1, description="early stopping: epochs without validation gain")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ProbeSpec:
        if self.architecture in ("attentive", "attention") and self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        return self

    @model_validator(mode="after")
    def _finite(self) -> ProbeSpec:
        infinite = [name for name in ("lr", "weight_decay") if float("inf") in _grid(getattr(self, name))]
        if infinite:
            raise ValueError(f"{' and '.join(infinite)} must be finite (got .inf): training would only produce NaN")
        return self


class SyntheticDataset(Strict):
    """Seeded synthetic scenes: shapes of several colours with exact boxes and relations.

    Scenes depend only on seed, image size, object counts and split sizes, so tasks that share
    those share their images (and their extracted features).
    """

    source: Literal["synthetic"] = "synthetic"
    seed: int = 0
    image_size: int = Field(224, ge=16)
    sizes: dict[SplitName, int] = Field(
        default_factory=lambda: {"train": 600, "validation": 150, "test": 300},
        description="number of scenes per split",
    )
    min_objects: int = Field(2, ge=2)
    max_objects: int = Field(5, ge=2, le=8)
    grid: int | None = Field(None, ge=2, description="region_localization: predict the G x G cell")
    zero_shot: bool = Field(False, description="vsr: test statements use held-out shape-colour combos")
    relation_margin: float = Field(
        0.05, ge=0.0, lt=0.5, description="drop pairs whose two axis offsets differ by less (fraction of side)"
    )

    @model_validator(mode="after")
    def _objects_range(self) -> SyntheticDataset:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) exceeds max_objects ({self.max_objects})")
        missing = [s for s in SPLITS if s not in self.sizes]
        if missing:
            raise ValueError(f"sizes lacks split(s) {missing}")
        return self


class VsrDataset(Strict):
    """Visual Spatial Reasoning (Liu et al., 2023): COCO 2017 images, captions labelled true / false."""

    source: Literal["vsr"] = "vsr"
    variant: Literal["random", "zeroshot"] = "random"
    annotations: str | None = Field(
        None, description="directory with train/dev/test.jsonl; unset, or {data_dir}/... with no data dir given: "
        "the Hub dataset cambridgeltl/vsr_<variant>"
    )
    hub_id: str | None = Field(None, description="Hub dataset id; default cambridgeltl/vsr_<variant>")
    images: str = Field("{coco_root}", description="COCO 2017 root holding train2017/ and val2017/")
    download_images: bool = Field(False, description="fetch missing images from image_link into the cache")


class ReferDataset(Strict):
    """RefCOCO / RefCOCO+ / RefCOCOg in the original REFER layout: refs(<split_by>).p + instances.json."""

    source: Literal["refer"] = "refer"
    dataset: Literal["refcoco", "refcoco+", "refcocog"]
    split_by: Literal["unc", "umd", "google"]
    annotations: str = Field("{data_dir}/{dataset}", description="directory with refs(<split_by>).p, instances.json")
    images: str = Field("{coco_root}/train2014", description="COCO train2014 images")
    hub_id: str | None = Field(None, description="a Hugging Face mirror with a train split, instead of annotations")


class CocoDataset(Strict):
    """Explicit probes derived from COCO instances: unique-category objects and their pairwise relations."""

    source: Literal["coco"] = "coco"
    instances: str = Field("{coco_root}/annotations/instances_{split}.json")
    images: str = Field("{coco_root}/{split}")
    min_area: float = Field(0.02, gt=0.0, lt=1.0, description="objects below this fraction of the image are dropped")
    margin: float = Field(0.05, ge=0.0, lt=0.5, description="relation pairs closer than this to a tie are dropped")
    max_pairs_per_image: int = Field(6, ge=1)
    validation_fraction: float = Field(
        0.05, gt=0.0, lt=0.5, description="share of the train split's images held out for validation"
    )


DatasetSpec = Annotated[Union[SyntheticDataset, VsrDataset, ReferDataset, CocoDataset], Field(discriminator="source")]


class SplitSize(Strict):
    """A split's size as its dataset documents it: `spatialbench plan` uses it where the annotations are not on disk."""

    items: int | None = Field(None, ge=0, description="examples (None: not documented)")
    images: int = Field(ge=0, description="distinct images (an upper bound where the task filters them)")


class ImagePool(Strict):
    """The image collection a task draws from, for `spatialbench plan`: the store keeps an image once however
    many tasks read it, so the tasks of one pool need at most `images` of cache between them."""

    name: str = Field(description="e.g. coco2017; tasks that name the same pool share its images")
    images: int = Field(ge=1, description="the pool's size: the most images its tasks can read between them")


class TaskSpec(Strict):
    """One probe task, as declared in tasks/*.yaml."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    kind: TaskKind
    description: str = ""
    version: int = Field(1, ge=1)
    groups: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    dataset: DatasetSpec
    splits: dict[SplitName, str] = Field(
        default_factory=lambda: {s: s for s in SPLITS}, description="our split -> the source's split"
    )
    target: Literal["class", "grid", "box"] | None = None
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    metrics: list[str] = Field(default_factory=list)
    documented_size: dict[SplitName, SplitSize] | None = Field(
        None, description="per split, as the dataset's paper or release gives it (for `spatialbench plan`)")
    image_pool: ImagePool | None = Field(
        None, description="the image collection the documented sizes draw from (for `spatialbench plan`)")

    @model_validator(mode="after")
    def _resolve_target_and_metrics(self) -> TaskSpec:
        if self.target is None:
            grid = getattr(self.dataset, "grid", None)
            self.target = "grid" if (self.kind == "region_localization" and grid) else DEFAULT_TARGET[self.kind]
        allowed = TARGET_METRICS[self.target]
        if not self.metrics:
            self.metrics = list(allowed)
        bad = [m for m in self.metrics if m not in allowed]
        if bad:
            raise ValueError(f"metrics {bad} do not apply to target '{self.target}'; choose from {list(allowed)}")
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"splits lacks {missing}")
        return self

    @property
    def headline(self) -> str:
        return self.metrics[0]

    @property
    def implicit(self) -> bool:
        return self.kind in ("vsr", "grounding")


class Declared(Strict):
    """What a card states about its checkpoint so `spatialbench plan` can size a run before any download;
    the adapter checks the shapes against the checkpoint's config when it loads."""

    shapes: dict[Literal["resampler", "projected", "vision_patches"], tuple[int, int]] = Field(
        description="(tokens, width) of the tensor at each extraction point")
    extraction_parameters: int | None = Field(None, ge=0, description="parameters extraction loads (vision "
                                              "encoder, resampler, projection, token embeddings)")
    layers: dict[str, tuple[int, int]] = Field(default_factory=dict, description="(tokens, width) of each layer the "
                                               "adapter declares (`check-adapter` lists them), in forward order: "
                                               "what `plan --layers` sizes")


class ModelCard(Strict):
    """One checkpoint, as declared in models/*.yaml."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    family: str
    checkpoint: str = Field(description="Hub id, local directory, or tiny:<name> for a model built in code")
    revision: str = "main"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    stored_dtype: StoredDtype = Field(
        "auto", description="the dtype the feature cache keeps prompts in: auto is the card's dtype where that is "
        "16-bit, else bfloat16 (float16 on a GPU without bf16); float32 keeps full precision at twice the disk")
    point: Literal["resampler", "projected", "vision_patches"] = Field(
        "projected", description="extraction point: LLM input, raw resampler output, or pre-resampler patches"
    )
    description: str = ""
    resampler_lr: LrGrid = Field(
        default_factory=lambda: [1e-5, 1e-4], description="joint regime: the resampler's learning rate, or a grid "
        "crossed with the probe's (selected on validation); --resampler-lr overrides it. The default spans BLIP-2's "
        "published recipes: 1e-5 for fine-tuning (AdamW, weight decay 0.05, cosine), 1e-4 for its pretraining")
    resampler_mode: Literal["train", "eval"] = Field(
        "train", description="joint regime: the resampler's dropout on (train, as in fine-tuning) or off (eval)")
    options: dict[str, Any] = Field(default_factory=dict)
    declares: Declared | None = None


def unpinned(card: ModelCard) -> bool:
    """A Hub checkpoint at a branch or tag (`main`), not a commit: what it loads can change under the card."""
    hub = not card.checkpoint.startswith("tiny:") and not Path(card.checkpoint).expanduser().is_dir()
    return hub and re.fullmatch(r"[0-9a-f]{40}", card.revision) is None


class RunConfig(Strict):
    """One `spatialbench run`."""

    model: str
    tasks: list[str]
    seeds: int = Field(3, ge=1)
    limit: int | None = Field(None, ge=1, description="testing only: cap examples per split")
    output: Path = Path("results")
    batch_size: int = Field(32, ge=1)
    workers: int | None = Field(None, ge=0, description="processes decoding and preprocessing images during "
                                "extraction; 0: in the main process [default: one per core, at most 8]")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: Path | None = None
    include_paths: list[Path] = Field(default_factory=list)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, none on CPU")
    stored_dtype: StoredDtype | None = Field(None, description="the feature cache's dtype [default: the card's "
                                             "stored_dtype]")
    point: Literal["resampler", "projected", "vision_patches"] | None = Field(
        None, description="override the card's extraction point (vision_patches: the pre-compression baseline)"
    )
    trust_remote_code: bool = False
    regime: Literal["frozen", "joint", "both"] = "frozen"
    baselines: list[Literal[BASELINES]] = Field(default_factory=lambda: list(BASELINES))
    control: bool = Field(True, description="control tasks for the explicit probes (see docs/methodology.md)")
    resampler_lr: LrGrid | None = Field(None, description="joint regime: the resampler's learning rate(s) "
                                        "[default: the card's]")
    resampler_mode: Literal["train", "eval"] | None = Field(
        None, description="joint regime: the resampler's dropout on (train) or off (eval) [default: the card's]")
    data_seed: int | None = Field(
        None, description="synthetic tasks: draw the scenes with this seed instead of the task's (a confirmation run)")
    mdl: bool = Field(False, description="online-code MDL of each classification task and regime")
    layers: str | None = Field(None, description="probe these layers too (`all`, or names such as resampler.1,vision.2; "
                               "a bare n is resampler.n), all from the one forward per image that gives the prompt")
    gradient_checkpointing: bool = Field(
        False, description="joint regime: recompute the resampler's activations in backward (less memory, slower)"
    )
    data_dir: Path | None = Field(None, description="annotations root [default: $SPATIALBENCH_DATA]")
    coco_root: Path | None = Field(None, description="COCO images root [default: $COCO_ROOT]")
    command: str = ""

    @property
    def regimes(self) -> list[str]:
        return ["frozen", "joint"] if self.regime == "both" else [self.regime]


def with_data_seed(task: TaskSpec, seed: int | None) -> TaskSpec:
    """The task with its synthetic scenes drawn from another seed (a confirmation run); others unchanged."""
    if seed is None or task.dataset.source != "synthetic":
        return task
    return task.model_copy(update={"dataset": task.dataset.model_copy(update={"seed": seed})})
