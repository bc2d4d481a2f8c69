"""Fetch a card's Hub checkpoint ahead of a run: its metadata, and only the weight files holding the tensors
extraction reads (the family's own selection, read from the repo's index), so a node with no network can
then run with HF_HUB_OFFLINE=1. A 7B model's decoder shards are most of its bytes and are never fetched."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpatialbenchError
from ..specs import ModelCard
from .base import CheckpointAdapter
from .families import get_family
from .loading import LAYOUTS, _from_hub

WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class DownloadPlan:
    repo: str
    revision: str
    commit: str  # what `revision` resolved to: pin it in the card
    root: Path  # the snapshot directory (metadata already fetched)
    needed: dict[str, int | None]  # weight file -> bytes (None: size unknown offline)
    not_needed: dict[str, int | None]

    @property
    def needed_bytes(self) -> int:
        return sum(v or 0 for v in self.needed.values())

    @property
    def total_bytes(self) -> int | None:
        sizes = [*self.needed.values(), *self.not_needed.values()]
        return None if None in sizes else sum(sizes)


def plan_download(card: ModelCard) -> DownloadPlan:
    """Metadata fetched (small) and the weight files extraction needs, by the family's own selection."""
    from transformers import AutoConfig

    if card.checkpoint.startswith("tiny:") or Path(card.checkpoint).expanduser().is_dir():
        raise SpatialbenchError(f"card '{card.name}' has checkpoint '{card.checkpoint}', which is not a Hub repo: "
                                "there is nothing to download", field="checkpoint")
    root = _from_hub(card.checkpoint, card.revision).root
    sizes = _file_sizes(card.checkpoint, root.name, root)
    weights = {f: s for f, s in sizes.items() if f.endswith(WEIGHT_SUFFIXES)}
    weight_map = _weight_map(root, weights)
    family = get_family(card.family)
    if weight_map is not None and issubclass(family, CheckpointAdapter):
        _, wanted, _, _ = family.select(AutoConfig.from_pretrained(root), weight_map)
        files = {weight_map[k] for k in wanted}
    else:  # one weight file, or a family that loads the whole model (generic): every file of the chosen layout
        files = set(weight_map.values()) if weight_map is not None else {_single(weights, card)}
    # The chosen layout's files (a repo may also hold the other layout, never read); offline only cached ones have a size.
    every = set(weight_map.values()) if weight_map is not None else files
    return DownloadPlan(card.checkpoint, card.revision, root.name, root,
                        {f: weights.get(f) for f in sorted(files)},
                        {f: weights.get(f) for f in sorted(every - files)})


def fetch(plan: DownloadPlan, progress=lambda name: None) -> list[Path]:
    """Fetch the needed weight files into the Hugging Face cache (already cached files are not fetched again)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    paths = []
    for name in plan.needed:
        progress(name)
        try:
            paths.append(Path(hf_hub_download(plan.repo, name, revision=plan.commit)))
        except LocalEntryNotFoundError:
            raise SpatialbenchError(f"'{name}' of '{plan.repo}' is not cached and the Hub cannot be reached",
                                    field="checkpoint", fix="run `spatialbench download` where there is network") from None
        except (HfHubHTTPError, OSError) as e:
            raise SpatialbenchError(f"cannot fetch '{name}' of '{plan.repo}': {e}", field="checkpoint") from None
    return paths


def _file_sizes(repo: str, commit: str, root: Path) -> dict[str, int | None]:
    """Every file of the repo at `commit` with its size: from the Hub, or (offline) from what the cache holds."""
    from huggingface_hub import HfApi, constants

    if not constants.HF_HUB_OFFLINE:
        try:
            info = HfApi().model_info(repo, revision=commit, files_metadata=True)
            return {s.rfilename: s.size for s in info.siblings or []}
        except Exception:  # noqa: BLE001 - no network after all: fall back to the cache, sizes then partial
            pass
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _weight_map(root: Path, weights: dict) -> dict[str, str] | None:
    """The repo's weight map from its index (safetensors preferred, as from_pretrained prefers it); None without one."""
    for index, single in LAYOUTS:
        if (root / index).is_file():
            return json.loads((root / index).read_text())["weight_map"]
        if single in weights:
            return None
    return None


def _single(weights: dict, card: ModelCard) -> str:
    for _, single in LAYOUTS:
        if single in weights:
            return single
    if not weights:  # offline, nothing cached but metadata: the file list is not known here
        raise SpatialbenchError(f"checkpoint '{card.checkpoint}' has no index, and which single weight file it has is "
                                "not known offline", field="checkpoint", fix="run `spatialbench download` online")
    raise SpatialbenchError(f"checkpoint '{card.checkpoint}' has no weight file this tool reads ({sorted(weights)[:5]})",
                            field="checkpoint", fix=f"it needs one of {[n for pair in LAYOUTS for n in pair]}")

