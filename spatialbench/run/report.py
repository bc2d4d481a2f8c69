"""What a run shows a person: rich progress bars while it works and a summary table at the end."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from ..results import RunResult


def quiet_libraries() -> None:
    """transformers' fallback warnings and progress bars would bury the run's own output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def log_progress(console: Console) -> None:
    """Show spatialbench's own INFO logs (a testbed build's pretraining progress) on `console`, once."""
    from rich.logging import RichHandler

    logger = logging.getLogger("spatialbench")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        logger.addHandler(RichHandler(console=console, show_time=False, show_path=False, show_level=False))
        logger.setLevel(logging.INFO)


class Reporter:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)

    def _progress(self) -> Progress:
        # The name, counts and time are never wrapped; the free-text note last is the one column rich may
        # narrow (it then wraps), so on a narrow terminal only the note gives way.
        return Progress(TextColumn("{task.description}", table_column=Column(no_wrap=True)),
                        BarColumn(bar_width=12), MofNCompleteColumn(table_column=Column(no_wrap=True)),
                        TimeElapsedColumn(table_column=Column(no_wrap=True)),
                        TextColumn("{task.fields[note]}", table_column=Column(overflow="ellipsis")),
                        console=self.console, transient=False)

    def info(self, text: str) -> None:
        self.console.print(text)

    @contextmanager
    def extraction(self, total: int, what: str = "extracting visual prompts") -> Iterator[Callable[[int], None]]:
        with self._progress() as progress:
            bar = progress.add_task(what, total=total, note="images")
            yield lambda n: progress.advance(bar, n)

    @contextmanager
    def training(self, epochs: dict[str, int]) -> Iterator[Callable[[str, str, int, int, float], None]]:
        """A bar per task (`epochs`: task -> every epoch its cells may train) over its (condition, seed,
        epoch); early stopping, or another process fitting some of its cells, finishes it early."""
        with self._progress() as progress:
            bars = {task: progress.add_task(f"probing {task}", total=total, note="") for task, total in epochs.items()}
            started: set[tuple[str, str, int]] = set()

            def tick(task: str, condition: str, seed: int, epoch: int, val: float) -> None:
                progress.update(bars[task], advance=1, note=f"{condition} seed {seed} epoch {epoch} val {val:.3f}")
                # Without a terminal the bar is drawn only at the end: a log still shows where the run is (once
                # a fit: a stack of fits trains them epoch by epoch together).
                if not self.console.is_terminal and (task, condition, seed) not in started:
                    started.add((task, condition, seed))
                    self.console.print(f"probing {task}: {condition}, seed {seed}")

            yield tick
            for task, bar in bars.items():
                progress.update(bar, completed=epochs[task])

    def summary(self, result: RunResult, path: str) -> None:
        self.console.print(f"[bold]{escape(result.model.name)}[/bold]: {result.point} prompt "
                           f"{tuple(result.visual_prompt_shape)}, {len(result.seeds)} seed(s)")
        for task in result.tasks.values():
            self.console.print(task_table(task))
            probed = [layer for layer in result.layers if layer in task.conditions]  # merged tasks may lack them
            if task.status == "ok" and probed:
                self.console.print(layer_table(task, probed))
        if any(c.p_holm is not None for t in result.tasks.values() for c in t.comparisons.values()):
            self.console.print("p: paired bootstrap over seeds and images; Holm: adjusted over every comparison of the "
                               "run's tasks together")
        if any(c.recovered for t in result.tasks.values() for c in t.conditions.values()):
            self.console.print("recovered = (score - blind) / (oracle - blind): the share of the headroom between the "
                               "language prior and a prompt that holds every object's box (docs/methodology.md)")
        if result.limit_note:
            self.console.print(f"[yellow]{result.limit_note}[/yellow]")
        ex = result.extraction
        repaired = (f", {ex.recomputed} cache entries extracted again"
                    " (they failed their checksum: corrupt, or written before checksums)") if ex.recomputed else ""
        self.console.print(f"visual prompts: {ex.images} images, {ex.extracted} extracted, {ex.reused} from cache"
                           f"{repaired}")
        self.console.print(f"results: {path}")


def _ci(lo: float, hi: float, signed: bool = False) -> str:
    return f"[{lo:+.3f},{hi:+.3f}]" if signed else f"[{lo:.3f},{hi:.3f}]"


def task_table(task) -> Table:
    """One task: a row per condition (score, CI, recovered share), then selectivity, MDL and the paired gaps.
    The numeric columns never wrap and fit 80 columns; only the condition names fold."""
    if task.status == "failed":
        table = Table(title=f"{escape(task.name)}: [red]failed[/red]", box=box.SIMPLE_HEAD, show_header=False)
        table.add_column("why", overflow="fold")
        table.add_row(escape((task.error or "").split("\n")[0]))
        return table
    title = f"{escape(task.name)} ({task.headline}; chance {task.chance[task.headline]:.3f}; {task.n['test']} test items)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    table.add_column("condition", overflow="fold", min_width=12)
    for col, width in (("mean±std", 11), ("95% CI", 15), ("recovered [95% CI]", 18)):
        table.add_column(col, justify="right", no_wrap=True, min_width=width)
    conditions = {n: c for n, c in task.conditions.items() if c.role != "layer"} or {"frozen": None}
    for name, cond in conditions.items():
        m = (cond.metrics if cond else task.metrics)[task.headline]
        r = cond.recovered if cond else None
        share = f"{r.value:.2f} [{r.ci95[0]:.2f},{r.ci95[1]:.2f}]" if r else ""
        table.add_row(name if not cond or cond.role == "regime" else f"  {name}", f"{m.mean:.3f}±{m.std:.3f}",
                      _ci(*m.ci95), share)
    for name, cond in conditions.items():
        if cond and cond.selectivity:
            s = cond.selectivity
            table.add_row(f"{name} selectivity (task - control)", f"{s.diff:+.3f}", _ci(*s.ci95, signed=True), "")
        if cond and cond.mdl:
            table.add_row(f"{name} MDL ({cond.mdl.codelength_bits:.0f} bits)", f"{cond.mdl.compression:.2f}x", "", "")
    for c in task.comparisons.values():
        if c.a in conditions and c.b in conditions:  # a layer's against the one before it: in the layer table
            holm = f", Holm {p_value(c.p_holm)}" if c.p_holm is not None else ""
            table.add_row(f"{c.a} - {c.b} ({p_text(c.p_value)}{holm})", f"{c.diff:+.3f}", _ci(*c.ci95, signed=True), "")
    for note in task.notes:
        table.add_row(f"[yellow]{escape(note)}[/yellow]", "", "", "")
    return table


def layer_table(task, layers: list[str]) -> Table:
    """A --layers run: the headline at each layer in forward order, and what each layer changes from the one
    before it (paired CI, Holm-adjusted p); the levels of the prompt itself and the baselines beneath. Each
    layer's recovered share is in the results file (80 columns leave it no room here)."""
    table = Table(title=f"{escape(task.name)} by layer ({task.headline})", box=box.SIMPLE_HEAD, pad_edge=False,
                  title_justify="left")
    table.add_column("layer", overflow="fold", min_width=12)
    for col, width in (("mean±std", 11), ("95% CI", 13), ("change", 6), ("95% CI", 15), ("p Holm", 6)):
        table.add_column(col, justify="right", no_wrap=True, min_width=width)
    for before, layer in zip([None, *layers], layers):
        m = task.conditions[layer].metrics[task.headline]
        c = task.comparisons.get(f"{layer}_vs_{before}")
        step = (f"{c.diff:+.3f}", _ci(*c.ci95, signed=True), p_value(c.p_holm if c.p_holm is not None else c.p_value)) \
            if c else ("", "", "")
        table.add_row(layer, f"{m.mean:.3f}±{m.std:.3f}", _ci(*m.ci95), *step)
    refs = [f"{name} {task.conditions[name].metrics[task.headline].mean:.3f}"
            for name in ("blind", "vision_patches", "oracle", "frozen") if name in task.conditions]
    if refs:
        table.caption = "levels: " + ", ".join(refs)
    return table


def p_value(p: float) -> str:
    """A p-value as tables show it: never "0.000", since the bootstrap cannot show p below 1/(B+1)."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float) -> str:
    value = p_value(p)
    return f"p{value}" if value.startswith("<") else f"p={value}"


def comparison_table(result) -> Table:
    """`spatialbench compare`: A - B per compared task, with the paired CI and p-value."""
    a, b = result.a, result.b
    table = Table(title=f"{escape(a.model)} - {escape(b.model)} ({escape(a.condition)})", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    rows = [[f"{escape(name)} ({t.metric})", f"{t.a:.3f}", f"{t.b:.3f}", f"{t.diff:+.3f}", f"[{t.ci95[0]:+.3f},{t.ci95[1]:+.3f}]",
             p_value(t.p_value), f"{t.n_items}/{t.n_images}"] for name, t in result.tasks.items()]
    for i, col in enumerate(("task (metric)", "A", "B", "A-B", "95% CI", "p", "items/imgs")):
        if i == 0:  # names wrap on a narrow terminal; numbers are never cut
            table.add_column(col, overflow="fold")
        else:
            table.add_column(col, justify="right", no_wrap=True, min_width=max([len(col), *(len(r[i]) for r in rows)]))
    for row in rows:
        table.add_row(*row)
    return table
