"""The attentive probe's stacked forward is each member's own AttentiveProbe.forward."""

import pytest
import torch
from torch.func import stack_module_state

from spatialbench.probing.heads import AttentiveProbe, ProbeShape
from spatialbench.probing.stacked import attentive
from spatialbench.specs import ProbeSpec


@pytest.mark.parametrize("implicit,heads", [(False, 1), (True, 2)])
def test_the_stacked_forward_of_g_members_is_each_members_own(implicit, heads):
    shape = ProbeShape(8, 24, 3, text_dim=20) if implicit else ProbeShape(8, 24, 3, n_categories=10, n_slots=2)
    spec = ProbeSpec(width=32, heads=heads, depth=2)
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(AttentiveProbe(shape, spec))
    params, _ = stack_module_state(members)
    visual = torch.randn(3, 5, 8, 24)
    if implicit:
        query, mask = torch.randn(3, 5, 7, 20), torch.ones(3, 5, 7, dtype=torch.long)
        mask[:, :2, 4:] = 0  # shorter texts, padded on the right
    else:
        query, mask = torch.randint(0, 10, (3, 5, 2)), None
    out = attentive(params, visual, query, mask, spec.depth, spec.heads)
    for g, member in enumerate(members):
        alone = member(visual[g], query[g], None if mask is None else mask[g])
        assert torch.allclose(out[g], alone, atol=1e-5), (out[g] - alone).abs().max()
    assert not torch.allclose(out[0], out[1])  # the members are not one another
