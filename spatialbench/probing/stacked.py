"""The attentive probe's forward for G members at once, over their parameters stacked on a leading dim
(torch.func.stack_module_state of G AttentiveProbes): the same arithmetic as AttentiveProbe.forward, member
by member, with every linear map one batched matmul over the members.

vmap of the module's own forward gives the same numbers but, on a CPU, spends more of a step outside the
matmuls (measured slower than this form on six fits of synth_relation; this form's figure is in
benchmarks/records/fits-2026-12-07.txt), so the default probe has this hand-written form and the other
heads are vmapped (group.py).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import SpatialbenchError
from .heads import MAX_QUERY_TOKENS

Params = dict[str, torch.Tensor]


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [G, ..., in] through each member's own (weight [G, out, in], bias [G, out])."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    out = torch.bmm(flat, weight.transpose(1, 2)) if bias is None else torch.baddbmm(
        bias.unsqueeze(1), flat, weight.transpose(1, 2))
    return out.view(*x.shape[:-1], weight.shape[1])


def _norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    x = F.layer_norm(x, x.shape[-1:])
    if weight is None:
        return x
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return x * weight.view(shape) + bias.view(shape)


def _attention(p: Params, prefix: str, query: torch.Tensor, memory: torch.Tensor, heads: int,
               pad: torch.Tensor | None) -> torch.Tensor:
    """nn.MultiheadAttention (batch_first, no dropout) of each member: query [G, B, T, W] into memory
    [G, B, S, Dk]; pad [G, B, S] True where a key is padding."""
    width = query.shape[-1]
    bq, bk, bv = p[f"{prefix}.in_proj_bias"].chunk(3, dim=-1)
    if f"{prefix}.in_proj_weight" in p:
        wq, wk, wv = p[f"{prefix}.in_proj_weight"].chunk(3, dim=1)
    else:
        wq, wk, wv = (p[f"{prefix}.{n}_proj_weight"] for n in "qkv")
    q, k, v = _linear(query, wq, bq), _linear(memory, wk, bk), _linear(memory, wv, bv)
    g, b, t, s = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    split = lambda x, n: x.reshape(g * b, n, heads, width // heads).transpose(1, 2)  # noqa: E731
    mask = None if pad is None else ~pad.reshape(g * b, 1, 1, s)
    out = F.scaled_dot_product_attention(split(q, t), split(k, s), split(v, s), attn_mask=mask,
                                         scale=1.0 / math.sqrt(width // heads))
    out = out.transpose(1, 2).reshape(g, b, t, width)
    return _linear(out, p[f"{prefix}.out_proj.weight"], p[f"{prefix}.out_proj.bias"])


def attentive(p: Params, visual: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None, depth: int,
              heads: int) -> torch.Tensor:
    """[G, B, n_out] from visual [G, B, Q, D] and query ids [G, B, S] (explicit) or text embeddings
    [G, B, L, Dt] with mask [G, B, L] (implicit): AttentiveProbe.forward of every member."""
    memory = _norm(_linear(visual, p["visual.net.0.weight"], p["visual.net.0.bias"]),
                   p["visual.net.1.weight"], p["visual.net.1.bias"])
    g, b = visual.shape[:2]
    if "query.slots" in p:
        table = p["query.categories.weight"]  # [G, C, W]
        ids = query.reshape(g, -1, 1).expand(-1, -1, table.shape[-1])
        tokens = torch.gather(table, 1, ids).view(g, b, query.shape[2], -1) + p["query.slots"].unsqueeze(1)
        keep = torch.ones(query.shape, dtype=torch.bool, device=query.device)
        gates = p["gates"]
    else:
        length = query.shape[2]
        if length > MAX_QUERY_TOKENS:
            raise SpatialbenchError(f"a query has {length} tokens; the probes read at most {MAX_QUERY_TOKENS}",
                                    fix="shorten the task's query texts")
        tokens = _linear(_norm(query), p["query.text.1.weight"], p["query.text.1.bias"])
        tokens = tokens + p["query.positions"][:, None, :length]
        keep, gates = mask.bool(), p["gates"][:, :length]
    readouts = p["readouts"]
    k = readouts.shape[1]
    x = torch.cat([readouts.unsqueeze(1).expand(-1, b, -1, -1), tokens], dim=2)
    pad = torch.cat([torch.zeros(g, b, k, dtype=torch.bool, device=x.device), ~keep], dim=2)
    for i in range(depth):
        block = f"blocks.{i}"
        h = _norm(x, p[f"{block}.norms.0.weight"], p[f"{block}.norms.0.bias"])
        x = x + _attention(p, f"{block}.mix", h, h, heads, pad)
        h = _norm(x, p[f"{block}.norms.1.weight"], p[f"{block}.norms.1.bias"])
        x = x + _attention(p, f"{block}.read", h, memory, heads, None)
        h = _norm(x, p[f"{block}.norms.2.weight"], p[f"{block}.norms.2.bias"])
        h = F.gelu(_linear(h, p[f"{block}.mlp.0.weight"], p[f"{block}.mlp.0.bias"]))
        x = x + _linear(h, p[f"{block}.mlp.3.weight"], p[f"{block}.mlp.3.bias"])
    x = _norm(x, p["norm.weight"], p["norm.bias"])
    words = (x[:, :, k:] * torch.tanh(gates).unsqueeze(1) * keep.unsqueeze(-1)).sum(2)
    h = torch.cat([x[:, :, :k].flatten(2), words], dim=-1)
    h = F.gelu(_linear(h, p["head.0.weight"], p["head.0.bias"]))
    return _linear(h, p["head.3.weight"], p["head.3.bias"])


Forward = Callable[[Params, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

# architecture -> its stacked forward, given the spec; the others train vmapped.
FORWARDS: dict[str, Callable[..., Forward]] = {
    "attentive": lambda spec: lambda p, v, q, m: attentive(p, v, q, m, spec.depth, spec.heads),
    "attention": lambda spec: lambda p, v, q, m: attentive(p, v, q, m, spec.depth, spec.heads),
}
