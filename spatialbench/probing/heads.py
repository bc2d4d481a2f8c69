"""Probe heads over a visual prompt and a query: linear, mlp and attention.

Every probe takes the visual prompt [B, Q, D] and a query, either explicit (category ids [B, S], one
per slot: the object, or subject and object) or implicit (frozen LLM token embeddings [B, L, Dt] with
a mask), and returns [B, n_out]: class logits, or a box (cx, cy, w, h squashed to [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..specs import ProbeSpec


@dataclass(frozen=True)
class ProbeShape:
    """What the probe reads and writes, fixed by the adapter and the task."""

    n_tokens: int  # Q
    dim: int  # D
    n_out: int
    n_categories: int = 0  # explicit queries: vocabulary size
    n_slots: int = 0  # explicit queries: ids per item
    text_dim: int = 0  # implicit queries: LLM embedding width


class QueryEncoder(nn.Module):
    """Queries as tokens of width `width`: learned category embeddings, or projected text embeddings."""

    def __init__(self, shape: ProbeShape, width: int):
        super().__init__()
        self.explicit = shape.n_slots > 0
        if self.explicit:
            self.categories = nn.Embedding(shape.n_categories, width)
            self.slots = nn.Parameter(torch.randn(shape.n_slots, width) * 0.02)  # subject vs object
        else:
            self.text = nn.Linear(shape.text_dim, width)

    def forward(self, query: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.explicit:
            tokens = self.categories(query) + self.slots
            return tokens, torch.ones(query.shape, dtype=torch.bool, device=query.device)
        return self.text(query), mask.bool()

    def pooled(self, query: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        tokens, keep = self(query, mask)
        if self.explicit:
            return tokens.flatten(1)  # slots stay apart: "red left of blue" is not "blue left of red"
        keep = keep.unsqueeze(-1).to(tokens.dtype)
        return (tokens * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    def pooled_dim(self, shape: ProbeShape, width: int) -> int:
        return width * shape.n_slots if self.explicit else width


class FlatProbe(nn.Module):
    """[flatten(visual prompt); pooled query] -> hidden layers -> out. depth 0 is the linear probe."""

    def __init__(self, shape: ProbeShape, spec: ProbeSpec, hidden_layers: int):
        super().__init__()
        self.query = QueryEncoder(shape, spec.width)
        size = shape.n_tokens * shape.dim + self.query.pooled_dim(shape, spec.width)
        layers: list[nn.Module] = []
        for _ in range(hidden_layers):
            layers += [nn.Linear(size, spec.width), nn.GELU(), nn.Dropout(spec.dropout)]
            size = spec.width
        layers.append(nn.Linear(size, shape.n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, visual: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([visual.flatten(1), self.query.pooled(query, mask)], dim=1))


class AttentionProbe(nn.Module):
    """A small transformer over [CLS; visual tokens; query tokens], read out at CLS."""

    def __init__(self, shape: ProbeShape, spec: ProbeSpec):
        super().__init__()
        w = spec.width
        self.visual = nn.Linear(shape.dim, w)
        self.positions = nn.Parameter(torch.randn(shape.n_tokens, w) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, w) * 0.02)
        self.query = QueryEncoder(shape, w)
        layer = nn.TransformerEncoderLayer(
            w, spec.heads, 2 * w, spec.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, spec.depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, shape.n_out))

    def forward(self, visual: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b = visual.shape[0]
        q_tokens, q_keep = self.query(query, mask)
        tokens = torch.cat([self.cls.expand(b, -1, -1), self.visual(visual) + self.positions, q_tokens], dim=1)
        keep = torch.cat([torch.ones(b, 1 + visual.shape[1], dtype=torch.bool, device=visual.device), q_keep], 1)
        return self.head(self.encoder(tokens, src_key_padding_mask=~keep)[:, 0])


_PROBES: dict[str, Callable[[ProbeShape, ProbeSpec], nn.Module]] = {
    "linear": lambda shape, spec: FlatProbe(shape, spec, hidden_layers=0),
    "mlp": lambda shape, spec: FlatProbe(shape, spec, hidden_layers=spec.depth),
    "attention": AttentionProbe,
}


def build_probe(shape: ProbeShape, spec: ProbeSpec) -> nn.Module:
    return _PROBES[spec.architecture](shape, spec)


def to_box(raw: torch.Tensor) -> torch.Tensor:
    """Raw [B, 4] outputs -> valid normalised (x0, y0, x1, y1) boxes: centre and size squashed to [0, 1]."""
    cx, cy, w, h = raw.sigmoid().unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0.0, 1.0)


def box_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 plus generalised-IoU loss on normalised boxes: L1 alone under-weights small boxes."""
    l1 = (pred - target).abs().sum(-1)
    lt, rb = torch.max(pred[:, :2], target[:, :2]), torch.min(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda b: (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area(pred) + area(target) - inter
    hull = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).prod(-1)
    giou = inter / union.clamp(min=1e-7) - (hull - union) / hull.clamp(min=1e-7)
    return (l1 + (1 - giou)).mean()
