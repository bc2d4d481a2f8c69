"""Probe heads over a visual prompt and a query: attentive (the default), linear and mlp.

Every probe takes the visual prompt [B, Q, D] and a query, either explicit (category ids [B, S], one
per slot: the object, or subject and object) or implicit (frozen LLM token embeddings [B, L, Dt] with
a mask), and returns [B, n_out]: class logits, or a box (cx, cy, w, h squashed to [0, 1]).

Queries keep order and binding: explicit slots have an embedding each (subject is not object), and
implicit tokens get a learned position each, so "the A is left of the B" and "the B is left of the A"
are different inputs to every head. The prompt's shape enters the attentive and linear heads only
through one projection of each visual token to `input_width`: their size barely depends on it. The
flattened mlp's first layer has Q*D*width weights; `max_parameters` bounds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from ..errors import SpatialbenchError
from ..specs import ProbeSpec

MAX_QUERY_TOKENS = 128  # positions of implicit query tokens; a fixed table, so its size is the same for every task


@dataclass(frozen=True)
class ProbeShape:
    """What the probe reads and writes, fixed by the adapter and the task."""

    n_tokens: int  # Q
    dim: int  # D
    n_out: int
    n_categories: int = 0  # explicit queries: vocabulary size
    n_slots: int = 0  # explicit queries: ids per item
    text_dim: int = 0  # implicit queries: LLM embedding width

    def with_prompt(self, n_tokens: int, dim: int) -> ProbeShape:
        return replace(self, n_tokens=n_tokens, dim=dim)


class QueryEncoder(nn.Module):
    """Queries as tokens of width `width`: learned category embeddings plus one embedding per slot, or the
    frozen text embeddings (layer-normed, so every LLM's scale looks alike) projected, plus a position each.

    Slot and position embeddings start at the scale of the tokens they are added to: at the usual 0.02
    they are too small to tell a caption from its subject/object swap, and a verification task such as
    synth_vsr then sits at chance for as long as training lasts (measured).
    """

    def __init__(self, shape: ProbeShape, width: int):
        super().__init__()
        self.explicit = shape.n_slots > 0
        if self.explicit:
            self.categories = nn.Embedding(shape.n_categories, width)
            self.slots = nn.Parameter(torch.randn(shape.n_slots, width))
        else:
            self.text = nn.Sequential(nn.LayerNorm(shape.text_dim, elementwise_affine=False),
                                      nn.Linear(shape.text_dim, width))
            self.positions = nn.Parameter(torch.randn(MAX_QUERY_TOKENS, width))

    def forward(self, query: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, S or L, width], keep [B, S or L] bool)."""
        if self.explicit:
            tokens = self.categories(query) + self.slots
            return tokens, torch.ones(query.shape, dtype=torch.bool, device=query.device)
        length = query.shape[1]
        if length > MAX_QUERY_TOKENS:
            raise SpatialbenchError(f"a query has {length} tokens; the probes read at most {MAX_QUERY_TOKENS}",
                                    fix="shorten the task's query texts")
        return self.text(query) + self.positions[:length], mask.bool()

    def pooled(self, query: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One vector per query that keeps order: each token gated by its own slot or position vector, then
        summed (a plain sum or mean of tokens plus positions would lose the order again)."""
        tokens, keep = self(query, mask)
        return ordered_sum(tokens, keep, self.slots if self.explicit else self.positions)


def ordered_sum(tokens: torch.Tensor, keep: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """[B, L, w] -> [B, w]: each kept token times tanh of its own position's gate, summed, so order survives."""
    return (tokens * torch.tanh(gates[: tokens.shape[1]]) * keep.unsqueeze(-1)).sum(1)


class VisualInput(nn.Module):
    """Each visual token projected to `input_width` and layer-normed: the only part sized by the prompt."""

    def __init__(self, shape: ProbeShape, input_width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(shape.dim, input_width), nn.LayerNorm(input_width))

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        return self.net(visual)


class ReadoutBlock(nn.Module):
    """Read-out and query tokens attend to each other (the query conditions the read-outs), then
    cross-attend into the visual tokens, then an MLP; pre-norm residuals throughout."""

    def __init__(self, width: int, input_width: int, heads: int, dropout: float):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))
        self.mix = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.read = nn.MultiheadAttention(width, heads, dropout=dropout, kdim=input_width, vdim=input_width,
                                          batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, pad: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        h = self.norms[0](x)
        x = x + self.mix(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        h = self.norms[1](x)
        x = x + self.read(h, visual, visual, need_weights=False)[0]
        return x + self.mlp(self.norms[2](x))


class AttentiveProbe(nn.Module):
    """Learned read-out queries, conditioned on the task's query, cross-attending into the projected visual
    tokens (attentive probing as in V-JEPA and AIM; Psomas et al. 2025), then an MLP over the read-outs and
    the query's own tokens.

    The query tokens cross-attend into the prompt in every block too, and the head reads them (pooled in
    order) beside the read-outs: what a word found in the prompt reaches the head in one hop. Without that
    route the probe finds one named object but not two, and on answer-bearing patch tokens sits at chance
    on synth_vsr's verification (docs/methodology.md, "Where the plateau is").
    """

    def __init__(self, shape: ProbeShape, spec: ProbeSpec):
        super().__init__()
        w = spec.width
        self.visual = VisualInput(shape, spec.input_width)
        self.query = QueryEncoder(shape, w)
        self.readouts = nn.Parameter(torch.randn(spec.readouts, w) * 0.02)
        self.blocks = nn.ModuleList(ReadoutBlock(w, spec.input_width, spec.heads, spec.dropout)
                                    for _ in range(spec.depth))
        self.norm = nn.LayerNorm(w)
        self.gates = nn.Parameter(torch.randn(shape.n_slots or MAX_QUERY_TOKENS, w))
        self.head = nn.Sequential(nn.Linear((spec.readouts + 1) * w, 4 * w), nn.GELU(), nn.Dropout(spec.dropout),
                                  nn.Linear(4 * w, shape.n_out))

    def forward(self, visual: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        memory = self.visual(visual)
        q_tokens, q_keep = self.query(query, mask)
        b, k = visual.shape[0], self.readouts.shape[0]
        x = torch.cat([self.readouts.expand(b, -1, -1), q_tokens], dim=1)
        pad = torch.cat([torch.zeros(b, k, dtype=torch.bool, device=visual.device), ~q_keep], dim=1)
        for block in self.blocks:
            x = block(x, pad, memory)
        x = self.norm(x)
        words = ordered_sum(x[:, k:], q_keep, self.gates)
        return self.head(torch.cat([x[:, :k].flatten(1), words], dim=1))


class LinearProbe(nn.Module):
    """The low-capacity option that can still localise: the query picks, by one single-head attention,
    which projected tokens to read, and the output is linear in what was read and in the query."""

    def __init__(self, shape: ProbeShape, spec: ProbeSpec):
        super().__init__()
        w = spec.width
        self.visual = VisualInput(shape, spec.input_width)
        self.query = QueryEncoder(shape, w)
        self.key = nn.Linear(w, spec.input_width, bias=False)
        self.out = nn.Linear(spec.input_width + w, shape.n_out)

    def forward(self, visual: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.visual(visual)
        q = self.query.pooled(query, mask)
        weights = torch.softmax(torch.einsum("bd,bqd->bq", self.key(q), tokens) / math.sqrt(tokens.shape[-1]), -1)
        read = torch.einsum("bq,bqd->bd", weights, tokens)
        return self.out(torch.cat([read, q], dim=1))


class FlatProbe(nn.Module):
    """[flatten(visual prompt); order-keeping pooled query] -> hidden layers -> out. Its first layer grows with
    Q*D, so it is refused above the spec's max_parameters."""

    def __init__(self, shape: ProbeShape, spec: ProbeSpec):
        super().__init__()
        self.query = QueryEncoder(shape, spec.width)
        size = shape.n_tokens * shape.dim + spec.width
        layers: list[nn.Module] = []
        for _ in range(spec.depth):
            layers += [nn.Linear(size, spec.width), nn.GELU(), nn.Dropout(spec.dropout)]
            size = spec.width
        layers.append(nn.Linear(size, shape.n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, visual: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(torch.cat([visual.flatten(1), self.query.pooled(query, mask)], dim=1))


_PROBES: dict[str, Callable[[ProbeShape, ProbeSpec], nn.Module]] = {
    "attentive": AttentiveProbe,
    "attention": AttentiveProbe,  # the name tasks of protocol v1 used; its bag-of-words encoder is gone
    "linear": LinearProbe,
    "mlp": FlatProbe,
}


def build_probe(shape: ProbeShape, spec: ProbeSpec) -> nn.Module:
    return _PROBES[spec.architecture](shape, spec)


def count_parameters(shape: ProbeShape, spec: ProbeSpec) -> int:
    """Trainable parameters of the probe for this shape, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_probe(shape, spec).parameters())


def check_budget(shape: ProbeShape, spec: ProbeSpec, what: str) -> int:
    """The probe's parameter count, or an error naming it and the fix when it exceeds spec.max_parameters."""
    n = count_parameters(shape, spec)
    if n > spec.max_parameters:
        raise SpatialbenchError(
            f"the {spec.architecture} probe over {what} ({shape.n_tokens} x {shape.dim}) has {n:,} parameters, "
            f"above its budget of {spec.max_parameters:,}", field="probe.max_parameters",
            fix="use `architecture: attentive` (its size does not grow with the prompt), or raise "
                "probe.max_parameters in the task YAML if a probe this large is what you mean")
    return n


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
