"""A resampler re-drawn from the model's own initialisation: the start of `joint_random` and `random_resampler`.

Modules are re-initialised as their model initialises them: `_init_weights` of the nearest Hugging Face
PreTrainedModel above them (its config's initializer_range, its own rules per module type), or the
module's own `reset_parameters` outside any (or where that init leaves the module as it was). Bare tensors that no module initialises (BLIP-2's query
tokens, Kosmos-2's latent queries) are redrawn from a normal with the checkpoint tensor's own mean and
std, and so are token matrices an init sets to one constant (Hugging Face zero-initialises BLIP-2's queries
and one-initialises Idefics2's latents, which it then loads): identical query tokens stay identical under
any training, so no trainable start can come from that.
"""

from __future__ import annotations

import torch
from torch import nn


def _owners(root: nn.Module) -> dict[int, nn.Module | None]:
    """For every module under root, the nearest PreTrainedModel at or above it (or None)."""
    out: dict[int, nn.Module | None] = {}

    def walk(module: nn.Module, owner: nn.Module | None) -> None:
        if hasattr(module, "_init_weights") and hasattr(module, "config"):
            owner = module
        out[id(module)] = owner
        for child in module.children():
            walk(child, owner)

    walk(root, None)
    return out


@torch.no_grad()
def reinitialise(roots: list[nn.Module], params: list[nn.Parameter], seed: int) -> None:
    """Re-draw exactly `params` (the resampler's) as their model initialises them, deterministically in seed."""
    wanted = {id(p) for p in params}
    done: set[int] = set()
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for root in roots:
            owners = _owners(root)
            for module in root.modules():
                own = [p for p in module.parameters(recurse=False) if id(p) in wanted and id(p) not in done]
                if not own:
                    continue
                owner = owners[id(module)]
                before = [p.detach().clone() for p in own]
                for p in own:  # loaded weights may be flagged as initialised, which _init_weights would skip
                    if hasattr(p, "_is_hf_initialized"):
                        del p._is_hf_initialized
                if owner is not None:
                    owner._init_weights(module)
                if all(torch.equal(p, old) for p, old in zip(own, before)) and hasattr(module, "reset_parameters"):
                    module.reset_parameters()  # outside any PreTrainedModel, or a type its init leaves alone
                for p, old in zip(own, before):
                    # A bare tensor no rule above re-drew, or a matrix of tokens set to one constant.
                    if torch.equal(p, old) or (p.dim() >= 2 and bool((p == p.flatten()[0]).all())):
                        std = old.float().std() if old.numel() > 1 else torch.tensor(0.0)
                        p.copy_((torch.randn(p.shape) * std + old.float().mean()).to(p.dtype))
                done.update(id(p) for p in own)
