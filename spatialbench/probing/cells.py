"""A task's probe fits ("cells": one condition, kind, seed and grid point), listed once for the run and for
`spatialbench plan` alike (task_cells), and the finished ones kept on disk beside the results (CellStore).

A rerun with the same --output skips every cell already there, so a run killed at any moment loses
at most the fits in flight. Several processes on one output (`accelerate launch`, or independent ones)
each fit the groups of cells they claim (claims.py) and read the rest from here. A cell is reused only if its key matches: the key covers
everything that changes the fit (checkpoint, task spec, data, limit, resampler lr, precision, seed).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..specs import TaskSpec
from .fit import FitResult

TRAINS_RESAMPLER = ("joint", "joint_random")  # conditions whose resampler learns with the probe


@dataclass(frozen=True)
class Choice:
    """One point of the selection grid: the probe's lr and, when the resampler trains, the resampler's."""

    lr: float
    resampler_lr: float | None = None

    @property
    def label(self) -> str:
        return f"lr {self.lr:g}" + (f" rlr {self.resampler_lr:g}" if self.resampler_lr is not None else "")


def grid(condition: str, probe_lrs: list[float], resampler_lrs: list[float]) -> list[Choice]:
    """The grid a condition is selected over: the probe's lrs, crossed with the resampler's where it trains."""
    if condition not in TRAINS_RESAMPLER:
        return [Choice(lr) for lr in probe_lrs]
    return [Choice(lr, r) for lr in probe_lrs for r in resampler_lrs]


@dataclass(frozen=True)
class Cell:
    condition: str
    kind: str  # "fit", "control" or "mdl"
    seed: int
    choice: Choice

    @property
    def name(self) -> str:
        kind = "" if self.kind == "fit" else f" {self.kind}"
        return f"{self.condition}{kind} {self.choice.label}"


def with_control(task: TaskSpec, control: bool) -> bool:
    """Control tasks are for the explicit probes (an implicit query has no category to fix labels by)."""
    return control and not task.implicit


def with_mdl(task: TaskSpec, mdl: bool) -> bool:
    """MDL's online code is for classification targets."""
    return mdl and task.target != "box"


def task_cells(task: TaskSpec, conditions: list[tuple[str, str]], seeds: list[int], resampler_lrs: list[float],
               control: bool, mdl: bool) -> list[Cell]:
    """Every fit a run makes of `task` under these (condition, role) pairs: each seed at each grid point; for
    each regime, its control task's too, and one MDL code (its recipe is fixed: the first seed and grid point)."""
    cells = []
    for name, role in conditions:
        points = grid(name, task.probe.lr, resampler_lrs)
        cells += [Cell(name, "fit", s, g) for s in seeds for g in points]
        if role == "regime":
            cells += [Cell(name, "control", s, g) for s in seeds for g in points] if with_control(task, control) else []
            cells += [Cell(name, "mdl", seeds[0], points[0])] if with_mdl(task, mdl) else []
    return cells


class CellStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.planned = 0  # cells the run needs
        self.reused = 0  # cells found finished on disk when the run began (a resumed run), so not fitted
        self.fitted = 0  # by this process; the rest of the planned were fitted by other processes

    def path(self, task: str, name: str, seed: int) -> Path:
        return self.root / task / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-seed{seed}.npz"

    def _read(self, path: Path, key: str) -> tuple[dict, np.lib.npyio.NpzFile] | None:
        try:
            data = np.load(path, allow_pickle=False)
            meta = json.loads(str(data["meta"]))
        except (OSError, ValueError, KeyError, EOFError):  # missing, or left unreadable: fit it again
            return None
        return (meta, data) if meta.get("key") == key else None

    def has(self, task: str, name: str, seed: int, key: str) -> bool:
        return self._read(self.path(task, name, seed), key) is not None

    def get(self, task: str, name: str, seed: int, key: str) -> FitResult | str | None:
        """The fit, or the error it failed with, or None if the cell is not finished."""
        found = self._read(self.path(task, name, seed), key)
        if found is None:
            return None
        meta, data = found
        if "error" in meta:
            return meta["error"]
        return FitResult(seed=seed, test_pred=data["test_pred"], best_epoch=meta["best_epoch"],
                         epochs_run=meta["epochs_run"], val_score=meta["val_score"], seconds=meta["seconds"],
                         history=meta["history"], test_loss=meta["test_loss"], start=meta.get("start"),
                         val_loss=meta.get("val_loss", float("nan")), lr=meta.get("lr"),
                         resampler_lr=meta.get("resampler_lr"))

    def put(self, task: str, name: str, key: str, fit: FitResult) -> None:
        meta = {"key": key, "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run, "val_score": fit.val_score,
                "seconds": fit.seconds, "history": fit.history, "test_loss": fit.test_loss, "start": fit.start,
                "val_loss": fit.val_loss, "lr": fit.lr, "resampler_lr": fit.resampler_lr}
        buffer = io.BytesIO()
        np.savez(buffer, test_pred=fit.test_pred, meta=np.array(json.dumps(meta)))
        atomic_write(self.path(task, name, fit.seed), lambda p: p.write_bytes(buffer.getvalue()))
        self.fitted += 1

    def put_failed(self, task: str, name: str, seed: int, key: str, error: str) -> None:
        """A cell whose fit failed for a reason another attempt would meet again (a NaN loss)."""
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps({"key": key, "error": error})))
        atomic_write(self.path(task, name, seed), lambda p: p.write_bytes(buffer.getvalue()))
        self.fitted += 1

    def get_json(self, task: str, name: str, key: str) -> dict | None:
        """A cell that is a small record rather than a fit (MDL)."""
        found = self._read(self.path(task, name, 0), key)
        return None if found is None else found[0]["value"]

    def put_json(self, task: str, name: str, key: str, value: dict) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps({"key": key, "value": value})))
        atomic_write(self.path(task, name, 0), lambda p: p.write_bytes(buffer.getvalue()))
        self.fitted += 1
