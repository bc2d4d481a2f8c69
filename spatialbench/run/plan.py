"""`spatialbench plan`: what a run will cost, from configs and annotations alone, before any work.

Shapes come from the card's `declares` (or, failing that, a config already on disk); dataset sizes from
the annotations where they are on disk, else from the sizes each task documents. Per task: images,
prompts, the cache bytes the run adds (in the stored dtype), the probe fits, and the peak RAM, estimated as

    this process's own resident memory once every task's data is loaded and the card's transformers
    model code is imported (interpreter, torch, the libraries, the examples: a run holds all of them)
  + the weights extraction loads (declared parameters x the card's dtype)
  + the larger of extraction's working set (batches in flight) and training's (one probe batch: its rows
    read, mapped and standardised, and an implicit task's query embeddings; plus what a stack of fits
    keeps resident: the task's query-embedding table and, on a CPU, its features, each up to
    probing/visual.py's RESIDENT_BYTES).

Past that cap features stream from the cache, so no term grows without bound with the number of images
but the per-item indices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..adapters.base import DTYPES
from ..adapters.families import get_family
from ..adapters.layers import reads_image_only
from ..adapters.layers import select as select_layers
from ..data.examples import TaskData
from ..data.sources import DataContext, load_task_data
from ..errors import SpatialbenchError
from ..features.store import MAX_PENDING, disk_bytes
from ..probing import conditions
from ..probing.cells import task_cells
from ..probing.visual import RESIDENT_BYTES
from ..registry import TaskRegistry
from ..specs import ModelCard, RunConfig, TaskSpec, with_data_seed
from .devices import resolve_stored_dtype

QUERY_TOKENS = 32  # an implicit query's padded token count


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Geometry:
    """A card's tensors, before anything is loaded."""

    shapes: dict[str, tuple[int, int]]
    parameters: int | None
    element: int  # bytes per value in the card's dtype: the weights'
    source: str  # "card" or the config's path
    stored: int = 4  # bytes per value the feature cache keeps

    def row_bytes(self, point: str) -> int:
        """A cached row's bytes at `point`."""
        q, d = self.shapes[point]
        return q * d * self.stored

    def values(self, point: str) -> int:
        q, d = self.shapes[point]
        return q * d


def geometry(card: ModelCard, point: str, stored_dtype: str | None = None) -> Geometry:
    """`stored_dtype`: the cache's, as resolved for the run (default: the card's dtype)."""
    element = torch.empty((), dtype=DTYPES[card.dtype]).element_size()
    stored = torch.empty((), dtype=DTYPES[stored_dtype or card.dtype]).element_size()
    if card.declares is not None:
        shapes = {p: tuple(s) for p, s in card.declares.shapes.items()}
        missing = [p for p in (point, "vision_patches") if p not in shapes and p in get_family(card.family).points]
        if missing:
            raise SpatialbenchError(f"card '{card.name}' declares no shape for {missing}", field="declares.shapes",
                                    fix="add (tokens, width) for every extraction point of its family")
        return Geometry(shapes, card.declares.extraction_parameters, element, "card", stored)
    raise SpatialbenchError(f"card '{card.name}' declares no shapes, so the run cannot be sized before its checkpoint "
                            "is loaded", field="declares",
                            fix="add `declares: {shapes: {projected: [Q, D], ...}, extraction_parameters: N}` to the card")


@dataclass
class TaskPlan:
    name: str
    sizes: str  # where the sizes came from: "annotations", "synthetic" or "documented"
    items: dict[str, int | None] = field(default_factory=dict)
    images: int = 0
    prompts: int = 0
    cache_bytes: int = 0
    fits: int = 0
    peak_bytes: int = 0
    error: str | None = None
    shared: dict = field(default_factory=dict, repr=False)  # loaded data: its image and prompt keys, for the totals


@dataclass
class Plan:
    model: str
    tasks: list[TaskPlan]
    base_bytes: int
    weight_bytes: int | None
    total: dict[str, int] = field(default_factory=dict)  # images and prompts counted once across tasks
    stored_dtype: str = "float32"  # what the cache keeps

    @property
    def ok(self) -> list[TaskPlan]:
        return [t for t in self.tasks if t.error is None]

    def totals(self) -> dict[str, int]:
        return self.total

    def to_json(self) -> dict:
        tasks = [{k: v for k, v in vars(t).items() if k != "shared"} for t in self.tasks]
        return {"model": self.model, "tasks": tasks, "base_bytes": self.base_bytes, "weight_bytes": self.weight_bytes,
                "totals": self.total, "stored_dtype": self.stored_dtype}

    def summary(self) -> str:
        t = self.totals()
        weights = "" if self.weight_bytes is not None else " (weights not declared: RAM is a lower bound)"
        return (f"plan: {len(self.ok)} task(s), {t['images']:,} images, {t['prompts']:,} prompts, "
                f"{gb(t['cache_bytes'])} of cache at most, {t['fits']:,} probe fits, peak RAM ~{gb(t['peak_bytes'])}"
                f"{weights}")


def gb(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _sizes(task: TaskSpec, config: RunConfig, ctx: DataContext, reads_text: bool, data: TaskData | None = None):
    """(source of the sizes, items per split, images, prompts, whether every object's box is known):
    counted from the data where it loads."""
    try:
        data = data or load_task_data(task, config.limit, ctx)
    except SpatialbenchError:
        if task.documented_size is None:
            raise
        docs = task.documented_size
        items = {s: docs[s].items if s in docs else None for s in ("train", "validation", "test")}
        images = sum(d.images for d in docs.values())
        texts = sum(d.items or d.images for d in docs.values())
        return "documented", items, images, texts if reads_text else images, False, {}
    items = {s: len(v) for s, v in data.splits.items()}
    images = len(data.image_ids())
    prompts = len({(ex.image_id, ex.query) for v in data.splits.values() for ex in v}) if reads_text else images
    source = "synthetic" if task.dataset.source == "synthetic" else "annotations"
    keys = {"images": {data.images.content_key(i) for i in data.image_ids()},
            "prompts": {(data.images.content_key(ex.image_id), ex.query if reads_text else None)
                        for v in data.splits.values() for ex in v}}
    return source, items, images, prompts, data.objects is not None, keys


def run_tasks(config: RunConfig) -> tuple[list[TaskSpec], list[SpatialbenchError]]:
    """The tasks a run of `config` runs, drawn as it draws them (--data-seed), and the task files left out."""
    registry = TaskRegistry(config.include_paths)
    return [with_data_seed(t, config.data_seed) for t in registry.resolve(config.tasks)], registry.errors


def _fits(task: TaskSpec, config: RunConfig, card: ModelCard, objects_known: bool, layers: list[str]) -> int:
    """The probe fits a run of `config` makes of `task`: its cells, as the run lists them."""
    return len(task_cells(task, conditions.planned(config, objects_known, layers), list(range(config.seeds)),
                          config.resampler_lr or card.resampler_lr, config.control, config.mdl))


def declared_layers(config: RunConfig, card: ModelCard) -> dict[str, tuple[int, int]]:
    """The (tokens, width) of each layer --layers asks for, from the card's declares (before any load)."""
    if not config.layers:
        return {}
    declared = card.declares.layers if card.declares is not None else {}
    if not declared:
        raise SpatialbenchError(f"card '{card.name}' declares no layers, so a --layers run cannot be sized before its "
                                "checkpoint is loaded", field="declares.layers",
                                fix="add `layers: {name: [Q, D], ...}` under the card's declares (`check-adapter` "
                                    "lists the adapter's layers), or plan without --layers")
    return {name: tuple(declared[name]) for name in select_layers(list(declared), config.layers)}


def _import_runtime(name: str) -> None:
    """Import the transformers class a run of this card imports (its modelling code is ~100 MB resident)."""
    import transformers

    if name:
        try:
            getattr(transformers, name)
        except (AttributeError, ImportError):  # a class of the card's own package: its import is the run's business
            pass


def estimate(config: RunConfig, tasks: list[TaskSpec], card: ModelCard, loaded: dict[str, TaskData] | None = None,
             layers: dict[str, tuple[int, int]] | None = None) -> Plan:
    """The plan of this run; `loaded`: task data already in memory (a run's), not loaded again; `layers`: the
    probed layers' (tokens, width) as the loaded adapter gives them (a run's --layers), else as the card
    declares them."""
    layers = declared_layers(config, card) if layers is None else layers
    family = get_family(card.family)
    point = config.point or card.point
    stored_dtype = resolve_stored_dtype(config.stored_dtype or card.stored_dtype, card.dtype, config.device)
    geo = geometry(card, point, stored_dtype)
    stored = family.cached_as.get(point, (point, ""))[0]
    stored = stored if stored in family.points else point  # as Adapter.stored_point
    reads_text = family.reads_text and card.options.get("text_conditioning", True) and point != "vision_patches"
    uses_vision = "joint" in config.regimes or bool(conditions.NEEDS_VISION & set(config.baselines))
    weights = geo.parameters * geo.element if geo.parameters is not None else None
    ctx = DataContext.from_flags(config.data_dir, config.coco_root)
    prompt_row = geo.values(point) * 4  # what the probe reads, float32
    vision_row = geo.row_bytes("vision_patches") if "vision_patches" in geo.shapes else 0
    def cache_bytes(prompts: int, images: int) -> int:
        """What one extraction of these adds: prompts in one store, vision features in the other (LLaVA: one),
        and a store per layer (keyed by image before the resampler, as the prompt after it)."""
        out = disk_bytes(prompts, geo.row_bytes(stored)) if not (uses_vision and stored == "vision_patches") else 0
        for layer, (q, d) in layers.items():
            out += disk_bytes(images if reads_image_only(layer) else prompts, q * d * geo.stored)
        return out + (disk_bytes(images, vision_row) if uses_vision else 0)

    plans, objects = [], {}
    for task in tasks:
        plan = TaskPlan(task.name, "")
        plans.append(plan)
        try:
            plan.sizes, plan.items, plan.images, plan.prompts, objects[task.name], plan.shared = _sizes(
                task, config, ctx, reads_text and task.implicit, (loaded or {}).get(task.name))
        except SpatialbenchError as e:
            plan.error = str(e).splitlines()[0]
    _import_runtime(family.runtime_class(card))
    # --device cuda is planned for on a login node without one too
    on_gpu = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    base = rss_bytes()  # with every task's examples loaded and the model's code imported, as in a run
    for task, plan in zip(tasks, plans):
        if plan.error:
            continue
        plan.cache_bytes = cache_bytes(plan.prompts, plan.images)
        plan.fits = _fits(task, config, card, objects[task.name], list(layers))
        batch = task.probe.batch_size
        layer_rows = sum(q * d * geo.stored for q, d in layers.values())  # a pending write per store
        extraction = (MAX_PENDING + 2) * config.batch_size * (geo.row_bytes(stored) + vision_row + layer_rows)
        training = 4 * batch * (prompt_row + (geo.values("vision_patches") * 4 if uses_vision and vision_row else 0))
        text_row = QUERY_TOKENS * geo.shapes.get("projected", geo.shapes[point])[1] * 4  # the LLM's width
        if task.implicit:  # one batch of frozen query embeddings, and the task's table of them where it fits
            training += 4 * batch * text_row + min(RESIDENT_BYTES, sum(n or 0 for n in plan.items.values()) * text_row)
        if not on_gpu:  # a stack of fits holds its features on the host: the largest condition's, up to the cap
            vision = plan.images * geo.values("vision_patches") * 4 if "vision_patches" in config.baselines else 0
            training += min(RESIDENT_BYTES, max(plan.prompts * prompt_row, vision))
        plan.peak_bytes = base + (weights or 0) + max(extraction, training)
    ok = [(t, p) for t, p in zip(tasks, plans) if p.error is None]
    counted = {kind: len(set().union(*(p.shared[kind] for _, p in ok if p.shared))) + _documented(ok, kind)
               for kind in ("images", "prompts")}
    ok = [p for _, p in ok]
    total = {**counted, "cache_bytes": cache_bytes(counted["prompts"], counted["images"]),
             "fits": sum(p.fits for p in ok), "peak_bytes": max((p.peak_bytes for p in ok), default=base)}
    return Plan(card.name, plans, base, weights, total, stored_dtype)


def _documented(planned: list[tuple[TaskSpec, TaskPlan]], kind: str) -> int:
    """Images or prompts of the tasks sized from their documentation, counted as the store keeps them: the tasks
    of one image pool share at most the pool's images (a prompt that is the image alone counts as one), and
    the rest are summed."""
    pools: dict[str, tuple[int, int]] = {}  # name -> (the pool's size, its tasks' sum)
    total = 0
    for task, plan in planned:
        if plan.shared:
            continue
        pool = task.image_pool
        if pool is None or (kind == "prompts" and plan.prompts != plan.images):
            total += getattr(plan, kind)
            continue
        size, summed = pools.get(pool.name, (pool.images, 0))
        if size != pool.images:
            raise SpatialbenchError(f"task '{task.name}' gives image pool '{pool.name}' {pool.images:,} images, "
                                    f"another task {size:,}", field="image_pool.images",
                                    fix="give the pool one size in every task that names it")
        pools[pool.name] = (size, summed + getattr(plan, kind))
    return total + sum(min(size, summed) for size, summed in pools.values())


def table(plan: Plan, width: int = 80) -> str:
    """The plan as a plain-text table that fits `width` columns."""
    head = f"{'task':<22} {'sizes':<11} {'images':>8} {'prompts':>8} {'cache':>10} {'fits':>5} {'peak RAM':>10}"
    lines = [f"plan for {plan.model}: base {gb(plan.base_bytes)} (this process), weights "
             + (gb(plan.weight_bytes) if plan.weight_bytes is not None else "not declared"), head, "-" * len(head)]
    for t in plan.tasks:
        if t.error:
            lines.append(f"{t.name[:22]:<22} cannot be sized: {t.error}"[:width])
            continue
        lines.append(f"{t.name[:22]:<22} {t.sizes:<11} {t.images:>8,} {t.prompts:>8,} {gb(t.cache_bytes):>10} "
                     f"{t.fits:>5} {gb(t.peak_bytes):>10}")
    total = plan.totals()
    lines += ["-" * len(head), f"{'total':<22} {'':<11} {total['images']:>8,} {total['prompts']:>8,} "
              f"{gb(total['cache_bytes']):>10} {total['fits']:>5} {gb(total['peak_bytes']):>10}",
              f"cache: what the run adds to an empty cache, in {plan.stored_dtype}; the total counts",
              "an image shared by tasks once (documented sizes: at most their image pool's",
              "size). Peak RAM: the run's (task by task)."]
    return "\n".join(lines)
