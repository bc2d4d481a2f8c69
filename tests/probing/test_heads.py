"""The probe heads: queries keep their order, the default probe's size does not follow the prompt's, and a
probe over its parameter budget is refused with its count."""

import pytest
import torch

from spatialbench.errors import SpatialbenchError
from spatialbench.probing.heads import ProbeShape, build_probe, check_budget, count_parameters
from spatialbench.specs import ProbeSpec

ARCHITECTURES = ["attentive", "linear", "mlp"]


def _caption(words: list[str], table: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([table[w] for w in words])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_swapping_subject_and_object_of_a_caption_changes_every_probe_output(arch):
    torch.manual_seed(0)
    words = "the red circle is left of blue square".split()
    table = {w: torch.randn(48) for w in words}
    caption = "the red circle is left of the blue square".split()
    swapped = "the blue square is left of the red circle".split()
    assert sorted(caption) == sorted(swapped)  # the same bag of words
    query = torch.stack([_caption(caption, table), _caption(swapped, table)])
    mask = torch.ones(2, len(caption), dtype=torch.long)
    probe = build_probe(ProbeShape(8, 48, 2, text_dim=48), ProbeSpec(architecture=arch)).eval()
    visual = torch.randn(1, 8, 48).expand(2, -1, -1)
    with torch.no_grad():
        out = probe(visual, query, mask)
    assert (out[0] - out[1]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_swapping_the_subject_and_object_slots_changes_every_probe_output(arch):
    torch.manual_seed(0)
    probe = build_probe(ProbeShape(8, 48, 4, n_categories=24, n_slots=2), ProbeSpec(architecture=arch)).eval()
    visual = torch.randn(1, 8, 48).expand(2, -1, -1)
    with torch.no_grad():
        out = probe(visual, torch.tensor([[3, 17], [17, 3]]))
    assert (out[0] - out[1]).abs().max() > 1e-4


@pytest.mark.parametrize("query", [dict(text_dim=48), dict(n_categories=24, n_slots=2)], ids=["implicit", "explicit"])
def test_the_default_probe_has_nearly_the_same_size_for_any_prompt(query):
    spec = ProbeSpec()
    assert spec.architecture == "attentive"
    sizes = {shape: count_parameters(ProbeShape(*shape, n_out=4, **query), spec)
             for shape in [(8, 48), (64, 1024), (257, 384)]}  # tiny BLIP-2, a large prompt, BLIP-2-like patches
    assert max(sizes.values()) / min(sizes.values()) < 1.10, sizes
    flat = {shape: count_parameters(ProbeShape(*shape, n_out=4, **query), ProbeSpec(architecture="mlp"))
            for shape in sizes}
    assert flat[(257, 384)] / flat[(8, 48)] > 100  # what the fixed-size probe replaces


def test_the_parameter_count_is_the_built_probes():
    shape, spec = ProbeShape(8, 48, 4, n_categories=24, n_slots=2), ProbeSpec()
    assert count_parameters(shape, spec) == sum(p.numel() for p in build_probe(shape, spec).parameters())


def test_an_mlp_over_its_budget_is_refused_with_its_size_and_the_fix():
    shape = ProbeShape(576, 4096, 4, n_categories=80, n_slots=1)  # LLaVA's prompt, flattened
    with pytest.raises(SpatialbenchError) as caught:
        check_budget(shape, ProbeSpec(architecture="mlp", width=256), "the frozen input")
    message = str(caught.value)
    n = count_parameters(shape, ProbeSpec(architecture="mlp", width=256))
    assert f"{n:,}" in message and "5,000,000" in message
    assert "probe.max_parameters" in message and "attentive" in message
    assert check_budget(shape, ProbeSpec(), "the frozen input") == count_parameters(shape, ProbeSpec())


def test_a_query_longer_than_the_position_table_is_refused():
    probe = build_probe(ProbeShape(8, 48, 2, text_dim=16), ProbeSpec())
    with pytest.raises(SpatialbenchError, match="at most 128"):
        probe(torch.randn(1, 8, 48), torch.randn(1, 129, 16), torch.ones(1, 129))
