"""Turn a task's examples plus cached visual prompts into the tensors a probe trains on."""

from __future__ import annotations

import numpy as np
import torch

from ..adapters.base import Adapter
from ..data.examples import Example, TaskData
from ..features import FeatureStore, Request
from ..specs import TaskSpec
from .fit import ProbeInputs, Split, Texts
from .visual import standardised
from .heads import ProbeShape

def n_outputs(task: TaskSpec, data: TaskData) -> int:
    return 4 if task.target == "box" else len(data.classes or [])


def probe_shape(task: TaskSpec, data: TaskData, adapter: Adapter) -> ProbeShape:
    """What the probe reads and writes, from the task, its data and the adapter's declared shapes alone
    (nothing extracted), so a probe's size can be checked before any work."""
    q, d = adapter.prompt_shape
    if task.implicit:
        return ProbeShape(q, d, n_outputs(task, data), text_dim=adapter.text_dim)
    slots = len(data.splits["train"][0].query)
    return ProbeShape(q, d, n_outputs(task, data), n_categories=len(data.categories or []), n_slots=slots)


def conditions_on_text(task: TaskSpec, adapter: Adapter) -> bool:
    """Whether this task's query text goes into the resampler (InstructBLIP's instruction)."""
    return (adapter.reads_text and task.implicit and adapter.point != "vision_patches"
            and adapter.card.options.get("text_conditioning", True))


def _feature_key(task: TaskSpec, adapter: Adapter, ex: Example) -> tuple[str, str | None]:
    return ex.image_id, (ex.query if conditions_on_text(task, adapter) else None)


def feature_requests(task: TaskSpec, data: TaskData, adapter: Adapter) -> list[Request]:
    """One (image content, text, loader) per distinct visual prompt the task needs."""
    seen: dict[tuple[str, str | None], Request] = {}
    for items in data.splits.values():
        for ex in items:
            image_id, text = _feature_key(task, adapter, ex)
            if (image_id, text) not in seen:
                seen[(image_id, text)] = (data.images.content_key(image_id), text,
                                          lambda d=data, i=image_id: d.images.load(i))
    return list(seen.values())


def build_inputs(task: TaskSpec, data: TaskData, store: FeatureStore, adapter: Adapter) -> ProbeInputs:
    rows: dict[tuple[str, str | None], int] = {}
    for items in data.splits.values():
        for ex in items:
            rows.setdefault(_feature_key(task, adapter, ex), len(rows))
    features = store.rows([(data.images.content_key(image_id), text) for image_id, text in rows])
    images = {image_id: i for i, image_id in enumerate(dict.fromkeys(image_id for image_id, _ in rows))}
    texts: dict[str, int] = {}
    if task.implicit:
        for items in data.splits.values():
            for ex in items:
                texts.setdefault(ex.query, len(texts))

    def split(items: list[Example]) -> Split:
        if task.implicit:
            query = torch.tensor([texts[ex.query] for ex in items], dtype=torch.long)
        else:
            query = torch.tensor([list(ex.query) for ex in items], dtype=torch.long)
        dtype = torch.float32 if task.target == "box" else torch.long
        return Split(
            image=torch.tensor([rows[_feature_key(task, adapter, ex)] for ex in items], dtype=torch.long),
            query=query,
            target=torch.tensor([ex.target for ex in items], dtype=dtype),
            sizes=np.array([ex.image_size for ex in items], dtype=np.float64),
            texts=[ex.query for ex in items] if conditions_on_text(task, adapter) else None,
            cluster=torch.tensor([images[ex.image_id] for ex in items], dtype=torch.long),
        )

    splits = {name: split(items) for name, items in data.splits.items()}
    text = Texts.embedded(adapter.embed_text, list(texts)) if task.implicit else None
    shape = probe_shape(task, data, adapter)  # the store may hold a smaller tensor on the path, mapped per batch
    finish = adapter.finish if store.point != adapter.point else None
    visual = standardised(features, splits["train"].image, finish, (len(features), shape.n_tokens, shape.dim))
    inputs = ProbeInputs(visual, splits, shape, task.target == "box", text)
    inputs.row_keys = [(data.images.content_key(image_id), text) for image_id, text in rows]
    inputs.row_images = [image_id for image_id, _ in rows]
    return inputs
