"""The generic family, configured only by a card, reproduces the dedicated BLIP-2 adapter exactly."""

import pytest
import torch

from spatialbench.adapters.families import get_family
from spatialbench.errors import SpatialbenchError, ValidationErrors
from spatialbench.registry import ModelRegistry
from spatialbench.testing import probe_images


@pytest.fixture(scope="module")
def pair():
    cards = ModelRegistry()
    generic = get_family("generic").load(cards.get("generic-blip2-tiny"))
    dedicated = get_family("blip2").load(cards.get("blip2-tiny"))
    return generic, dedicated


@pytest.mark.parametrize("point", ["projected", "resampler", "vision_patches"])
def test_generic_card_gives_the_dedicated_adapters_prompt_exactly(pair, point):
    generic, dedicated = pair
    px = dedicated.preprocess(probe_images(4))
    generic.point = dedicated.point = point
    try:
        assert torch.equal(generic.visual_prompt(px), dedicated.visual_prompt(px))
        assert generic.prompt_shape == dedicated.prompt_shape
    finally:
        generic.point = dedicated.point = "projected"


def test_generic_trains_the_same_parameters_as_the_dedicated_adapter(pair):
    generic, dedicated = pair
    named = lambda module, params: sorted(n for n, p in module.named_parameters() if any(p is q for q in params))
    assert named(generic.model, generic.resampler_parameters()) == named(dedicated.parts, dedicated.resampler_parameters())


def test_trust_remote_code_is_refused_unless_the_run_allows_it():
    card = ModelRegistry().get("generic-blip2-tiny").model_copy(
        update={"options": {**ModelRegistry().get("generic-blip2-tiny").options, "trust_remote_code": True}})
    with pytest.raises(SpatialbenchError, match="trust_remote_code") as e:
        get_family("generic").load(card)
    assert "--trust-remote-code" in str(e.value)
    assert get_family("generic").load(card, trust_remote_code=True).prompt_shape == (8, 48)


def test_card_options_are_validated_with_the_field_named():
    card = ModelRegistry().get("generic-blip2-tiny")
    options = {k: v for k, v in card.options.items() if k != "vision_module"}
    bad = card.model_copy(update={"options": {**options, "vision_modul": "x"}})
    with pytest.raises(ValidationErrors) as e:
        get_family("generic").load(bad)
    fields = {err.field for err in e.value.errors}
    assert "options.vision_modul" in fields and "options.vision_module" in fields
    wrong = card.model_copy(update={"options": {**card.options, "vision_module": "no_such_module"}})
    with pytest.raises(SpatialbenchError, match="no submodule 'no_such_module'"):
        get_family("generic").load(wrong).visual_prompt(torch.zeros(1, 3, 64, 64))
