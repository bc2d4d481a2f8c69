"""Decoding workers hand uint8 pixels to the model's device, which rescales and normalises them exactly as
the family's own image processor does."""

import pytest
import torch
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from spatialbench.adapters.families import get_family
from spatialbench.adapters.pixels import Normalise
from spatialbench.registry import resolve_card

from .helpers import mixed_images

SPLIT = ("blip2-tiny", "instructblip-tiny", "kosmos2-tiny", "llava-tiny", "generic-blip2-tiny")
WHOLE = ("idefics-tiny", "idefics2-tiny")


def _adapter(name, cache, dtype="float32"):
    card = resolve_card(name).model_copy(update={"dtype": dtype})
    return get_family(card.family).load(card, cache_dir=cache)


@pytest.mark.parametrize("name", SPLIT)
def test_split_families_send_uint8_and_finish_bit_equal_to_their_processor(name, tiny_cache):
    adapter = _adapter(name, tiny_cache)
    images = mixed_images()  # odd sizes and aspect ratios: resize and crop are the processor's own
    sent = adapter.decode_pixels(images)
    assert sent.dtype == torch.uint8
    own = adapter.processor(images=adapter.fit(images), return_tensors="pt")["pixel_values"]
    assert own.dtype == torch.float32
    assert torch.equal(adapter.finish_pixels(sent), own)
    assert torch.equal(adapter.preprocess(images), own)


def test_a_bfloat16_card_finishes_in_its_dtype(tiny_cache):
    adapter = _adapter("blip2-tiny", tiny_cache, "bfloat16")
    images = mixed_images()
    own = adapter.processor(images=adapter.fit(images), return_tensors="pt")["pixel_values"]
    assert torch.equal(adapter.preprocess(images), own.to(torch.bfloat16))


@pytest.mark.parametrize("name", WHOLE)
def test_families_that_pack_pixels_their_own_way_run_all_of_it_in_the_worker(name, tiny_cache):
    adapter = _adapter(name, tiny_cache)
    images = mixed_images()[:3]
    sent = adapter.decode_pixels(images)
    assert sent.is_floating_point()
    assert torch.equal(adapter.finish_pixels(sent), adapter.preprocess(images))


def test_only_the_stock_pipeline_without_padding_is_split():
    plain = BlipImageProcessorPil(size={"height": 32, "width": 32})
    assert Normalise.of(plain) is not None
    assert Normalise.of(BlipImageProcessorPil(size={"height": 32, "width": 32}, do_pad=True)) is None

    class OwnPipeline(BlipImageProcessorPil):
        def _preprocess(self, images, **kwargs):
            return super()._preprocess(images, **kwargs)

    assert Normalise.of(OwnPipeline()) is None
    assert Normalise.of(object()) is None


def test_normalise_matches_the_processor_for_every_level():
    processor = BlipImageProcessorPil(do_resize=False)
    levels = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(3, 16, 16)  # every value, each channel
    own = processor(images=[levels.numpy()], return_tensors="pt")["pixel_values"]
    normalise = Normalise.of(processor)
    assert normalise.rescale is not None  # 1/255 has an exact float32 form
    assert torch.equal(normalise(levels[None]), own)
    normalise.rescale = None  # the lookup table, for a factor without one
    assert torch.equal(normalise(levels[None]), own)
