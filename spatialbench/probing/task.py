"""One task's probing: every (condition, kind, seed) cell fitted once, then summed up into a TaskResult.

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

    @property
    def name(self) -> str:
        return self.condition.name if self.kind == "fit" else f"{self.condition.name} {self.kind}"


class TaskProbing:
    """The cells of one task under one plan, their fitting, and their summary."""

    def __init__(self, task: TaskSpec, inputs: ProbeInputs, plan: list[conditions.Condition], seeds: list[int],
                 run, run_key: str, data_fingerprint: str):
        self.task, self.inputs, self.plan, self.seeds, self.run = task, inputs, plan, seeds, run
        self.store: CellStore = run.cells
        self.base_key = digest(run_key, task.model_dump_json(), data_fingerprint)
        self.with_control = run.config.control and not task.implicit
        self.with_mdl = run.config.mdl and not inputs.box
        self.cells = []
        for cond in plan:
            self.cells += [Cell(cond, "fit", s) for s in seeds]
            if cond.role == "regime":
                self.cells += [Cell(cond, "control", s) for s in seeds] if self.with_control else []
                self.cells += [Cell(cond, "mdl", seeds[0])] if self.with_mdl else []

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
            r = online_code(cond.inputs, self.task.probe, self.task.headline, cell.seed, run.accelerator,
                            encoder=cond.encoder, encoder_lr=run.resampler_lr, before_fit=restore, on_epoch=on_epoch)
            if restore:
                restore()
            value = Mdl(codelength_bits=r.codelength_bits, uniform_bits=r.uniform_bits, compression=r.compression)
            self.store.put_json(self.task.name, cell.name, key, value.model_dump())
            return
        inputs = self._control_inputs(cond, cell.seed) if cell.kind == "control" else cond.inputs
        try:
            result = conditions.fit_one(cond, inputs, self.task, cell.seed, run.accelerator, run.resampler_lr,
                                        run.snapshot, on_epoch)
        except FloatingPointError as e:  # this seed diverged; the other seeds and conditions go on
            run.reporter.info(f"[red]{self.task.name} {cell.name}: {e}[/red]")
            if run.snapshot is not None:
                run.snapshot.restore()
            self.store.put_failed(self.task.name, cell.name, cell.seed, key, str(e))
            return
        self.store.put(self.task.name, cell.name, key, result)

    def _control_inputs(self, cond: conditions.Condition, seed: int) -> ProbeInputs:
        return conditions.control_inputs(cond.inputs, self.inputs.shape.n_out, seed)

    def _get(self, cond: conditions.Condition, kind: str, seed: int):
        cell = Cell(cond, kind, seed)
        if kind == "mdl":
            found = self.store.get_json(self.task.name, cell.name, self.key(cell))
            return None if found is None else Mdl(**found)
        found = self.store.get(self.task.name, cell.name, seed, self.key(cell))
        if found is None:
            raise RuntimeError(f"cell {self.task.name}/{cell.name}/seed {seed} was not fitted by any process")
        return found

    def summarise(self, examples, clusters: np.ndarray):
        """Every condition's result, the paired comparisons and each condition's seed-averaged per-item
        headline scores, from the cells on disk."""
        results, fits_of = {}, {}
        for cond in self.plan:
            got = {s: self._get(cond, "fit", s) for s in self.seeds}
            failed = {s: f for s, f in got.items() if isinstance(f, str)}
            fits = [f for f in got.values() if not isinstance(f, str)]
            if not fits:
                raise FloatingPointError(f"{cond.name}: every seed failed; first: {next(iter(failed.values()))}")
            control_fits = control_sets = None
            if self.with_control and cond.role == "regime":
                pairs = [(self._control_inputs(cond, s), self._get(cond, "control", s)) for s in self.seeds]
                pairs = [(c, f) for c, f in pairs if not isinstance(f, str)]
                control_sets, control_fits = [c for c, _ in pairs] or None, [f for _, f in pairs] or None
            starts = [f.start for f in fits if f.start is not None]
            results[cond.name] = conditions.summarise(cond, fits, starts, self.task, examples, clusters,
                                                      control_fits, control_sets)
            results[cond.name].failed_seeds = failed
            if self.with_mdl and cond.role == "regime":
                results[cond.name].mdl = self._get(cond, "mdl", self.seeds[0])
            fits_of[cond.name] = fits
        headline = self.task.headline
        items = {c.name: conditions.item_scores(headline, fits_of[c.name], c.inputs) for c in self.plan}
        for name, share in conditions.recovered(items, clusters).items():
            results[name].recovered = share
        comparisons = {}
        if "frozen" in items and "joint" in items:
            comparisons["joint_vs_frozen"] = conditions.paired(
                "joint", "frozen", headline, items["joint"], items["frozen"], clusters)
        return results, fits_of, comparisons, items

