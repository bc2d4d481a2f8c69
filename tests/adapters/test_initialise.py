"""Re-drawing a resampler from its model's own initialisation (joint_random, random_resampler)."""

from types import SimpleNamespace

import torch
from torch import nn

from spatialbench.adapters.initialise import reinitialise


class _Perceiver(nn.Module):
    """Stands for a Hugging Face PreTrainedModel whose init sets its latents to ones (as Idefics2's does)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(initializer_range=0.3)
        self.latents = nn.Parameter(torch.randn(4, 8) * 2 + 1)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            nn.init.zeros_(module.bias)
        elif isinstance(module, _Perceiver):
            nn.init.ones_(module.latents)


def test_module_rules_then_constant_token_matrices_and_bare_tensors_from_the_checkpoints_scale():
    root = nn.Module()
    root.perceiver = _Perceiver()
    root.queries = nn.Parameter(torch.randn(6, 8) * 3)  # bare: no module initialises it
    root.other = nn.Linear(8, 8)  # not the resampler's: must not move
    with torch.no_grad():
        root.perceiver.norm.weight.mul_(5)
    latents_std = root.perceiver.latents.std().item()
    other = root.other.weight.clone()
    params = [*root.perceiver.parameters(), root.queries]
    checkpoint = [t.detach().clone() for t in params]

    def restore():
        with torch.no_grad():
            for t, saved in zip(params, checkpoint):
                t.copy_(saved)

    reinitialise([root], params, seed=0)
    p = root.perceiver
    assert torch.all(p.proj.bias == 0) and abs(p.proj.weight.std().item() - 0.3) < 0.1  # the model's own rule
    assert torch.equal(p.norm.weight, torch.ones(8))  # a norm's own reset
    assert not torch.allclose(p.latents[0], p.latents[1])  # set to ones by the init, then redrawn
    assert abs(p.latents.std().item() - latents_std) < 0.6 * latents_std
    assert root.queries.std().item() > 1.5  # bare: the checkpoint tensor's own scale (3)
    assert torch.equal(root.other.weight, other)
    first = [t.detach().clone() for t in params]
    restore()  # as ResamplerSnapshot does before every draw: the scale is the checkpoint's
    reinitialise([root], params, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(first, params))  # deterministic in the seed
    restore()
    state = torch.random.get_rng_state()
    reinitialise([root], params, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # the global generator is left as it was
    assert not torch.equal(first[0], params[0])
