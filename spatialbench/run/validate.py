"""`spatialbench validate`: what a run would refuse in task YAMLs and model cards, found without loading a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..adapters.families import check_card
from ..errors import SpatialbenchError, ValidationErrors
from ..registry import ModelRegistry, TaskRegistry, load_spec, yaml_files
from ..specs import ModelCard, TaskSpec, unpinned
from ..yamlio import read_yaml


@dataclass
class Validation:
    checked: int = 0
    problems: list[SpatialbenchError] = field(default_factory=list)
    unpinned: list[tuple[Path, ModelCard]] = field(default_factory=list)  # Hub cards at a branch, not a commit


def validate(files: list[Path]) -> Validation:
    """Check `files` (task YAMLs, model cards, or directories of them), or every built-in one when none given."""
    out = Validation()
    cards: dict[Path, ModelCard] = {}  # checked once parsed: family, options, pinned revision
    if not files:
        for registry in (TaskRegistry, ModelRegistry):
            try:
                loaded = registry()
                loaded.check()
                out.checked += len(loaded.names())
                if registry is ModelRegistry:
                    cards.update({loaded.files[n]: loaded.get(n) for n in loaded.names()})
            except ValidationErrors as e:
                out.problems += e.errors
    for path in [f for path in files for f in (yaml_files([path]) if path.is_dir() else [path])]:
        try:
            kind = ModelCard if "family" in read_yaml(path) else TaskSpec
            spec = load_spec(path, kind)
            out.checked += 1
            if kind is ModelCard:
                cards[path] = spec
        except ValidationErrors as e:
            out.problems += e.errors
        except SpatialbenchError as e:
            out.problems.append(e)
    for path, card in cards.items():  # what a run would refuse: an unknown family, options it does not take
        try:
            check_card(card, str(path))
        except ValidationErrors as e:
            out.problems += e.errors
        except SpatialbenchError as e:
            out.problems.append(e)
    out.unpinned = [(path, card) for path, card in cards.items() if unpinned(card)]
    return out
