"""One task's probing: every (condition, kind, seed, grid point) cell fitted once, then summed up into a
TaskResult, each seed's grid point selected on validation.

Cells are the unit of work and of resumption: each is fitted by exactly one process (under
`accelerate launch`, round-robin), written to the CellStore, and read back by the summary; a cell
already on disk with a matching key is never fitted again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..features import digest
from ..results import Mdl
from ..specs import TaskSpec
from ..stats.codelength import default_blocks
from . import conditions
from .cells import CellStore
from .fit import ProbeInputs
from .mdl import online_code


@dataclass(frozen=True)
class Cell:
    condition: conditions.Condition
    kind: str  # "fit", "control" or "mdl"
    seed: int
    choice: conditions.Choice

    @property
    def name(self) -> str:
        kind = "" if self.kind == "fit" else f" {self.kind}"
        return f"{self.condition.name}{kind} {self.choice.label}"


class TaskProbing:
    """The cells of one task under one plan, their fitting, and their summary."""

    def __init__(self, task: TaskSpec, inputs: ProbeInputs, plan: list[conditions.Condition], seeds: list[int],
                 run, run_key: str, data_fingerprint: str):
        self.task, self.inputs, self.plan, self.seeds, self.run = task, inputs, plan, seeds, run
        self.store: CellStore = run.cells
        self.base_key = digest(run_key, task.model_dump_json(), data_fingerprint)
        self.with_control = run.config.control and not task.implicit
        self.with_mdl = run.config.mdl and not inputs.box
        self.grids = {c.name: c.grid(task.probe.lr, run.resampler_lr) for c in plan}
        self.cells = []
        for cond in plan:
            grid = self.grids[cond.name]
            self.cells += [Cell(cond, "fit", s, g) for s in seeds for g in grid]
            if cond.role == "regime":
                self.cells += [Cell(cond, "control", s, g) for s in seeds for g in grid] if self.with_control else []
                # MDL's online code is one fixed recipe over its blocks: the grid's first point.
                self.cells += [Cell(cond, "mdl", seeds[0], grid[0])] if self.with_mdl else []

    def key(self, cell: Cell) -> str:
        return digest(self.base_key, cell.name, str(cell.seed))

    def todo(self, rank: int, world: int) -> list[Cell]:
        """This process's share of the cells not yet on disk."""
        mine = [c for i, c in enumerate(self.cells) if i % world == rank]
        todo = [c for c in mine if not self.store.has(self.task.name, c.name, c.seed, self.key(c))]
        self.store.reused += len(mine) - len(todo)
        return todo

    def epochs(self, cells: list[Cell]) -> int:
        """Upper bound of the epochs these cells train (early stopping ends most sooner)."""
        blocks = len(default_blocks(len(self.inputs.splits["train"]))) - 1
        return sum(self.task.probe.epochs * (blocks if c.kind == "mdl" else 1) for c in cells)

    def fit(self, cell: Cell, tick) -> None:
        run, cond, key = self.run, cell.condition, self.key(cell)
        on_epoch = lambda epoch, val: tick(cell.name, cell.seed, epoch, val)  # noqa: E731
        if cell.kind == "mdl":
            restore = run.snapshot.restore if cond.encoder is not None else None
            r = online_code(cond.inputs_for(cell.seed), self.task.probe, self.task.headline, cell.seed,
                            run.accelerator, encoder=cond.encoder, encoder_lr=cell.choice.resampler_lr,
                            lr=cell.choice.lr, before_fit=restore, on_epoch=on_epoch)
            if restore:
                restore()
            value = Mdl(codelength_bits=r.codelength_bits, uniform_bits=r.uniform_bits, compression=r.compression)
            self.store.put_json(self.task.name, cell.name, key, value.model_dump())
            return
        inputs = self._control_inputs(cond, cell.seed) if cell.kind == "control" else cond.inputs_for(cell.seed)
        try:
            result = conditions.fit_one(cond, inputs, self.task, cell.seed, cell.choice, run.accelerator,
                                        run.snapshot, on_epoch)
        except FloatingPointError as e:  # this seed diverged at this grid point; the others go on
            run.reporter.info(f"[red]{self.task.name} {cell.name}: {e}[/red]")
            self.store.put_failed(self.task.name, cell.name, cell.seed, key, str(e))
            return
        self.store.put(self.task.name, cell.name, key, result)

    def _control_inputs(self, cond: conditions.Condition, seed: int) -> ProbeInputs:
        return conditions.control_inputs(cond.inputs, self.inputs.shape.n_out, seed)

    def _get(self, cond: conditions.Condition, kind: str, seed: int, choice: conditions.Choice):
        cell = Cell(cond, kind, seed, choice)
        if kind == "mdl":
            found = self.store.get_json(self.task.name, cell.name, self.key(cell))
            return None if found is None else Mdl(**found)
        found = self.store.get(self.task.name, cell.name, seed, self.key(cell))
        if found is None:
            raise RuntimeError(f"cell {self.task.name}/{cell.name}/seed {seed} was not fitted by any process")
        return found

    def _selected(self, cond: conditions.Condition, kind: str) -> tuple[dict[int, tuple], dict[int, str]]:
        """Per seed: (the grid point selected on validation, every grid point's fit); and the seeds whose every
        grid point failed, with the first error."""
        chosen, failed = {}, {}
        for seed in self.seeds:
            got = [self._get(cond, kind, seed, g) for g in self.grids[cond.name]]
            fits = [f for f in got if not isinstance(f, str)]
            if fits:
                chosen[seed] = (conditions.select(fits), fits)
            else:
                failed[seed] = got[0]
        return chosen, failed

    def summarise(self, examples, clusters: np.ndarray):
        """Every condition's result, the paired comparisons and each condition's per-seed per-item headline
        scores [seeds, N], from the cells on disk."""
        results, fits_of, scores = {}, {}, {}
        headline = self.task.headline
        for cond in self.plan:
            chosen, failed = self._selected(cond, "fit")
            if not chosen:
                raise FloatingPointError(f"{cond.name}: every seed failed; first: {next(iter(failed.values()))}")
            fits = [f for f, _ in chosen.values()]
            control_fits = control_sets = None
            if self.with_control and cond.role == "regime":
                picked, _ = self._selected(cond, "control")
                control_sets = [self._control_inputs(cond, s) for s in picked] or None
                control_fits = [f for f, _ in picked.values()] or None
            starts = [f.start for f in fits if f.start is not None]
            results[cond.name] = conditions.summarise(cond, fits, [g for _, g in chosen.values()], starts, self.task,
                                                      examples, clusters, control_fits, control_sets)
            results[cond.name].failed_seeds = failed
            if self.with_mdl and cond.role == "regime":
                results[cond.name].mdl = self._get(cond, "mdl", self.seeds[0], self.grids[cond.name][0])
            fits_of[cond.name] = fits
            scores[cond.name] = conditions.seed_scores(headline, fits, cond.inputs)
        for name, share in conditions.recovered(scores, clusters).items():
            results[name].recovered = share
        layers = [c.name for c in self.plan if c.role == "layer"]
        return results, fits_of, conditions.comparisons(scores, headline, clusters, layers), scores
