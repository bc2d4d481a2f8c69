"""Fits that read the same inputs, trained as one stacked model: the members' parameters stacked
(torch.func.stack_module_state) and one vmapped step for all of them.

Each member keeps what makes it its own fit: its seed (the probe's initialisation and its batch order), its
lr, its targets (a control task's), its early stopping and its best validation epoch. The arithmetic is
fit()'s, member by member: the same initialisation, batches, AdamW update, warmup-cosine schedule and
gradient clipping. A member that stops early, or whose loss diverges, leaves the stack, so it stops costing
compute. A tiny probe leaves most of a device idle; a stack of them does not.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..specs import ProbeSpec
from .fit import FitResult, ProbeInputs, Split, decay_groups, score, warmup_cosine
from .heads import box_loss, build_probe, to_box
from .stacked import FORWARDS
from .visual import resident_budget

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which fit() uses


@dataclass(frozen=True)
class Member:
    inputs: ProbeInputs  # the group's features and items (shared), with this member's targets
    seed: int
    lr: float


def groupable(spec: ProbeSpec, accelerator: Accelerator) -> bool:
    """Whether fits of this spec train stacked: dropout would draw differently under vmap than alone, and
    fp16's loss scaling belongs to one optimiser; such fits train one at a time."""
    return spec.dropout == 0 and accelerator.mixed_precision != "fp16"


def _loss_fn(box: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return (lambda raw, t: box_loss(to_box(raw), t)) if box else torch.nn.functional.cross_entropy


class _Stack:
    """The active members' parameters, one row each of a flat [A, P] tensor (the probe's tensors are views
    of it: the AdamW update is a few whole-tensor ops), with their AdamW state and the rows they read."""

    def __init__(self, members: list[Member], spec: ProbeSpec, device: torch.device):
        models = []
        for m in members:
            set_seed(m.seed)  # as fit(): the seed fixes the initialisation
            models.append(build_probe(members[0].inputs.shape, spec).to(device))
        params, self.all_buffers = stack_module_state(models)  # buffers are not trained: kept per member
        self.shapes = {k: tuple(v.shape[1:]) for k, v in params.items()}
        self.flat = torch.cat([v.detach().flatten(1) for v in params.values()], dim=1)
        self.base = copy.deepcopy(models[0]).to("meta")
        decayed = {id(p) for p in decay_groups(models[0], 0.0, spec.weight_decay)[0]["params"]}
        self.decay = torch.cat([torch.full((p.numel(),), spec.weight_decay if id(p) in decayed else 0.0)
                                for p in models[0].parameters()]).to(device)
        self.avg, self.avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.active = list(range(len(members)))  # member index of each stacked row
        self.buffers = self.all_buffers
        self.stacked = FORWARDS[spec.architecture](spec) if spec.architecture in FORWARDS and not self.buffers else None

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """The probe's parameters [A, ...] as views of rows of a flat [A, P] tensor."""
        out, at = {}, 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            out[name] = flat[:, at:at + n].view(len(flat), *shape)
            at += n
        return out

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return self.views(self.flat)

    def select(self, members: list[int]) -> None:
        """Stacked rows for these members (their buffers; parameters are given with each call)."""
        self.active = members
        index = torch.tensor(members, dtype=torch.long)
        self.buffers = {k: v.index_select(0, index.to(v.device)) for k, v in self.all_buffers.items()}

    def forward(self, params, buffers, visual, query, mask):
        """One member's output (under vmap)."""
        # Attention by its composite (math) kernel: the fused CPU kernels have no batching rule, and vmap
        # would loop over the members one by one.
        with sdpa_kernel(SDPBackend.MATH):
            return functional_call(self.base, (params, buffers), (visual, query, mask))

    def outputs(self, params, visual, query, mask) -> torch.Tensor:
        """Every stacked member's output [A, B, n_out]; inputs [A, B, ...]."""
        if self.stacked is not None:
            return self.stacked(params, visual, query, mask)
        dims = (0, 0, 0, 0, None if mask is None else 0)
        return vmap(self.forward, in_dims=dims)(params, self.buffers, visual, query, mask)

    def gradients(self, visual, query, mask, target, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's flat gradient [A, P] and its loss [A] on its own batch (inputs [A, B, ...])."""
        if self.stacked is None:
            def member_loss(params, buffers, visual, query, mask, target):
                return loss_fn(self.forward(params, buffers, visual, query, mask).float(), target)

            dims = (0, 0, 0, 0, None if mask is None else 0, 0)
            grads, losses = vmap(grad_and_value(member_loss), in_dims=dims)(self.params, self.buffers, visual,
                                                                            query, mask, target)
            grads = list(grads.values())
        else:
            leaves = {k: v.detach().requires_grad_() for k, v in self.params.items()}
            losses = vmap(loss_fn)(self.stacked(leaves, visual, query, mask).float(), target)
            # The members share no parameter, so the gradient of the sum is each member's own.
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return torch.cat([g.flatten(1) for g in grads], dim=1), losses.detach()

    def keep(self, rows: list[int]) -> None:
        """Only these stacked rows stay (members that stopped or diverged leave)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.flat.device)
        self.flat, self.avg, self.avg_sq = (t.index_select(0, index) for t in (self.flat, self.avg, self.avg_sq))
        self.select([self.active[r] for r in rows])

    def member(self, row: int) -> torch.Tensor:
        return self.flat[row].clone()

    def step(self, grad: torch.Tensor, lrs: torch.Tensor, t: int, clip: float | None) -> None:
        """AdamW as torch.optim.AdamW computes it, with each stacked row at its own lr (lrs [A])."""
        if clip is not None:  # clip_grad_norm_ per member: the norm over all of that member's gradients
            grad = grad * (clip / (grad.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
        b1, b2 = BETAS
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        lr = lrs.unsqueeze(1)
        self.flat.mul_(1 - lr * self.decay)
        self.avg.lerp_(grad, 1 - b1)
        self.avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.avg_sq.sqrt() / math.sqrt(bc2)).add_(EPS)
        self.flat.sub_((self.avg / denom) * (lr / bc1))


def resident(inputs: ProbeInputs, device: torch.device) -> ProbeInputs:
    """The members' shared features and query texts held whole on the device where they fit the budget."""
    text = inputs.text.resident(resident_budget()) if inputs.text is not None else None  # tables stay on the host
    return replace(inputs, features=inputs.features.resident(device), text=text)


def _queries(inputs: ProbeInputs, query: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Query ids [..., S] or text rows [...] -> what the probe reads, with the leading dims kept."""
    if inputs.text is None:
        return query.to(device), None
    lead = query.shape
    emb, mask = inputs.text(query.reshape(-1))
    return emb.reshape(*lead, *emb.shape[1:]).to(device), mask.reshape(*lead, *mask.shape[1:]).to(device)


def _predict(stack: _Stack, inputs: ProbeInputs, splits: list[Split], spec: ProbeSpec, accelerator: Accelerator,
             params=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Each stacked member's predictions for its split (same items, own targets) and mean loss, [A]."""
    params = stack.params if params is None else params
    device, loss_fn = accelerator.device, _loss_fn(inputs.box)
    split = splits[0]
    outs, total = [], torch.zeros(len(splits), device=device)
    with torch.no_grad():
        for rows in torch.arange(len(split)).split(spec.batch_size):
            visual = inputs.features.batch(split.image[rows], device)  # read once for every member
            query, mask = _queries(inputs, split.query[rows], device)
            target = torch.stack([s.target[rows] for s in splits]).to(device)
            a = len(splits)
            visual, query = visual.expand(a, *visual.shape), query.expand(a, *query.shape)
            mask = None if mask is None else mask.expand(a, *mask.shape)
            with accelerator.autocast():
                raw = stack.outputs(params, visual, query, mask).float()
            outs.append((to_box(raw) if inputs.box else raw.argmax(-1)).cpu())
            total += vmap(loss_fn)(raw, target) * len(rows)
    preds = torch.cat(outs, dim=1).numpy()
    return list(preds), (total / max(len(split), 1)).cpu().numpy()


def fit_group(members: list[Member], spec: ProbeSpec, headline: str, accelerator: Accelerator,
              on_epoch: Callable[[int, int, float], None] | None = None) -> list[FitResult | FloatingPointError]:
    """Train every member; keep each one's best validation epoch; predict the test split. Per member: its
    FitResult, or the FloatingPointError fit() would have raised for it (the others go on).
    `on_epoch(member, epoch, val)` after each member's epoch."""
    start = time.perf_counter()
    device = accelerator.device
    inputs = resident(members[0].inputs, device)
    box = inputs.box
    stack = _Stack(members, spec, device)
    train = inputs.splits["train"]
    steps = spec.epochs * math.ceil(len(train) / spec.batch_size)
    factor = warmup_cosine(steps, spec.warmup)
    generators = [torch.Generator().manual_seed(m.seed) for m in members]
    base_lrs = torch.tensor([m.lr for m in members], device=device)
    loss_fn = _loss_fn(box)

    n = len(members)
    best = [(-np.inf, -np.inf)] * n
    best_epoch, best_state, history = [0] * n, [None] * n, [[] for _ in range(n)]
    seconds, outcome = [0.0] * n, [None] * n
    t = 0
    for epoch in range(1, spec.epochs + 1):
        if not stack.active:
            break
        tic = time.perf_counter()
        orders = {m: train.batches(spec.batch_size, generators[m]) for m in stack.active}  # each member's own
        for i in range(len(orders[stack.active[0]])):
            rows = torch.stack([orders[m][i] for m in stack.active])  # [A, B]
            # Members of one seed share their batches: each distinct batch is read once.
            distinct, which = torch.unique(rows, dim=0, return_inverse=True)
            visual = inputs.features.batch(train.image[distinct.reshape(-1)], device)
            visual = visual.reshape(*distinct.shape, *visual.shape[1:])[which.to(device)]
            query, mask = _queries(inputs, train.query[distinct], device)
            query, mask = query[which.to(device)], None if mask is None else mask[which.to(device)]
            target = torch.stack([members[m].inputs.splits["train"].target[r]
                                  for m, r in zip(stack.active, rows)]).to(device)
            with accelerator.autocast():
                grads, losses = stack.gradients(visual, query, mask, target, loss_fn)
            t += 1
            finite = torch.isfinite(losses).tolist()
            if not all(finite):  # as fit(): this member diverged at this lr; it leaves, the others go on
                for row in (r for r, ok in enumerate(finite) if not ok):
                    m = stack.active[row]
                    outcome[m] = FloatingPointError(f"seed {members[m].seed}: loss became "
                                                    f"{losses[row].item()} at epoch {epoch}; lower the lr")
                keep = [r for r, ok in enumerate(finite) if ok]
                grads = grads[keep]
                stack.keep(keep)
                if not stack.active:
                    break
            stack.step(grads, base_lrs[stack.active] * factor(t - 1), t, spec.clip_grad_norm)
        if not stack.active:
            break
        preds, val_losses = _predict(stack, inputs, [members[m].inputs.splits["validation"] for m in stack.active],
                                     spec, accelerator)
        stopped = []
        for row, m in enumerate(stack.active):
            val = score(headline, preds[row], members[m].inputs.splits["validation"], box)
            history[m].append(val)
            if on_epoch:
                on_epoch(m, epoch, val)
            if (val, -float(val_losses[row])) > best[m]:
                best[m], best_epoch[m], best_state[m] = (val, -float(val_losses[row])), epoch, stack.member(row)
            elif epoch - best_epoch[m] >= spec.patience:
                stopped.append(row)
        elapsed = time.perf_counter() - tic
        for m in stack.active:
            seconds[m] += elapsed / len(stack.active)  # each member's share of the stack's time
        if stopped:
            stack.keep([row for row in range(len(stack.active)) if row not in stopped])

    done = [m for m in range(n) if outcome[m] is None and best_state[m] is not None]
    if done:
        stack.select(done)
        params = stack.views(torch.stack([best_state[m] for m in done]))
        preds, test_losses = _predict(stack, inputs, [members[m].inputs.splits["test"] for m in done], spec,
                                      accelerator, params)
        share = (time.perf_counter() - start - sum(seconds)) / n  # setup and test, shared alike
        for row, m in enumerate(done):
            outcome[m] = FitResult(members[m].seed, preds[row], best_epoch[m], len(history[m]), float(best[m][0]),
                                   seconds[m] + share, history[m], float(test_losses[row]),
                                   val_loss=float(-best[m][1]), lr=members[m].lr)
    return outcome
