"""Which adapter family a card's `family` names: the built-in families, listed here, and third-party ones
from the `spatialbench.adapters` entry point (docs/adding-a-model.md), found in one function."""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points

from ..errors import SpatialbenchError
from ..specs import ModelCard
from .base import Adapter, card_options
from .blip2 import Blip2Adapter
from .generic import GenericAdapter
from .idefics import IdeficsAdapter
from .idefics2 import Idefics2Adapter
from .instructblip import InstructBlipAdapter
from .kosmos2 import Kosmos2Adapter
from .llava import LlavaAdapter

ENTRY_POINT_GROUP = "spatialbench.adapters"
BUILTIN: tuple[type[Adapter], ...] = (Blip2Adapter, GenericAdapter, IdeficsAdapter, Idefics2Adapter,
                                      InstructBlipAdapter, Kosmos2Adapter, LlavaAdapter)
ADDED: dict[str, type[Adapter]] = {}  # families defined in a test or a notebook: families() lists them too


def families() -> dict[str, type[Adapter]]:
    """Every family by name; a third-party family whose package fails to import is listed as the error it
    raised, so the others still load and asking for it says why (get_family)."""
    found: dict[str, type[Adapter] | SpatialbenchError] = {cls.family: cls for cls in BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found:
            continue
        try:
            loaded = ep.load()
        except Exception as e:  # a broken third-party package must not hide the other families
            found[ep.name] = SpatialbenchError(
                f"adapter family '{ep.name}' from entry point {ep.value} failed to import: {e}",
                fix=f"fix or uninstall the package that provides '{ep.value}'")
            continue
        if isinstance(loaded, type) and issubclass(loaded, Adapter):
            loaded.family = loaded.family or ep.name
            found[ep.name] = loaded
    return {**ADDED, **found}


def installed() -> dict[str, type[Adapter]]:
    """The families that loaded."""
    return {name: f for name, f in families().items() if not isinstance(f, SpatialbenchError)}


def get_family(name: str) -> type[Adapter]:
    known = families()
    if isinstance(known.get(name), SpatialbenchError):
        raise known[name]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known families: {', '.join(sorted(known))}"
        raise SpatialbenchError(f"unknown adapter family '{name}'", field="family", fix=hint)
    return known[name]


def check_card(card: ModelCard, file: str | None = None) -> None:
    """What `validate` can say of a card without loading anything: its family exists and takes its options."""
    try:
        family = get_family(card.family)
    except SpatialbenchError as e:
        raise SpatialbenchError(e.message, file=file, field="family", fix=e.fix) from None
    card_options(family, card, file)
