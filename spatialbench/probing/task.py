"""One task's probing: every (condition, kind, seed, grid point) cell fitted once, then summed up into a
TaskResult, each seed's grid point selected on validation.

Cells are the unit of work and of resumption: each group of them (TaskProbing.groups) is fitted by the
one process that claims it (claims.py), written to the CellStore, and read back by the summary; a cell
already on disk with a matching key is never fitted again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from accelerate import Accelerator

from ..features import digest
from ..results import Mdl
from ..specs import TaskSpec
from ..stats.codelength import default_blocks
from . import conditions, group
from .cells import Cell, CellStore, Choice, grid, task_cells, with_control, with_mdl
from .joint import ResamplerSnapshot
from .fit import ProbeInputs
from .mdl import online_code


@dataclass
class Group:
    """Cells that train together (TaskProbing.groups), under one claim named by `label`."""

    probing: TaskProbing
    label: str
    cells: list[Cell]

    def todo(self) -> list[Cell]:
        return [c for c in self.cells if not self.probing.done(c)]

    @property
    def claim(self) -> Path:
        return self.probing.store.root / self.probing.task.name / f"{self.label}.claim"


@dataclass
class ProbingContext:
    """What a task's probing takes from the run around it, and nothing else."""

    cells: CellStore  # finished fits, on disk
    accelerator: Accelerator  # the device, mixed precision and this process's share of the work
    snapshot: ResamplerSnapshot | None  # restores the resampler after a fit that trained it
    run_key: str  # the run's part of every cell key (checkpoint, limit, precision, resampler mode)
    resampler_lr: list[float]  # the joint regime's resampler lr grid
    control: bool  # control tasks for the explicit probes
    mdl: bool  # an MDL code per regime for classification tasks
    note: Callable[[str], None]  # a line for the person watching (a seed that diverged)


class TaskProbing:
    """The cells of one task under one plan, their fitting, and their summary."""

    def __init__(self, task: TaskSpec, inputs: ProbeInputs, plan: list[conditions.Condition], seeds: list[int],
                 context: ProbingContext, data_fingerprint: str):
        self.task, self.inputs, self.plan, self.seeds, self.context = task, inputs, plan, seeds, context
        self.store = context.cells
        self.base_key = digest(context.run_key, task.model_dump_json(), data_fingerprint)
        self.with_control = with_control(task, context.control)
        self.with_mdl = with_mdl(task, context.mdl)
        self.by_name = {c.name: c for c in plan}
        self.grids = {c.name: grid(c.name, task.probe.lr, context.resampler_lr) for c in plan}
        self.cells = task_cells(task, [(c.name, c.role) for c in plan], seeds, context.resampler_lr, context.control,
                                context.mdl)
        self._done: set[Cell] = set()

    def key(self, cell: Cell) -> str:
        return digest(self.base_key, cell.name, str(cell.seed))

    def done(self, cell: Cell) -> bool:
        """Whether the cell is on disk (fitted by any process); once seen there, not read again."""
        if cell not in self._done and self.store.has(self.task.name, cell.name, cell.seed, self.key(cell)):
            self._done.add(cell)
        return cell in self._done

    def epochs(self, cells: list[Cell]) -> int:
        """Upper bound of the epochs these cells train (early stopping ends most sooner)."""
        blocks = len(default_blocks(len(self.inputs.splits["train"]))) - 1
        return sum(self.task.probe.epochs * (blocks if c.kind == "mdl" else 1) for c in cells)

    def groups(self) -> list[Group]:
        """Every cell of the task in the groups they train in: the fits and control fits of a condition that
        reads fixed features as one stack (per seed where its features are drawn per seed), every other cell
        alone (a trained resampler, an MDL code, a spec group.groupable refuses). Formed from all the cells,
        finished or not, so every process names a group alike (its claim, claims.py)."""
        out: list[Group] = []
        stacks: dict[tuple, Group] = {}
        for cell in self.cells:
            if not self._stacks(cell):
                out.append(Group(self, self.store.path(self.task.name, cell.name, cell.seed).stem, [cell]))
                continue
            per_seed = self.by_name[cell.condition].per_seed
            key = (cell.condition, cell.seed if per_seed else None)
            if key not in stacks:
                label = cell.condition + (f"-seed{cell.seed}" if per_seed else "")
                stacks[key] = Group(self, label, [])
                out.append(stacks[key])
            stacks[key].cells.append(cell)
        return out

    def release(self) -> None:
        """Drop what the task's fits keep resident between groups (its query texts' table): one task's at a
        time, whichever the queue interleaves."""
        for cond in self.plan:
            if cond.inputs.text is not None:
                cond.inputs.text.release()

    def cost(self, cells: list[Cell]) -> float:
        """A fit's relative cost, to order the queue longest first: epochs x training items x the values
        of a row its probe (or trained resampler) reads."""
        rows = self.by_name[cells[0].condition].inputs.features.shape
        return float(self.epochs(cells) * len(self.inputs.splits["train"]) * np.prod(rows[1:]))

    def fit_all(self, cells: list[Cell], tick) -> None:
        """Cells of one group: a stack trained at once, or one cell."""
        if not self._stacks(cells[0]):
            return self.fit(cells[0], tick)
        cond = self.by_name[cells[0].condition]
        features = cond.inputs_for(cells[0].seed)  # a per-seed condition's group is one seed's
        n_out = self.inputs.shape.n_out
        members = [group.Member(conditions.control_inputs(features, n_out, c.seed) if c.kind == "control"
                                else features, c.seed, c.choice.lr) for c in cells]
        on_epoch = lambda m, epoch, val: tick(cells[m].name, cells[m].seed, epoch, val)  # noqa: E731
        for cell, result in zip(cells, group.fit_group(members, self.task.probe, self.task.headline,
                                                       self.context.accelerator, on_epoch)):
            if isinstance(result, FloatingPointError):  # this seed diverged at this grid point; the others go on
                self.context.note(f"[red]{self.task.name} {cell.name}: {result}[/red]")
                self.store.put_failed(self.task.name, cell.name, cell.seed, self.key(cell), str(result))
            else:
                self.store.put(self.task.name, cell.name, self.key(cell), result)

    def _stacks(self, cell: Cell) -> bool:
        """Whether this cell trains in a stack (group.fit_group) rather than alone (fit)."""
        return (group.groupable(self.task.probe, self.context.accelerator) and cell.kind != "mdl"
                and self.by_name[cell.condition].encoder is None)

    def fit(self, cell: Cell, tick) -> None:
        ctx, cond, key = self.context, self.by_name[cell.condition], self.key(cell)
        on_epoch = lambda epoch, val: tick(cell.name, cell.seed, epoch, val)  # noqa: E731
        if cell.kind == "mdl":
            restore = ctx.snapshot.restore if cond.encoder is not None else None
            r = online_code(cond.inputs_for(cell.seed), self.task.probe, self.task.headline, cell.seed,
                            ctx.accelerator, encoder=cond.encoder, encoder_lr=cell.choice.resampler_lr,
                            lr=cell.choice.lr, before_fit=restore, on_epoch=on_epoch)
            if restore:
                restore()
            value = Mdl(codelength_bits=r.codelength_bits, uniform_bits=r.uniform_bits, compression=r.compression)
            self.store.put_json(self.task.name, cell.name, key, value.model_dump())
            return
        inputs = self._control_inputs(cond, cell.seed) if cell.kind == "control" else cond.inputs_for(cell.seed)
        try:
            result = conditions.fit_one(cond, inputs, self.task, cell.seed, cell.choice, ctx.accelerator,
                                        ctx.snapshot, on_epoch)
        except FloatingPointError as e:  # this seed diverged at this grid point; the others go on
            ctx.note(f"[red]{self.task.name} {cell.name}: {e}[/red]")
            self.store.put_failed(self.task.name, cell.name, cell.seed, key, str(e))
            return
        self.store.put(self.task.name, cell.name, key, result)

    def _control_inputs(self, cond: conditions.Condition, seed: int) -> ProbeInputs:
        return conditions.control_inputs(cond.inputs, self.inputs.shape.n_out, seed)

    def _get(self, cond: conditions.Condition, kind: str, seed: int, choice: Choice):
        cell = Cell(cond.name, kind, seed, choice)
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
