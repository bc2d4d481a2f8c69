"""`leaderboard validate`: a submitted results file against the schema, the task registry and itself.

The builder runs the same checks and refuses a file that fails any of them. Checks that need data this
machine lacks (the split sizes of a real dataset whose annotations are not here) are skipped with a note,
never passed silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ..data.registry import DataContext
from ..errors import SpatialbenchError, ValidationErrors
from ..registry import TaskRegistry, unknown_name
from ..results import RunResult, read_results
from ..specs import TARGET_METRICS, TaskSpec, with_data_seed
from .checks import KNOWN_METRICS, Problems, check_run, check_task


@dataclass
class Report:
    """What validating one file found: the parsed result (if it parsed), its problems, and skipped checks."""

    path: str
    result: RunResult | None = None
    problems: list[SpatialbenchError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.problems


def _not_local(spec: TaskSpec, ctx: DataContext) -> str | None:
    """Why a real dataset's split sizes are not computed here (validation never downloads), or None if its
    files may be on disk. Mirrors the loaders' own choice between local files and the Hub."""
    ds = spec.dataset
    if getattr(ds, "hub_id", None):
        return f"it reads the Hub dataset {ds.hub_id}"
    if ds.source == "vsr":
        if ds.annotations is None or ("{data_dir}" in ds.annotations and ctx.data_dir is None):
            return "it reads the VSR annotations from the Hub (or give --data-dir)"
        if ds.download_images:
            return "its loader may download images"
    return None


def _read(path: Path) -> RunResult:
    """read_results, faster: pydantic parses the JSON itself (half the time at hundreds of files). Any file it
    refuses goes through read_results, so every message is the one read_results gives."""
    try:
        return RunResult.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return read_results(path)


class Validator:
    """Validates results files against one task registry; expected split sizes are computed once per task."""

    def __init__(self, include_paths: list[Path] = (), data: DataContext | None = None):
        self.registry = TaskRegistry(list(include_paths))
        self.data = data or DataContext.from_flags()
        self._sizes: dict[tuple[str, int | None, int | None], tuple[dict, dict] | str] = {}

    def known_tasks(self) -> dict[str, dict]:
        """Registry facts the page shows: kind, version, groups, headline."""
        return {name: {"kind": t.kind, "version": t.version, "groups": list(t.groups), "headline": t.headline}
                for name, t in self.registry.items.items()}

    def expected_sizes(self, spec: TaskSpec, limit: int | None) -> tuple[dict, dict] | str:
        """(examples per split, images per split), or why they cannot be computed here."""
        key = (spec.name, spec.dataset.seed if spec.dataset.source == "synthetic" else None, limit)
        if key not in self._sizes:
            from ..data.sources import load_task_data  # the loaders are only needed for this check

            reason = _not_local(spec, self.data) if spec.dataset.source != "synthetic" else None
            if reason is None:
                try:
                    data = load_task_data(spec, limit, self.data)
                    reason = ({s: len(v) for s, v in data.splits.items()},
                              {s: len({ex.image_id for ex in v}) for s, v in data.splits.items()})
                except SpatialbenchError as e:
                    reason = f"its data is not available here ({str(e).splitlines()[0]})"
            self._sizes[key] = reason
        return self._sizes[key]

    def check(self, path: Path) -> Report:
        report = Report(str(path))
        try:
            report.result = _read(Path(path))
        except ValidationErrors as e:
            report.problems += e.errors
            return report
        except SpatialbenchError as e:
            report.problems.append(e)
            return report
        out = Problems(str(path))
        check_run(out, report.result)
        for key, task in report.result.tasks.items():
            spec = self._known_task(out, key, task)
            target = spec.target if spec else task.target
            allowed = list(TARGET_METRICS.get(target, KNOWN_METRICS))
            check_task(out, report.result, key, task, allowed, spec.headline if spec else None)
            if spec is not None and task.status == "ok":  # a confirmation run's scenes come from its data seed
                self._check_split_sizes(out, report, key, task, with_data_seed(spec, report.result.data_seed))
        report.problems += out
        return report

    def _known_task(self, out: Problems, key: str, task) -> TaskSpec | None:
        """The registry's spec of this task, after checking name, version, kind, target and headline against it."""
        where = f"tasks.{key}"
        if key not in self.registry.items:
            hint = unknown_name("task", key, self.registry.names()).fix
            out.add(where, f"unknown task '{key}': the task registry does not have it",
                    fix=f"{hint} (results of a task of your own need --include-path with its YAML)")
            return None
        spec: TaskSpec = self.registry.items[key]
        if task.version != spec.version:
            out.add(f"{where}.version", f"version {task.version} of '{key}' is not known; the registry has "
                                        f"version {spec.version}", fix="rerun the task with its current YAML")
            return None  # an older or newer task is a different task: its sizes and metrics may differ
        if task.kind != spec.kind:
            out.add(f"{where}.kind", f"'{task.kind}', but the registry's '{key}' is a {spec.kind} task")
        if task.target is not None and task.target != spec.target:
            out.add(f"{where}.target", f"'{task.target}', but the registry's '{key}' predicts '{spec.target}'")
        if task.headline is not None and task.headline != spec.headline:
            out.add(f"{where}.headline", f"'{task.headline}', but the headline of '{key}' is '{spec.headline}'")
        return spec

    def _check_split_sizes(self, out: Problems, report: Report, key: str, task, spec: TaskSpec) -> None:
        expected = self.expected_sizes(spec, report.result.limit)
        if isinstance(expected, str):
            report.notes.append(f"n of {key} not checked: {expected}")
            return
        n, images = expected
        limit = f" with limit {report.result.limit}" if report.result.limit is not None else ""
        for split, count in task.n.items():
            if split in n and count != n[split]:
                out.add(f"tasks.{key}.n.{split}", f"{count} examples, but task '{key}' v{spec.version} has "
                                                  f"{n[split]} in this split{limit}")
        for split, count in task.n_images.items():
            if split in images and count != images[split]:
                out.add(f"tasks.{key}.n_images.{split}", f"{count} images, but task '{key}' v{spec.version} has "
                                                         f"{images[split]} in this split{limit}")
