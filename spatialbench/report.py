"""What a run shows a person: rich progress bars while it works and a summary table at the end."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .results import RunResult


def quiet_libraries() -> None:
    """transformers' fallback warnings and progress bars would bury the run's own output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


class Reporter:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                        TimeElapsedColumn(), console=self.console, transient=False)

    def info(self, text: str) -> None:
        self.console.print(text)

    @contextmanager
    def extraction(self, total: int) -> Iterator[Callable[[int], None]]:
        with self._progress() as progress:
            bar = progress.add_task("extracting visual prompts", total=total, note="images")
            yield lambda n: progress.advance(bar, n)

    @contextmanager
    def training(self, task: str, seeds: list[int], epochs: int) -> Iterator[Callable[[int, int, float], None]]:
        with self._progress() as progress:
            bar = progress.add_task(f"probing {task}", total=len(seeds) * epochs, note="")
            done: dict[int, int] = {}

            def update(seed: int, epoch: int, val: float) -> None:
                done[seed] = epoch
                progress.update(bar, completed=sum(done.values()), note=f"seed {seed} epoch {epoch} val {val:.3f}")

            def finish_seed(seed: int) -> None:  # early stopping ends a seed before its last epoch
                done[seed] = epochs
                progress.update(bar, completed=sum(done.values()))

            update.finish_seed = finish_seed  # type: ignore[attr-defined]
            yield update

    def summary(self, result: RunResult, path: str) -> None:
        table = Table(title=f"{result.model.name}: {result.point} prompt {tuple(result.visual_prompt_shape)}",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("task", no_wrap=True)
        table.add_column("metric", no_wrap=True)
        for col in ("mean±std", "95% CI", "chance", "n test"):
            table.add_column(col, justify="right", no_wrap=True)
        for task in result.tasks.values():
            if task.status == "failed":
                table.add_row(task.name, "[red]failed[/red]", (task.error or "").split("\n")[0][:48], "", "", "")
                continue
            m = task.metrics[task.headline]
            table.add_row(task.name, task.headline, f"{m.mean:.3f}±{m.std:.3f}", f"[{m.ci95[0]:.3f},{m.ci95[1]:.3f}]",
                          f"{task.chance[task.headline]:.3f}", str(task.n["test"]))
        self.console.print(table)
        if result.limit_note:
            self.console.print(f"[yellow]{result.limit_note}[/yellow]")
        ex = result.extraction
        self.console.print(f"visual prompts: {ex.images} images, {ex.extracted} extracted, {ex.reused} from cache")
        self.console.print(f"results: {path}")
