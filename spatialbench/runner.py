"""One `spatialbench run`: tasks x model -> features (once) -> probes per seed -> results JSON."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from . import scoring
from .adapters.base import Adapter, get_family
from .adapters.loading import default_cache_dir
from .assemble import build_inputs, feature_requests
from .data.examples import TaskData
from .data.sources import DataContext, load_task_data
from .errors import SpatialbenchError
from .features import FeatureStore, Request, digest
from .registry import ModelRegistry, TaskRegistry, load_spec
from .report import Reporter
from .results import LIMIT_NOTE, ExtractionStats, RunResult, SeedRun, TaskResult, git_hash
from .specs import ModelCard, RunConfig, TaskSpec
from .train import fit


def resolve_card(model: str) -> ModelCard:
    """A model card by name, or a path to a card's YAML file."""
    path = Path(model)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_spec(path, ModelCard)
    return ModelRegistry().get(model)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SpatialbenchError("--device cuda was asked for but torch sees no CUDA device",
                                field="--device", fix="use --device cpu, or install a CUDA build of torch")
    return device


class Runner:
    def __init__(self, config: RunConfig, reporter: Reporter | None = None):
        self.config, self.reporter = config, reporter or Reporter()
        self.tasks = TaskRegistry(config.include_paths).resolve(config.tasks)
        self.card = resolve_card(config.model)
        device = resolve_device(config.device)
        self.accelerator = Accelerator(cpu=device == "cpu", mixed_precision=config.mixed_precision)
        self.cache_dir = Path(config.cache_dir or default_cache_dir())
        self.seeds = list(range(config.seeds))
        self.out_dir = Path(config.output) / self.card.name
        self.results_path = self.out_dir / "results.json"
        self.data = DataContext.from_flags(config.data_dir, config.coco_root)

    def _save(self, result: RunResult) -> None:
        if self.accelerator.is_main_process:  # under `accelerate launch`, one writer
            result.write(self.results_path)

    def run(self) -> RunResult:
        adapter = get_family(self.card.family).load(
            self.card, device=str(self.accelerator.device), cache_dir=self.cache_dir, point=self.config.point,
            trust_remote_code=self.config.trust_remote_code)
        store = FeatureStore(adapter, self.cache_dir, self.config.batch_size)
        result = RunResult(
            git_hash=git_hash(), command=self.config.command, model=self.card, checkpoint=adapter.fingerprint(),
            point=adapter.point, visual_prompt_shape=adapter.prompt_shape, seeds=self.seeds,
            limit=self.config.limit, limit_note=LIMIT_NOTE if self.config.limit else None,
            device=str(self.accelerator.device),
        )
        loaded: dict[str, tuple[TaskData, float]] = {}
        for task in self.tasks:
            start = time.perf_counter()
            try:
                loaded[task.name] = (load_task_data(task, self.config.limit, self.data), time.perf_counter() - start)
            except Exception as e:  # a task whose data fails is reported; the others still run
                result.tasks[task.name] = self._failed(task, e)
        self._save(result)
        requests = {name: feature_requests(self._task(name), data, adapter) for name, (data, _) in loaded.items()}
        result.extraction = self._extract(store, [r for reqs in requests.values() for r in reqs])
        for name, reqs in requests.items():  # a task with an unreadable image fails; the others go on
            broken = sorted({store.failed[k] for k, _, _ in reqs if k in store.failed})
            if broken:
                error = SpatialbenchError(f"{len(broken)} image(s) could not be read:\n" + "\n".join(broken[:5]),
                                          fix="replace or remove those files and run again")
                result.tasks[name] = self._failed(self._task(name), error)
                del loaded[name]
        self._save(result)
        for task in self.tasks:
            if task.name not in loaded:
                continue
            data, load_seconds = loaded[task.name]
            try:
                result.tasks[task.name] = self._probe(task, data, store, adapter, load_seconds)
            except Exception as e:
                result.tasks[task.name] = self._failed(task, e)
            self._save(result)  # after every task: a crash loses at most the task in flight
        return result

    def _failed(self, task: TaskSpec, error: Exception) -> TaskResult:
        text = str(error) if isinstance(error, SpatialbenchError) else f"{type(error).__name__}: {error}"
        if not isinstance(error, SpatialbenchError):
            self.reporter.info(f"[red]task {task.name} failed[/red]\n{traceback.format_exc()}")
        else:
            self.reporter.info(f"[red]task {task.name} failed:[/red] {text}")
        return TaskResult(name=task.name, kind=task.kind, version=task.version, status="failed", error=text)

    def _task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)

    def _extract(self, store: FeatureStore, requests: list[Request]) -> ExtractionStats:
        unique = {(content_key, text): (content_key, text, loader) for content_key, text, loader in requests}
        start = time.perf_counter()
        with self.reporter.extraction(len(unique)) as advance:
            store.ensure(unique.values(), on_batch=advance)
        return ExtractionStats(images=len({k for k, _ in unique}), prompts=len(unique), extracted=store.extracted, reused=store.reused,
                               recomputed=store.recomputed, failed=len(store.failed),
                               seconds=time.perf_counter() - start)

    def _probe(self, task: TaskSpec, data: TaskData, store: FeatureStore, adapter: Adapter,
               load_seconds: float) -> TaskResult:
        start = time.perf_counter()
        inputs = build_inputs(task, data, store, adapter)
        fits = []
        with self.reporter.training(task.name, self.seeds, task.probe.epochs) as update:
            for seed in self.seeds:
                fits.append(fit(inputs, task.probe, seed, task.headline, self.accelerator,
                                on_epoch=lambda epoch, val, s=seed: update(s, epoch, val)))
                update.finish_seed(seed)
        test, examples = inputs.splits["test"], data.splits["test"]
        clusters = np.array([ex.image_id for ex in examples])
        predictions = self.out_dir / f"samples_{task.name}.jsonl"
        if self.accelerator.is_main_process:
            scoring.write_predictions(predictions, examples, fits, task.headline, test, inputs.box)
        return TaskResult(
            name=task.name, kind=task.kind, version=task.version, status="ok", target=task.target,
            headline=task.headline,
            dataset_fingerprint=digest(data.fingerprint, str(self.config.limit))[:16],
            n={k: len(v) for k, v in data.splits.items()},
            n_images={k: len({ex.image_id for ex in v}) for k, v in data.splits.items()},
            metrics=scoring.summarise(task.metrics, fits, test, clusters, inputs.box),
            chance=scoring.chance(task.metrics, inputs.splits["train"], test, inputs.box),
            by_group=scoring.by_group(task.headline, fits, test, examples, inputs.box),
            probe=task.probe,
            seeds=[SeedRun(seed=f.seed, best_epoch=f.best_epoch, epochs_run=f.epochs_run, validation=f.val_score,
                           seconds=f.seconds) for f in fits],
            timings={"load": load_seconds, "train": time.perf_counter() - start},
            predictions_file=predictions.name,
        )
