"""Turn a task's examples plus cached visual prompts into the tensors a probe trains on."""

from __future__ import annotations

import numpy as np
import torch

from .adapters.base import Adapter
from .data.examples import Example, TaskData
from .features import FeatureStore
from .probes import ProbeShape
from .specs import TaskSpec
from .train import ProbeInputs, Split, standardise

TEXT_BATCH = 256


def n_outputs(task: TaskSpec, data: TaskData) -> int:
    return 4 if task.target == "box" else len(data.classes or [])


def embed_texts(adapter: Adapter, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen LLM embeddings of every distinct query text, padded to one length: [T, L, Dt], [T, L]."""
    chunks = [adapter.embed_text(texts[i:i + TEXT_BATCH]) for i in range(0, len(texts), TEXT_BATCH)]
    length = max(e.shape[1] for e, _ in chunks)
    emb = torch.cat([torch.nn.functional.pad(e.float().cpu(), (0, 0, 0, length - e.shape[1])) for e, _ in chunks])
    mask = torch.cat([torch.nn.functional.pad(m.cpu(), (0, length - m.shape[1])) for _, m in chunks])
    return emb, mask


def build_inputs(task: TaskSpec, data: TaskData, store: FeatureStore, adapter: Adapter) -> ProbeInputs:
    image_ids = data.image_ids()
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    features = store.load([data.images.content_key(i) for i in image_ids])
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
            image=torch.tensor([row[ex.image_id] for ex in items], dtype=torch.long),
            query=query,
            target=torch.tensor([ex.target for ex in items], dtype=dtype),
            sizes=np.array([ex.image_size for ex in items], dtype=np.float64),
        )

    splits = {name: split(items) for name, items in data.splits.items()}
    q, d = features.shape[1:]
    if task.implicit:
        text, mask = embed_texts(adapter, list(texts))
        shape = ProbeShape(q, d, n_outputs(task, data), text_dim=text.shape[-1])
    else:
        text = mask = None
        slots = len(data.splits["train"][0].query)
        shape = ProbeShape(q, d, n_outputs(task, data), n_categories=len(data.categories or []), n_slots=slots)
    return ProbeInputs(standardise(features, splits["train"].image), splits, shape, task.target == "box", text, mask)
