"""The joint regime and the resampler baselines: the resampler on top of cached vision features.

The vision encoder's outputs are extracted once per image and cached; a joint epoch runs only the
resampler and the probe. The resampler's starting weights are snapshotted once and restored before
every fit, so no seed or task inherits another's training.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.checkpoint import checkpoint

from ..adapters.base import Adapter
from .fit import Encoder

CHUNK = 64


class ResamplerSnapshot:
    """The resampler's original weights, restorable at will."""

    def __init__(self, adapter: Adapter):
        self.params = adapter.resampler_parameters()
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

    @torch.no_grad()
    def randomise(self, seed: int) -> None:
        """Re-initialise: each tensor redrawn from a normal with its own mean and std (scale kept, structure lost)."""
        g = torch.Generator().manual_seed(seed)
        for p in self.params:
            mean, std = p.float().mean(), (p.float().std() if p.numel() > 1 else torch.tensor(0.0))
            p.copy_((torch.randn(p.shape, generator=g) * std + mean).to(p.dtype))


@torch.no_grad()
def resample_all(adapter: Adapter, vision: torch.Tensor, texts: list[str] | None = None) -> torch.Tensor:
    """Prompts for cached vision features [N, P, Dv], in chunks, on the adapter's device."""
    out = []
    for i in range(0, len(vision), CHUNK):
        chunk = vision[i:i + CHUNK].to(adapter.device, adapter.dtype)
        out.append(adapter.resample(chunk, texts[i:i + CHUNK] if texts else None).float().cpu())
    return torch.cat(out)


class JointEncoder(Encoder):
    """Vision features -> the adapter's resampler (trainable) -> fixed standardisation -> the probe.

    The standardisation is fitted once, on the initial prompts of the training images, and then held
    fixed: the probe sees prompts on the same scale as in the frozen regime.
    """

    def __init__(self, adapter: Adapter, train_vision: torch.Tensor, train_texts: list[str] | None,
                 checkpointing: bool = False):
        super().__init__()
        self.adapter, self.checkpointing = adapter, checkpointing
        self.params = [p for p in adapter.resampler_parameters()]
        initial = resample_all(adapter, train_vision, train_texts)
        self.register_buffer("mean", initial.mean(dim=(0, 1), keepdim=True))
        self.register_buffer("std", initial.std(dim=(0, 1), keepdim=True).clamp(min=1e-6))

    def parameters(self, recurse: bool = True):
        return iter(self.params)

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
        return self

    def state_dict(self, *args, **kwargs):
        return {str(i): p.detach().clone() for i, p in enumerate(self.params)}

    @torch.no_grad()
    def load_state_dict(self, state, strict: bool = True):
        for i, p in enumerate(self.params):
            p.copy_(state[str(i)])
