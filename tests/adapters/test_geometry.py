"""Images reach the model whole: LLaVA's pad-to-square, so a box at the image edge is inside what the model sees."""

import pytest
import torch
from PIL import Image, ImageDraw

from spatialbench.adapters.geometry import pad_to_square
from spatialbench.adapters.llava import LlavaAdapter
from spatialbench.errors import SpatialbenchError
from spatialbench.registry import ModelRegistry
from spatialbench.specs import ModelCard


class _Processor:
    image_mean = (0.5, 0.25, 0.0)


def test_pad_to_square_centres_the_image_on_the_processors_mean_colour():
    image = Image.new("RGB", (640, 480), (10, 20, 30))
    square = pad_to_square(image, _Processor())
    assert square.size == (640, 640)
    assert square.getpixel((320, 79)) == (127, 63, 0) and square.getpixel((320, 80)) == (10, 20, 30)
    assert square.getpixel((320, 559)) == (10, 20, 30) and square.getpixel((320, 560)) == (127, 63, 0)
    same = Image.new("RGB", (50, 50))
    assert pad_to_square(same, _Processor()) is same


def _red_at_left_edge() -> Image.Image:
    """A 4:3 image whose only red is a box touching its left edge (10% of its width)."""
    image = Image.new("RGB", (160, 120), (128, 128, 128))
    ImageDraw.Draw(image).rectangle((0, 40, 15, 80), fill=(255, 0, 0))
    return image


def _sees_red(adapter, image) -> bool:
    mean = torch.tensor(adapter.processor.image_mean)[:, None, None]
    std = torch.tensor(adapter.processor.image_std)[:, None, None]
    rgb = adapter.preprocess([image])[0].float() * std + mean  # back to [0, 1]
    return bool(((rgb[0] > 0.9) & (rgb[1] < 0.1) & (rgb[2] < 0.1)).any())


@pytest.mark.parametrize("geometry, visible", [("pad_to_square", True), ("processor", False)])
def test_a_box_at_the_image_edge_is_seen_only_when_the_image_is_padded_not_cropped(geometry, visible, tiny_cache):
    card = ModelRegistry().get("llava-tiny")
    assert card.options["geometry"] == "pad_to_square"  # the shipped choice (and the llava card's)
    card = card.model_copy(update={"options": {"geometry": geometry}})
    adapter = LlavaAdapter.load(card, cache_dir=tiny_cache)
    assert _sees_red(adapter, _red_at_left_edge()) is visible  # the processor's centre crop cuts the box away
    assert adapter.geometry == geometry
    assert (geometry in adapter.fingerprint()) is (geometry != "processor")  # cached features follow the mapping


def test_the_llava_card_pads_to_square():
    assert ModelRegistry().get("llava").options["geometry"] == "pad_to_square"


def test_an_unknown_geometry_names_the_field_and_the_choices(tiny_cache):
    card = ModelCard(name="x", family="llava", checkpoint="tiny:llava-tiny", options={"geometry": "crop"})
    with pytest.raises(SpatialbenchError) as err:
        LlavaAdapter.load(card, cache_dir=tiny_cache)
    assert "options.geometry" in str(err.value) and "choose one of ['pad_to_square', 'processor']" in str(err.value)
