"""The joint regime and the resampler baselines: the resampler on top of cached vision features.

The vision encoder's outputs are extracted once per image and cached; a joint epoch runs only the
resampler and the probe. The resampler's starting weights are snapshotted once and restored before
every fit, so no seed or task inherits another's training.
"""

from __future__ import annotations

import hashlib
from typing import Iterator

import torch
from torch.utils.checkpoint import checkpoint

from ..adapters.base import Adapter
from .fit import Encoder, decay_groups
from .visual import Visual, chunk_rows, moments


class ResamplerSnapshot:
    """The resampler's original weights, restorable at will."""

    def __init__(self, adapter: Adapter):
        self.adapter, self.params = adapter, adapter.resampler_parameters()
        self.saved = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restore(self) -> None:
        for p, saved in zip(self.params, self.saved):
            p.copy_(saved)

    def digest(self) -> str:
        """A digest of the current weights (to show each fit starts from the same ones)."""
        h = hashlib.sha256()
        for p in self.params:
            h.update(p.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def randomise(self, seed: int) -> None:
        """The model's own initialisation, drawn with this seed (restore() brings the checkpoint back). It starts
        from the checkpoint, whose tensors give the scale of those no init rule covers."""
        self.restore()
        self.adapter.initialise_resampler(seed)


@torch.no_grad()
def resample_all(adapter: Adapter, vision: Visual, texts: list[str] | None = None,
                 rows: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Prompts for cached vision features (`rows` of them, default all), chunk by chunk, as float32 on the CPU.
    `texts`: each vision row's text, where the resampler reads one."""
    rows = torch.arange(len(vision)) if rows is None else rows
    step = chunk_rows(vision.shape)
    for i in range(0, len(rows), step):
        index = rows[i:i + step]
        chunk = vision.batch(index, adapter.device).to(adapter.dtype)
        yield adapter.resample(chunk, [texts[j] for j in index.tolist()] if texts else None).float().cpu()


def resampler_modules(adapter: Adapter) -> list[torch.nn.Module]:
    """The modules the resampler runs, for train/eval mode: every largest module whose parameters are all the
    resampler's, and the parameter-free modules (dropout) directly inside one that holds some of them."""
    wanted = {id(p) for p in adapter.resampler_parameters()}
    out: list[torch.nn.Module] = []

    def walk(module: torch.nn.Module) -> None:
        params = [id(p) for p in module.parameters()]
        if not params or not wanted.intersection(params):
            return
        if wanted.issuperset(params):
            out.append(module)
            return
        for child in module.children():
            if not any(True for _ in child.parameters()):
                out.append(child)
            else:
                walk(child)

    for root in adapter.modules():
        walk(root)
    return out


class JointEncoder(Encoder):
    """Vision features -> the adapter's resampler (trainable) -> fixed standardisation -> the probe.

    The standardisation is fitted once, on the initial prompts of the training images, and then held
    fixed: the probe sees prompts on the same scale as in the frozen regime. In training the resampler's
    modules are in train mode (dropout on, as fine-tuning has them) unless `train_mode` is False.
    """

    def __init__(self, adapter: Adapter, vision: Visual, train_rows: torch.Tensor, texts: list[str] | None,
                 checkpointing: bool = False, train_mode: bool = True):
        super().__init__()
        self.adapter, self.checkpointing, self.train_mode = adapter, checkpointing, train_mode
        self.params = [p for p in adapter.resampler_parameters()]
        self.modules_run = resampler_modules(adapter)
        mean, std = moments(resample_all(adapter, vision, texts, train_rows))  # one streaming pass
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def parameters(self, recurse: bool = True):
        return iter(self.params)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on the resampler's linear weights, none on norms, biases and query tokens."""
        return decay_groups(self.adapter.modules(), lr, weight_decay, only=self.params)

    def forward(self, rows: torch.Tensor, texts: list[str] | None) -> torch.Tensor:
        rows = rows.to(self.adapter.device, self.adapter.dtype)
        with torch.enable_grad() if self.training else torch.no_grad():
            if self.training and self.checkpointing:  # keep no resampler activations; recompute them in backward
                prompt = checkpoint(self.adapter.resample, rows, texts, use_reentrant=False).float()
            else:
                prompt = self.adapter.resample(rows, texts).float()
        return (prompt - self.mean.to(prompt.device)) / self.std.to(prompt.device)

    def train(self, mode: bool = True):
        self.training = mode
        for p in self.params:
            p.requires_grad_(mode)
        for module in self.modules_run:
            module.train(mode and self.train_mode)
        return self

    def state_dict(self, *args, **kwargs):
        return {str(i): p.detach().clone() for i, p in enumerate(self.params)}

    @torch.no_grad()
    def load_state_dict(self, state, strict: bool = True):
        for i, p in enumerate(self.params):
            p.copy_(state[str(i)])
