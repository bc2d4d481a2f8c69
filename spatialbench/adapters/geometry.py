"""How an image is fit to a model's input before the model's own processor runs: what of the image the model sees.

Task targets (boxes, relations) are in the original image's frame, so the image must reach the model whole.
Most processors resize to a square (BLIP-2, InstructBLIP, IDEFICS and Kosmos-2 stretch; Idefics2 keeps the
aspect ratio and pads), which keeps every pixel. LLaVA-1.5's Hugging Face processor resizes the short side and
centre-crops: a 640x480 image loses 12.5% of its width on each side, so a box near the edge would be partly
outside what the model sees while its target stays in the original frame. LLaVA-1.5 itself was trained on
images padded to a square (its `expand2square`, image_aspect_ratio "pad"), and `pad_to_square` does that: the
whole image reaches the model, in the frame the model was trained on. The llava card uses it.
"""

from __future__ import annotations

from typing import Callable

from PIL import Image


Fit = Callable[[Image.Image, object], Image.Image]  # (image, the checkpoint's image processor) -> image
GEOMETRIES: dict[str, Fit] = {}
DEFAULT = "processor"


def geometry(name: str) -> Callable[[Fit], Fit]:
    def wrap(fit: Fit) -> Fit:
        GEOMETRIES[name] = fit
        return fit

    return wrap


@geometry("processor")
def as_processor(image: Image.Image, processor) -> Image.Image:
    """The checkpoint's processor alone (the model's published preprocessing)."""
    return image


@geometry("pad_to_square")
def pad_to_square(image: Image.Image, processor) -> Image.Image:
    """LLaVA-1.5's expand2square: the short side padded, centred, with the processor's mean colour, so the
    processor's centre crop after its resize removes nothing."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    mean = getattr(processor, "image_mean", None) or (0.0, 0.0, 0.0)
    square = Image.new(image.mode, (side, side), tuple(int(m * 255) for m in mean))
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square
