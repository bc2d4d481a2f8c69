"""Results files -> the leaderboard's data: one row per (model, condition), one column per task.

Columns are the union of the task names found in the results, never a fixed list. Each cell holds the
task's headline metric for that row (mean, 95% CI, the chance level of that file) and its win share: the
fraction of the other model rows (regimes, not baselines) with that task that this row beats (a tie counts
half). The page averages these over whichever task columns are shown and ranks a row only against rows
that have all of them; `average` and `win_rate` here are over each row's own tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import __version__
from ..errors import SpatialbenchError
from ..results import ConditionResult, MetricSummary, Paired, RunResult, TaskResult
from ..specs import layer_order

# Conditions in the order the page lists them; any other name a runner might add sorts after these.
CONDITION_ORDER = ("frozen", "joint", "joint_random", "oracle", "vision_patches", "random_resampler", "blind")
OTHER_GROUP = "other"  # tasks the registry does not know
LEVELS = ("blind", "vision_patches", "oracle")  # drawn across a layer curve: the floor, what there was, the ceiling


@dataclass
class Source:
    path: str
    result: RunResult


@dataclass
class _Model:
    card_index: int
    sources: list[int] = field(default_factory=list)
    tasks: dict[str, tuple[int, TaskResult]] = field(default_factory=dict)


def headline_of(task: TaskResult, known_headline: str | None = None) -> str | None:
    """The task's headline metric: as recorded, else the registry's, else the first metric reported."""
    if task.headline:
        return task.headline
    if known_headline:
        return known_headline
    metrics = task.metrics or next((c.metrics for c in task.conditions.values()), {})
    return next(iter(metrics), None)


def conditions_of(task: TaskResult) -> dict[str, ConditionResult]:
    """Schema v1 files have no `conditions`: their top-level metrics are the frozen regime."""
    if task.conditions:
        return task.conditions
    if not task.metrics:
        return {}
    return {"frozen": ConditionResult(role="regime", metrics=task.metrics, by_group=task.by_group, seeds=task.seeds)}


def normalise(score: float | None, chance: float | None) -> float | None:
    """(score - chance) / (1 - chance): 0 at chance, 1 at a perfect score."""
    if score is None or chance is None or chance >= 1.0:
        return None
    return (score - chance) / (1.0 - chance)


def _r(x: float | None) -> float | None:
    """Six decimals: the page shows three, and 18-digit floats would triple the data a browser must parse."""
    return None if x is None else round(x, 6)


def _interval(m: MetricSummary) -> dict:
    return {"mean": _r(m.mean), "lo": _r(m.ci95[0]), "hi": _r(m.ci95[1])}


def _paired(p: Paired) -> dict:
    return {"diff": _r(p.diff), "lo": _r(p.ci95[0]), "hi": _r(p.ci95[1]), "p": _r(p.p_value)}


def _condition_key(name: str) -> tuple[int, str]:
    return (CONDITION_ORDER.index(name) if name in CONDITION_ORDER else len(CONDITION_ORDER), name)


def _layer_curve(task: TaskResult, headline: str | None) -> dict | None:
    """A --layers run's headline at each layer in forward order, each with its change from the layer before,
    and the reference levels the task has."""
    conditions = conditions_of(task)
    layers = sorted((n for n, c in conditions.items() if c.role == "layer" and headline in c.metrics), key=layer_order)
    if not layers:
        return None
    points = []
    for before, name in zip([None, *layers], layers):
        step = task.comparisons.get(f"{name}_vs_{before}")
        points.append({"name": name, **_interval(conditions[name].metrics[headline]),
                       "step": _paired(step) if step else None})
    levels = {name: _r(conditions[name].metrics[headline].mean) for name in LEVELS
              if name in conditions and headline in conditions[name].metrics}
    return {"headline": headline, "layers": points, "levels": levels}


def _merge(sources: list[Source]) -> tuple[list[dict], dict[str, _Model]]:
    """Files of the same model (say, one run per task group) merge into one model; a task given twice is refused."""
    cards: list[dict] = []
    models: dict[str, _Model] = {}
    for i, src in enumerate(sources):
        r = src.result
        name = r.model.name
        if name not in models:
            cards.append({"name": name, "family": r.model.family, "checkpoint": r.checkpoint,
                          "description": r.model.description.strip(), "point": r.point, "sources": []})
            models[name] = _Model(card_index=len(cards) - 1)
        model = models[name]
        card = cards[model.card_index]
        if card["checkpoint"] != r.checkpoint:
            first = sources[model.sources[0]].path
            raise SpatialbenchError(
                f"model '{name}' comes from two checkpoints: '{card['checkpoint']}' in {first} and '{r.checkpoint}'",
                file=src.path, field="checkpoint", fix="give each checkpoint its own model card name")
        model.sources.append(i)
        card["sources"].append(i)
        for task_name, task in r.tasks.items():
            if task_name in model.tasks:
                first = sources[model.tasks[task_name][0]].path
                raise SpatialbenchError(f"task '{task_name}' of model '{name}' is also in {first}",
                                        file=src.path, field=f"tasks.{task_name}",
                                        fix="pass one results file per model and task")
            model.tasks[task_name] = (i, task)
    return cards, models


def _source_info(src: Source) -> dict:
    r = src.result
    return {"file": src.path, "model": r.model.name, "created_at": r.created_at, "command": r.command,
            "tool_version": r.tool_version, "git_hash": r.git_hash, "schema_version": r.schema_version,
            "seeds": r.seeds, "limit": r.limit, "device": r.device, "resampler_lr": r.resampler_lr}


def _task_columns(names: set[str], tasks: dict, known: dict[str, dict]) -> list[dict]:
    columns = []
    for name in sorted(names):
        info = known.get(name, {})
        kinds = sorted({t.kind for t in tasks[name]})
        columns.append({"name": name, "kind": info.get("kind") or kinds[0], "version": info.get("version"),
                        "headline": None, "groups": info.get("groups") or [OTHER_GROUP],
                        "known": bool(info), "chance": None})
    return columns


def _win_shares(rows: list[dict], task: str) -> None:
    """Each model row's share of the other model rows it beats on this task; ties count half.

    Baselines are left out on both sides: an oracle beating every model says nothing about the models."""
    scored = sorted((r["cells"][task]["mean"], i) for i, r in enumerate(rows)
                    if task in r["cells"] and r["role"] == "regime")
    n = len(scored)
    start = 0
    while start < n:  # walk runs of equal scores
        end = start
        while end < n and scored[end][0] == scored[start][0]:
            end += 1
        ties = end - start - 1
        for _, i in scored[start:end]:
            rows[i]["cells"][task]["win"] = _r((start + 0.5 * ties) / (n - 1)) if n > 1 else None
        start = end


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return _r(sum(values) / len(values)) if values else None


def build_data(sources: list[Source], known: dict[str, dict] | None = None, title: str = "spatialbench") -> dict:
    """The page's data. `known` maps registry task names to {kind, version, groups, headline}."""
    known = known or {}
    cards, models = _merge(sources)
    by_task: dict[str, list[TaskResult]] = {}
    for model in models.values():
        for name, (_, task) in model.tasks.items():
            by_task.setdefault(name, []).append(task)
    columns = _task_columns(set(by_task), by_task, known)
    rows: list[dict] = []
    for model in models.values():
        rows += _model_rows(model, cards[model.card_index], known)
    for col in columns:
        name = col["name"]
        _win_shares(rows, name)
        chances = [r["cells"][name]["chance"] for r in rows if name in r["cells"]]
        chances = [c for c in chances if c is not None]
        col["chance"] = [_r(min(chances)), _r(max(chances))] if chances else None
        headlines = sorted({h for t in by_task[name] if (h := headline_of(t, known.get(name, {}).get("headline")))})
        col["headline"] = "/".join(headlines) or None
    for row in rows:
        cells = row["cells"].values()
        row["limited"] = any(sources[i].result.limit is not None for i in row["sources"])
        row["average"] = _mean([c["mean"] for c in cells])
        row["average_norm"] = _mean([normalise(c["mean"], c["chance"]) for c in cells])
        row["win_rate"] = _mean([c["win"] for c in cells])
        gaps = cards[row["model"]]["gap"] if row["role"] == "regime" else {}
        row["gap_mean"] = _mean([g["diff"] for g in gaps.values()])
        row["selectivity_mean"] = _mean([s["diff"] for s in row["selectivity"].values()])
        row["recovered_mean"] = _mean([r["value"] for r in row["recovered"].values()])
    groups = sorted({g for col in columns for g in col["groups"]})
    return {
        "format": 1, "title": title, "tool_version": __version__,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": [_source_info(s) for s in sources], "models": cards, "tasks": columns, "groups": groups,
        "families": sorted({c["family"] for c in cards}),
        "conditions": sorted({r["condition"] for r in rows}, key=_condition_key), "rows": rows,
    }


def _model_rows(model: _Model, card: dict, known: dict[str, dict]) -> list[dict]:
    """One row per condition of this model. The frozen->joint gap, the layer curves and failed tasks belong to
    the model (card)."""
    rows: dict[str, dict] = {}
    gaps: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    for name, (source, task) in model.tasks.items():
        if task.status != "ok":
            continue
        headline = headline_of(task, known.get(name, {}).get("headline"))
        chance = task.chance.get(headline) if headline else None
        if "joint_vs_frozen" in task.comparisons:
            gaps[name] = _paired(task.comparisons["joint_vs_frozen"])
        if (curve := _layer_curve(task, headline)) is not None:
            curves[name] = curve
        for cond_name, cond in conditions_of(task).items():
            if cond.role == "layer":  # a layer is a point on the model's layer curve, not a row of the board
                continue
            row = rows.setdefault(cond_name, {
                "model": model.card_index, "condition": cond_name, "role": cond.role, "limited": False,
                "cells": {}, "selectivity": {}, "control": {}, "recovered": {}, "by_group": {}, "sources": []})
            if source not in row["sources"]:
                row["sources"].append(source)
            metric = cond.metrics.get(headline) if headline else None
            if metric is None:
                continue
            row["cells"][name] = {**_interval(metric), "chance": _r(chance), "win": None}
            if cond.recovered is not None:  # the share of the blind-to-oracle headroom
                row["recovered"][name] = {"value": _r(cond.recovered.value), "lo": _r(cond.recovered.ci95[0]),
                                          "hi": _r(cond.recovered.ci95[1])}
            if cond.selectivity is not None:
                row["selectivity"][name] = _paired(cond.selectivity)
            if cond.control is not None:
                row["control"][name] = _interval(cond.control)
            if cond.by_group:
                row["by_group"][name] = {key: {value: [g.n, _r(g.mean)] for value, g in values.items()}
                                         for key, values in cond.by_group.items()}
    card["failed"] = {name: task.error or "failed" for name, (_, task) in model.tasks.items() if task.status != "ok"}
    card["gap"] = gaps
    card["layers"] = curves
    return [rows[name] for name in sorted(rows, key=_condition_key)]
