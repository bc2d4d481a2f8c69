"""Probe fits per second: a task's default grid (seeds x lr) trained as one group (probing/group.py)
against the same fits one at a time (probing/fit.py's fit), on one synthetic task's real features.

    python benchmarks/fits.py [--task synth_relation] [--card blip2-pretrained] [--seeds 3] [--epochs N]
                              [--cache-dir DIR] [--device cpu]

Both sides read the same ProbeInputs (built as a run builds them, from a feature cache it fills first) and
train the same members: the one-at-a-time side first, then the group, in this process. Prints one JSON:
seconds of each side, fits per second, their ratio, and per member its lr, best epoch and test headline on
both sides (and per seed the lr selected on validation).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from accelerate import Accelerator

from spatialbench.adapters.families import get_family
from spatialbench.data.sources import DataContext, load_task_data
from spatialbench.features import FeatureStore
from spatialbench.probing import conditions
from spatialbench.probing.fit import fit, score
from spatialbench.probing.group import Member, fit_group
from spatialbench.probing.inputs import build_inputs, feature_requests
from spatialbench.registry import TaskRegistry, resolve_card


def task_inputs(task_name: str, card_name: str, cache_dir: Path, device: str, task=None):
    """A task's ProbeInputs as a run builds them (`task`: a TaskSpec in place of the named shipped task)."""
    card = resolve_card(card_name)
    adapter = get_family(card.family).load(card, device=device, cache_dir=cache_dir)
    task = task or TaskRegistry().get(task_name)
    data = load_task_data(task, None, DataContext.from_flags(None, None))
    store = FeatureStore(adapter, cache_dir, dtype=torch.bfloat16)
    store.ensure(feature_requests(task, data, adapter))
    return task, build_inputs(task, data, store, adapter)


def measure(task, inputs, seeds: int, accelerator: Accelerator, epochs: int | None = None) -> dict:
    spec = task.probe if epochs is None else task.probe.model_copy(update={"epochs": epochs,
                                                                           "patience": min(epochs, task.probe.patience)})
    members = [Member(inputs, seed, lr) for seed in range(seeds) for lr in spec.lr]
    test = inputs.splits["test"]
    start = time.perf_counter()
    alone = [fit(m.inputs, spec, m.seed, task.headline, accelerator, lr=m.lr) for m in members]
    one_at_a_time = time.perf_counter() - start
    start = time.perf_counter()
    grouped = fit_group(members, spec, task.headline, accelerator)
    group = time.perf_counter() - start
    rows = []
    for m, a, g in zip(members, alone, grouped):
        rows.append({"seed": m.seed, "lr": m.lr, "alone_best_epoch": a.best_epoch, "group_best_epoch": g.best_epoch,
                     "alone_test": score(task.headline, a.test_pred, test, inputs.box),
                     "group_test": score(task.headline, g.test_pred, test, inputs.box)})
    selected = {s: (conditions.select([f for f in alone if f.seed == s]).lr,
                    conditions.select([f for f in grouped if f.seed == s]).lr) for s in range(seeds)}
    worst = max(abs(r["alone_test"] - r["group_test"]) for r in rows)
    return {"task": task.name, "members": len(members), "epochs": spec.epochs, "patience": spec.patience,
            "one_at_a_time_s": round(one_at_a_time, 2), "group_s": round(group, 2),
            "speedup": round(one_at_a_time / group, 3), "max_test_difference": round(worst, 5),
            "same_selected_lr": all(a == b for a, b in selected.values()), "selected_lr": selected, "members_detail": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="synth_relation")
    parser.add_argument("--card", default="blip2-pretrained")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="fewer epochs than the task's (a quick look)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("SPATIALBENCH_CACHE", "~/.cache/spatialbench")).expanduser())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    task, inputs = task_inputs(args.task, args.card, args.cache_dir, args.device)
    accelerator = Accelerator(cpu=args.device == "cpu")
    print(json.dumps(measure(task, inputs, args.seeds, accelerator, args.epochs), indent=2))


if __name__ == "__main__":
    main()
