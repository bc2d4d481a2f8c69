"""What a run shows a person: rich progress bars while it works and a summary table at the end."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

from rich import box
from rich.console import Console
from rich.markup import escape
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
    def extraction(self, total: int, what: str = "extracting visual prompts") -> Iterator[Callable[[int], None]]:
        with self._progress() as progress:
            bar = progress.add_task(what, total=total, note="images")
            yield lambda n: progress.advance(bar, n)

    @contextmanager
    def training(self, task: str, total_epochs: int) -> Iterator[Callable[[str, int, int, float], None]]:
        """A bar over every (condition, seed, epoch) of a task; early stopping finishes it early."""
        with self._progress() as progress:
            bar = progress.add_task(f"probing {task}", total=total_epochs, note="")

            last = [None]

            def tick(condition: str, seed: int, epoch: int, val: float) -> None:
                progress.update(bar, advance=1, note=f"{condition} seed {seed} epoch {epoch} val {val:.3f}")
                # Without a terminal the bar is drawn only at the end: a log still shows where the run is.
                if not self.console.is_terminal and last[0] != (condition, seed):
                    last[0] = (condition, seed)
                    self.console.print(f"probing {task}: {condition}, seed {seed}")

            yield tick
            progress.update(bar, completed=total_epochs)

    def summary(self, result: RunResult, path: str) -> None:
        table = Table(title=f"{result.model.name}: {result.point} prompt {tuple(result.visual_prompt_shape)}",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        # Numbers never shrink; names fold onto a second line when the terminal is narrow.
        table.add_column("task", overflow="fold")
        table.add_column("metric", overflow="fold")
        for col, width in (("mean±std", 11), ("95% CI", 13), ("chance", 6), ("n test", 6)):
            table.add_column(col, justify="right", no_wrap=True, min_width=width)
        for task in result.tasks.values():
            if task.status == "failed":
                table.add_row(task.name, "[red]failed[/red]", escape((task.error or "").split("\n")[0][:48]), "", "", "")
                continue
            conditions = task.conditions or {}
            if len(conditions) <= 1:
                self._row(table, task.name, task.headline, task.metrics[task.headline], task)
                continue
            for name, cond in conditions.items():
                label = f"{task.name} {name}" if cond.role == "regime" else f"  {name}"
                self._row(table, label, task.headline, cond.metrics[task.headline], task)
                if cond.mdl:
                    table.add_row(f"  {name} MDL", "compression", f"{cond.mdl.compression:.2f}x",
                                  f"{cond.mdl.codelength_bits:.0f} bits", "", "")
                if cond.selectivity:
                    s = cond.selectivity
                    table.add_row(f"  {name} selectivity", "task-control", f"{s.diff:+.3f}",
                                  f"[{s.ci95[0]:+.3f},{s.ci95[1]:+.3f}]", "", "")
            for comparison in task.comparisons.values():
                table.add_row(f"  {comparison.a}-{comparison.b} gap", p_text(comparison.p_value),
                              f"{comparison.diff:+.3f}", f"[{comparison.ci95[0]:+.3f},{comparison.ci95[1]:+.3f}]", "", "")
        self.console.print(table)
        if result.limit_note:
            self.console.print(f"[yellow]{result.limit_note}[/yellow]")
        ex = result.extraction
        repaired = (f", {ex.recomputed} cache entries extracted again"
                    " (they failed their checksum: corrupt, or written before checksums)") if ex.recomputed else ""
        self.console.print(f"visual prompts: {ex.images} images, {ex.extracted} extracted, {ex.reused} from cache"
                           f"{repaired}")
        self.console.print(f"results: {path}")

    @staticmethod
    def _row(table: Table, label: str, metric: str, m, task) -> None:
        table.add_row(label, metric, f"{m.mean:.3f}±{m.std:.3f}", f"[{m.ci95[0]:.3f},{m.ci95[1]:.3f}]",
                      f"{task.chance[metric]:.3f}", str(task.n["test"]))


def p_value(p: float) -> str:
    """A p-value as tables show it: never "0.000", since the bootstrap cannot show p below 1/(B+1)."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float) -> str:
    value = p_value(p)
    return f"p{value}" if value.startswith("<") else f"p={value}"


def comparison_table(result) -> Table:
    """`spatialbench compare`: A - B per compared task, with the paired CI and p-value."""
    a, b = result.a, result.b
    table = Table(title=f"{escape(a.model)} - {escape(b.model)} ({escape(a.condition)})", box=box.SIMPLE_HEAD)
    for col in ("task", "metric", "A", "B", "A - B", "95% CI", "p", "items / images"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right", no_wrap=True)
    for name, t in result.tasks.items():
        table.add_row(escape(name), t.metric, f"{t.a:.3f}", f"{t.b:.3f}", f"{t.diff:+.3f}",
                      f"[{t.ci95[0]:+.3f},{t.ci95[1]:+.3f}]", p_value(t.p_value), f"{t.n_items} / {t.n_images}")
    return table
