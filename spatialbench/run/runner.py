"""One `spatialbench run`: tasks x model -> features (once) -> probes per seed -> results JSON."""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console

from .. import __version__
from ..adapters.base import DTYPES, Adapter, check_declared
from ..adapters.families import get_family
from ..adapters.loading import WEIGHTS, default_cache_dir, weights_kind
from ..data.examples import TaskData
from ..data.sources import DataContext, load_task_data
from ..errors import SpatialbenchError
from ..features import FeatureStore, Request, default_workers, digest
from ..probing import conditions, scoring
from ..probing import queue
from ..probing.cells import Cell, CellStore
from ..probing.claims import Claims
from ..probing.inputs import build_inputs, feature_requests
from ..probing.joint import ResamplerSnapshot
from ..probing.task import Group, ProbingContext, TaskProbing
from ..probing.visual import Visual
from ..registry import resolve_card
from ..results import LIMIT_NOTE, ExtractionStats, JointTraining, RunResult, TaskResult, merge, provenance
from ..specs import RunConfig, TaskSpec
from ..stats.bootstrap import holm
from .devices import resolve_device, resolve_precision, resolve_stored_dtype
from .plan import estimate, gb, run_tasks
from .report import Reporter


def data_seed_note(task: TaskSpec, seed: int | None) -> list[str]:
    if seed is None or task.dataset.source == "synthetic":
        return []
    return [f"--data-seed {seed}: not applied (a {task.dataset.source} task has fixed splits)"]


def adjust_holm(result: RunResult) -> None:
    """Holm-adjust every comparison of every finished task together: one family per run."""
    family = [c for t in result.tasks.values() for c in t.comparisons.values()]
    for c, p in zip(family, holm([c.p_value for c in family])):
        c.p_holm = p


def writable_output(output: Path, out_dir: Path) -> None:
    """Fail before any work when results could not be written (a file given as --output, no permission)."""
    fix = "give --output a directory (created if missing): results go to OUTPUT/<model>/results.json"
    if output.exists() and not output.is_dir():
        raise SpatialbenchError(f"--output {output} is a file, not a directory", field="--output", fix=fix)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpatialbenchError(f"cannot create {out_dir}: {e.strerror}", field="--output", fix=fix) from None


@dataclass
class Prepared:
    """A task ready for its fits: its probing, its data, and the seconds spent on it so far."""

    probing: TaskProbing
    data: TaskData
    load_seconds: float
    seconds: float  # building its inputs, then its fits in this process, then its summary


class Runner:
    def __init__(self, config: RunConfig, reporter: Reporter | None = None):
        self.config, self.reporter = config, reporter or Reporter()
        self.tasks, left_out = run_tasks(config)
        for error in left_out:  # left out, not fatal: the run's own tasks loaded
            self.reporter.info(f"[yellow]left out:[/yellow] {error}")
        self.card = resolve_card(config.model)
        device = resolve_device(config.device)
        self.mixed_precision = resolve_precision(config.mixed_precision, device)
        self.stored_dtype = resolve_stored_dtype(config.stored_dtype or self.card.stored_dtype, self.card.dtype, device)
        self.accelerator = Accelerator(cpu=device == "cpu", mixed_precision=self.mixed_precision)
        if not self.accelerator.is_main_process:  # under `accelerate launch`, one process speaks
            self.reporter = Reporter(Console(quiet=True))
        self.cache_dir = Path(config.cache_dir or default_cache_dir())
        self.seeds = list(range(config.seeds))
        self.out_dir = Path(config.output) / self.card.name
        self.results_path = self.out_dir / "results.json"
        writable_output(Path(config.output), self.out_dir)
        self.data = DataContext.from_flags(config.data_dir, config.coco_root)
        self.resampler_lr = config.resampler_lr or self.card.resampler_lr  # a grid
        self.resampler_mode = config.resampler_mode or self.card.resampler_mode
        self.cells = CellStore(self.out_dir / "cells")

    def _save(self, result: RunResult) -> None:
        if self.accelerator.is_main_process:  # under `accelerate launch`, one writer
            result.write(self.results_path)

    def run(self) -> RunResult:
        config = self.config
        # The main process first: it builds a tiny checkpoint (save_pretrained writes weights on rank 0 only).
        with self.accelerator.main_process_first():
            adapter = get_family(self.card.family).load(
                self.card, device=str(self.accelerator.device), cache_dir=self.cache_dir, point=config.point,
                trust_remote_code=config.trust_remote_code)
        check_declared(adapter)
        self.reporter.info(f"model {self.card.name}: {WEIGHTS[weights_kind(self.card.checkpoint, self.card.revision)]}")
        workers = default_workers() if config.workers is None else config.workers
        uses_vision = "joint" in config.regimes or bool(conditions.NEEDS_VISION & set(config.baselines))
        stores = partial(FeatureStore, adapter, self.cache_dir, config.batch_size, workers=workers,
                         dtype=DTYPES[self.stored_dtype])
        vision = stores(point="vision_patches") if uses_vision else None
        # The cheapest tensor on the prompt's path (see Adapter.cached_as); LLaVA's is the vision features.
        store = (vision if vision is not None and adapter.stored_point == vision.point else
                 stores(point=adapter.stored_point))
        self.layers = conditions.probed_layers(config, adapter)  # a bad --layers fails before any work
        self.layer_shapes = {layer: adapter.shape_at(layer) for layer in self.layers}
        layers = {layer: stores(point=layer) for layer in self.layers}
        self.snapshot = ResamplerSnapshot(adapter) if uses_vision else None
        for note in store.notes + (vision.notes if vision else []) + [n for s in layers.values() for n in s.notes]:
            self.reporter.info(note)
        run_key = digest(__version__, adapter.fingerprint(), str(config.limit), self.mixed_precision,
                         self.resampler_mode, self.stored_dtype)
        self.probing = ProbingContext(cells=self.cells, accelerator=self.accelerator, snapshot=self.snapshot,
                                      run_key=run_key, resampler_lr=self.resampler_lr, control=config.control,
                                      mdl=config.mdl, note=self.reporter.info)
        commit, source = provenance()
        result = RunResult(
            git_hash=commit, git_hash_source=source, command=config.command, model=self.card, checkpoint=adapter.fingerprint(),
            point=adapter.point, geometry=adapter.geometry, visual_prompt_shape=adapter.prompt_shape, seeds=self.seeds,
            regimes=config.regimes, baselines=config.baselines,
            resampler_lr=self.resampler_lr if "joint" in config.regimes else None, limit=config.limit,
            joint_training=JointTraining(resampler_lr=self.resampler_lr, resampler_mode=self.resampler_mode, mixed_precision=self.mixed_precision)
            if "joint" in config.regimes else None,
            mixed_precision=self.mixed_precision, stored_dtype=self.stored_dtype, data_seed=config.data_seed,
            limit_note=LIMIT_NOTE if config.limit else None, device=str(self.accelerator.device), layers=self.layers,
        )
        # An earlier run's results in this output are kept and added to, or the run is refused (merge.py).
        before = merge.previous(self.results_path, result)
        merge.start(result, before, {t.name for t in self.tasks})
        loaded: dict[str, tuple[TaskData, float]] = {}
        for task in self.tasks:
            start = time.perf_counter()
            try:
                data = load_task_data(task, config.limit, self.data)
                conditions.check_budgets(config, task, data, adapter)  # a probe too large fails before extraction
                loaded[task.name] = (data, time.perf_counter() - start)
            except Exception as e:  # a task whose data fails is reported; the others still run
                result.tasks[task.name] = self._failed(task, e)
        self._plan_summary({name: data for name, (data, _) in loaded.items()})
        requests = {name: feature_requests(self._task(name), data, adapter) for name, (data, _) in loaded.items()}
        every = [r for reqs in requests.values() for r in reqs]
        self._check_disk([store, *([vision] if vision is not None and vision is not store else []),
                          *layers.values()], every)  # before the results file is touched
        self._save(result)
        result.extraction = self._extract(store, vision, every, layers)
        failed = {**store.failed, **(vision.failed if vision else {})}
        for name, reqs in requests.items():  # a task with an unreadable image fails; the others go on
            broken = sorted({failed[k] for k, _, _ in reqs if k in failed})
            if broken:
                error = SpatialbenchError(f"{len(broken)} image(s) could not be read:\n" + "\n".join(broken[:5]),
                                          fix="replace or remove those files and run again")
                result.tasks[name] = self._failed(self._task(name), error)
                del loaded[name]
        self._save(result)
        self._probe_all(result, before, loaded, store, vision, adapter, layers)
        return result

    def _probe_all(self, result: RunResult, before: RunResult | None, loaded: dict, store: FeatureStore,
                   vision: FeatureStore | None, adapter: Adapter, layers: dict[str, FeatureStore]) -> None:
        """Every loaded task's fits through one queue (probing/queue.py), each task summed up and saved as
        soon as its cells are all on disk: a crash loses at most the fits in flight."""
        prepared: dict[str, Prepared] = {}
        for task in self.tasks:
            if task.name in loaded:
                data, load_seconds = loaded[task.name]
                try:
                    prepared[task.name] = self._prepare(task, data, store, vision, adapter, load_seconds, layers)
                except Exception as e:
                    self._done(result, self._failed(task, e))

        current: TaskProbing | None = None  # the task this process fitted last

        def fit(group: Group, cells: list[Cell]) -> None:
            nonlocal current
            start = time.perf_counter()
            if current is not None and current is not group.probing:
                current.release()
            current = group.probing
            group.probing.fit_all(cells, partial(tick, group.probing.task.name))
            prepared[group.probing.task.name].seconds += time.perf_counter() - start

        def finish(probing: TaskProbing) -> None:
            try:
                task = merge.task(self._result(prepared.pop(probing.task.name)), before)
            except Exception as e:
                task = self._failed(probing.task, e)
            self._done(result, task)

        def fail(probing: TaskProbing, error: Exception) -> None:
            prepared.pop(probing.task.name)
            self._done(result, self._failed(probing.task, error))

        groups = [g for p in prepared.values() for g in p.probing.groups()]
        epochs = {name: p.probing.epochs([c for c in p.probing.cells if not p.probing.done(c)])
                  for name, p in prepared.items()}
        with self.reporter.training(epochs) as tick, Claims() as claims:
            queue.work(groups, claims, fit, finish, fail)

    def _done(self, result: RunResult, task: TaskResult) -> None:
        """A task's result in the run's results, in the run's task order after the tasks kept from before."""
        result.tasks[task.name] = task
        order = {t.name: i for i, t in enumerate(self.tasks)}
        result.tasks = dict(sorted(result.tasks.items(), key=lambda kv: order.get(kv[0], -1)))
        adjust_holm(result)
        self._save(result)

    def _plan_summary(self, loaded: dict[str, TaskData]) -> None:
        """The one line `spatialbench plan` would print, before any extraction."""
        tasks = [t for t in self.tasks if t.name in loaded]
        try:
            self.reporter.info(estimate(self.config, tasks, self.card, loaded, self.layer_shapes).summary())
        except SpatialbenchError as e:
            self.reporter.info(f"plan: not available ({str(e).splitlines()[0]})")

    def _check_disk(self, stores: list[FeatureStore], requests: list) -> None:
        """Refuse before any extraction when the features this run adds to the cache will not fit its disk."""
        needed = sum(s.bytes_to_add(requests) for s in stores)
        where = self.cache_dir
        while not where.exists():  # a cache not made yet lands on its nearest existing parent's disk
            where = where.parent
        free = shutil.disk_usage(where).free
        if needed > free:
            raise SpatialbenchError(
                f"the features this run adds to the cache need {gb(needed)} ({needed:,} bytes), and the disk "
                f"holding {self.cache_dir} has {gb(free)} ({free:,} bytes) free", field="--cache-dir",
                fix="pass --cache-dir (or set $SPATIALBENCH_CACHE) on a disk with room, run fewer tasks, free space "
                    "there" + (", or store 16-bit features (--stored-dtype auto)" if self.stored_dtype == "float32"
                               else "") + "; `spatialbench plan` gives each task's share")

    def _failed(self, task: TaskSpec, error: Exception) -> TaskResult:
        text = str(error) if isinstance(error, SpatialbenchError) else f"{type(error).__name__}: {error}"
        if not isinstance(error, SpatialbenchError):
            self.reporter.info(f"[red]task {task.name} failed[/red]\n{traceback.format_exc()}")
        else:
            self.reporter.info(f"[red]task {task.name} failed:[/red] {text}")
        return TaskResult(name=task.name, kind=task.kind, version=task.version, status="failed", error=text)

    def _task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)

    def _extract(self, store: FeatureStore, vision: FeatureStore | None, requests: list[Request],
                 layers: dict[str, FeatureStore]) -> ExtractionStats:
        """Each unique image once: under `accelerate launch` each process extracts its own share. With layers,
        one forward per prompt fills the prompt's store, the vision features' and every layer's."""
        if layers:
            return self._extract_together(store, [s for s in (vision,) if s is not None and s is not store]
                                          + list(layers.values()), requests)
        unique = {(content_key, text): (content_key, text, loader) for content_key, text, loader in requests}
        images = {content_key: (content_key, None, loader) for content_key, _, loader in unique.values()}
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        share = lambda n: len(range(rank, n, world))  # noqa: E731
        start = time.perf_counter()
        if vision is not None:  # vision features first: prompts are then resampled from them
            with self.reporter.extraction(share(len(images)), "extracting vision features") as advance:
                vision.ensure(images.values(), on_batch=advance, shard=(rank, world))
            self._share_failures(vision)
        if store is not vision:
            with self.reporter.extraction(share(len(unique))) as advance:
                store.ensure(unique.values(), on_batch=advance, vision=vision, shard=(rank, world))
            self._share_failures(store)
        counts = [[store.extracted, store.reused, store.recomputed + (vision.recomputed if vision else 0),
                   vision.extracted if vision else 0]]
        if world > 1:
            counts = gather_object(counts)
        extracted, reused, recomputed, vision_extracted = np.sum(counts, axis=0).tolist()
        return ExtractionStats(images=len(images), prompts=len(unique), extracted=extracted, reused=reused,
                               recomputed=recomputed, failed=len(store.failed) + (len(vision.failed) if vision else 0),
                               vision_extracted=vision_extracted, by_process=[c[0] for c in counts],
                               seconds=time.perf_counter() - start)

    def _extract_together(self, store: FeatureStore, also: list[FeatureStore], requests: list[Request]) -> ExtractionStats:
        unique = {(content_key, text): (content_key, text, loader) for content_key, text, loader in requests}
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        start = time.perf_counter()
        points = [store.point, *(s.point for s in also)]
        with self.reporter.extraction(len(range(rank, len(unique), world)),
                                      f"extracting {len(points)} points and layers") as advance:
            store.ensure(unique.values(), on_batch=advance, shard=(rank, world), also=also)
        self._share_failures(store)
        counts = [[store.extracted, store.reused, store.recomputed + sum(s.recomputed for s in also)]]
        if world > 1:
            counts = gather_object(counts)
        extracted, reused, recomputed = np.sum(counts, axis=0).tolist()
        return ExtractionStats(images=len({k for k, _ in unique}), prompts=len(unique), extracted=extracted,
                               reused=reused, recomputed=recomputed, failed=len(store.failed),
                               by_process=[c[0] for c in counts], points=points, seconds=time.perf_counter() - start)

    def _share_failures(self, store: FeatureStore) -> None:
        """Wait for every process's share of the cache; then all know every unreadable image."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.num_processes > 1:
            for failed in gather_object([store.failed]):
                store.failed.update(failed)

    def _prepare(self, task: TaskSpec, data: TaskData, store: FeatureStore, vision: FeatureStore | None,
                 adapter: Adapter, load_seconds: float, layers: dict[str, FeatureStore]) -> Prepared:
        """A task's probe inputs and conditions, and its cells (those already on disk counted as reused)."""
        start = time.perf_counter()
        inputs = build_inputs(task, data, store, adapter)
        vision_rows = Visual(vision.rows([(key, None) for key, _ in inputs.row_keys])) if vision else None
        plan = conditions.plan(self.config, inputs, vision_rows, adapter, self.snapshot, data.objects,
                               self.resampler_mode, scratch=self.cache_dir / "scratch",
                               layers={name: s.rows(inputs.row_keys) for name, s in layers.items()})
        probing = TaskProbing(task, inputs, plan, self.seeds, self.probing, data.fingerprint)
        self.cells.planned += len(probing.cells)
        self.cells.reused += sum(probing.done(c) for c in probing.cells)
        return Prepared(probing, data, load_seconds, time.perf_counter() - start)

    def _result(self, prepared: Prepared) -> TaskResult:
        """A task's result from its cells on disk."""
        start = time.perf_counter()
        probing, data, task = prepared.probing, prepared.data, prepared.probing.task
        inputs, plan = probing.inputs, probing.plan
        test, examples = inputs.splits["test"], data.splits["test"]
        clusters = np.array([ex.image_id for ex in examples])
        results, fits_of, comparisons, scores = probing.summarise(examples, clusters)
        primary = next(c.name for c in plan if c.role == "regime")
        predictions = self.out_dir / f"samples_{task.name}.jsonl"
        if self.accelerator.is_main_process:
            scoring.write_predictions(predictions, examples, fits_of[primary], task.headline, test, inputs.box,
                                      {name: s.mean(axis=0) for name, s in scores.items()}, condition=primary,
                                      classes=data.classes, categories=data.categories)
        main = results[primary]
        train_seconds = prepared.seconds + time.perf_counter() - start
        return TaskResult(
            name=task.name, kind=task.kind, version=task.version, status="ok", target=task.target,
            headline=task.headline,
            dataset_fingerprint=digest(data.fingerprint, str(self.config.limit))[:16],
            n={k: len(v) for k, v in data.splits.items()},
            n_images={k: len({ex.image_id for ex in v}) for k, v in data.splits.items()},
            metrics=main.metrics, chance=scoring.chance(task.metrics, inputs.splits["train"], test, inputs.box),
            by_group=main.by_group, probe=task.probe, seeds=main.seeds,
            timings={"load": prepared.load_seconds, "train": train_seconds},
            predictions_file=predictions.name, conditions=results, comparisons=comparisons,
            notes=[f"{b}: not available here ({why})" for b in self.config.baselines
                   if (why := conditions.unavailable(b, data.objects, self.config.regimes))] + data_seed_note(
                       task, self.config.data_seed),
            test_images_in_train=data.test_images_in_train(),
        )
