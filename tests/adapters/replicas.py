"""Tiny replicas of the nine shipped real checkpoints, in the layout the Hub serves them, in an offline HF cache.

Each replica starts from a tiny checkpoint built in code (tiny widths, the same architecture) and rewrites it
into its Hub repo's layout: the weight-file kind, names and count, the tensor names the Hub files hold (the
legacy 4.x names where the repo still has them, stored copies of buffers 5.x no longer saves, a tied
embedding under the name the repo stores it by) and the image processor as a top-level
`preprocessor_config.json` with the fields the repo's file has. It is installed as a snapshot of the card's
own repo id, so a card reaches it through the Hub code path (snapshot_download, hf_hub_download) offline.

Shard counts follow the repos' file lists as we know them; the tensors are split over them in module order,
as save_pretrained fills shards, so the decoder's last layers sit in shards extraction never needs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from spatialbench.adapters import loading
from spatialbench.adapters.tiny.builds import materialise

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the snapshot every replica is installed under


def _legacy_llava(key: str) -> str:
    """llava-hf/llava-1.5-7b-hf keeps CLIPVisionModel's own `vision_model.` inside the tower."""
    return "vision_tower.vision_model." + key.removeprefix("vision_tower.") if key.startswith("vision_tower.") else key


def _position_ids(embeddings: str, positions_of: str) -> Callable[[dict], dict]:
    """The position_ids buffer of an embeddings module, stored as checkpoints written by transformers 4.x hold it."""

    def add(tensors: dict) -> dict:
        n = tensors[positions_of].shape[0]
        return {f"{embeddings}.position_ids": torch.arange(n)[None].contiguous()}

    return add


@dataclass(frozen=True)
class Replica:
    repo: str
    tiny: str  # the tiny build it is made from
    files: int  # weight files in the repo
    weights: str = "safetensors"  # or "bin"
    rename: Callable[[str], str] = lambda key: key
    add: Callable[[dict], dict] = lambda tensors: {}
    image_processor: dict = field(default_factory=dict)  # fields the repo's preprocessor_config.json sets


T5_SHARED = "language_model.shared.weight"
REPLICAS = {
    "blip2": Replica("Salesforce/blip2-opt-2.7b", "blip2-tiny", 2,
                     image_processor={"processor_class": "Blip2Processor"}),
    # Stores its tied T5 table only as the encoder's embed_tokens.
    "blip2-flant5xl": Replica("Salesforce/blip2-flan-t5-xl", "blip2-t5-tiny", 2,
                              rename=lambda k: "language_model.encoder.embed_tokens.weight" if k == T5_SHARED else k,
                              image_processor={"processor_class": "Blip2Processor"}),
    "instructblip": Replica("Salesforce/instructblip-vicuna-7b", "instructblip-tiny", 4,
                            add=_position_ids("qformer.embeddings", "qformer.embeddings.position_embeddings.weight"),
                            image_processor={"processor_class": "InstructBlipProcessor"}),
    "instructblip-flant5xl": Replica(
        "Salesforce/instructblip-flan-t5-xl", "instructblip-t5-tiny", 2,
        add=_position_ids("qformer.embeddings", "qformer.embeddings.position_embeddings.weight"),
        image_processor={"processor_class": "InstructBlipProcessor"}),
    # One weight file, and the CLIP processor config with Kosmos-2's use_square_size.
    "kosmos2": Replica("microsoft/kosmos-2-patch14-224", "kosmos2-224-tiny", 1,
                       image_processor={"processor_class": "Kosmos2Processor", "use_square_size": True}),
    "llava": Replica("llava-hf/llava-1.5-7b-hf", "llava-tiny", 3, rename=_legacy_llava,
                     image_processor={"processor_class": "LlavaProcessor"}),
    "idefics": Replica("HuggingFaceM4/idefics-9b", "idefics-tiny", 2,
                       add=_position_ids("model.vision_model.embeddings",
                                         "model.vision_model.embeddings.position_embedding.weight"),
                       image_processor={"processor_class": "IdeficsProcessor"}),
    "idefics-80b": Replica("HuggingFaceM4/idefics-80b", "idefics-tiny", 17,
                           add=_position_ids("model.vision_model.embeddings",
                                             "model.vision_model.embeddings.position_embedding.weight"),
                           image_processor={"processor_class": "IdeficsProcessor"}),
    "idefics2": Replica("HuggingFaceM4/idefics2-8b", "idefics2-tiny", 4,
                        image_processor={"processor_class": "Idefics2Processor"}),
}


def install(name: str, hub_cache: Path, tiny_cache: Path, replica: Replica | None = None) -> Path:
    """Build card `name`'s replica (or `replica` under its repo id) into the Hub cache `hub_cache`; returns its
    snapshot directory."""
    replica = replica or REPLICAS[name]
    source = materialise(replica.tiny, tiny_cache)
    repo = hub_cache / ("models--" + replica.repo.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    if snapshot.is_dir():
        return snapshot
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for p in source.iterdir():
        if p.name == loading.INDEX or p.suffix == ".safetensors":
            continue
        (shutil.copytree if p.is_dir() else shutil.copy)(p, snapshot / p.name)
    _write_weights(replica, _tensors_in_module_order(source), snapshot)
    _write_image_processor(replica, snapshot)
    return snapshot


def _tensors_in_module_order(source: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a save_pretrained checkpoint, in the order its shards were filled."""
    index = json.loads((source / loading.INDEX).read_text())["weight_map"]
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index.values())):
        out.update(load_file(str(source / shard)))
    return out


def _write_weights(replica: Replica, tensors: dict[str, torch.Tensor], out: Path) -> None:
    tensors = {replica.rename(k): v for k, v in tensors.items()}
    extra = replica.add(tensors)
    for k, v in extra.items():  # a stored buffer sits beside its module's other tensors
        anchor = next(i for i, key in enumerate(tensors) if key.startswith(k.rsplit(".", 1)[0]))
        items = list(tensors.items())
        tensors = dict(items[:anchor] + [(k, v)] + items[anchor:])
    keys = list(tensors)
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    bounds = [total * (i + 1) / replica.files for i in range(replica.files)]
    groups: list[list[str]] = [[] for _ in range(replica.files)]
    done = 0
    for k in keys:  # fill each file to its share of the bytes, in order
        i = next(i for i, b in enumerate(bounds) if done < b or i == replica.files - 1)
        groups[i].append(k)
        done += tensors[k].numel() * tensors[k].element_size()
    single = loading.SINGLE if replica.weights == "safetensors" else loading.BIN_SINGLE
    stem, suffix = single.split(".", 1)
    names = [single] if replica.files == 1 else [f"{stem}-{i + 1:05d}-of-{replica.files:05d}.{suffix}"
                                                 for i in range(replica.files)]
    weight_map = {}
    for name, group in zip(names, groups):
        part = {k: tensors[k].contiguous() for k in group}
        if replica.weights == "safetensors":
            save_file(part, str(out / name), metadata={"format": "pt"})
        else:
            torch.save(part, out / name)
        weight_map.update(dict.fromkeys(group, name))
    if replica.files > 1:
        index = loading.INDEX if replica.weights == "safetensors" else loading.BIN_INDEX
        (out / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _write_image_processor(replica: Replica, out: Path) -> None:
    """As 4.x wrote it: a top-level preprocessor_config.json, none nested in processor_config.json."""
    processor_path, image_path = out / "processor_config.json", out / "preprocessor_config.json"
    processor = json.loads(processor_path.read_text()) if processor_path.is_file() else {}
    image = processor.pop("image_processor", None) or json.loads(image_path.read_text())
    image.update(replica.image_processor)
    image_path.write_text(json.dumps(image, indent=2))
    if processor:
        processor_path.write_text(json.dumps(processor, indent=2))
    elif processor_path.is_file():
        processor_path.unlink()


def weight_files(snapshot: Path) -> list[str]:
    return sorted(p.name for p in snapshot.iterdir() if p.suffix in (".safetensors", ".bin"))
