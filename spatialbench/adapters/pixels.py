"""An image processor's work split where its pixels are cheapest to move: decoding workers resize (and crop)
to uint8, the model's device rescales and normalises. A uint8 batch is a quarter of the float32 one, so a
quarter of the shared memory between worker and main process and of the host-to-device copy.

Only the stock per-image pipeline of a PIL processor is split (resize, crop, rescale, normalise, in that
order, no padding): there the last two steps are pure per-channel arithmetic, done here exactly as the
processor does it, so the pixels are bit-equal to the processor's own (tested). Any other processor
(Idefics2's image splitting and padding, a remote-code one) runs whole in the worker, as before."""

from __future__ import annotations

import torch


class Normalise:
    """The stock pipeline's rescale and normalise, on a uint8 batch [B, C, H, W] wherever it lies."""

    def __init__(self, rescale: float | None, mean: list[float] | None, std: list[float] | None):
        import numpy as np

        # The processor rescales in float64, then rounds to float32. Of the float32 forms below, the first
        # that gives the same 256 values is used; a lookup table otherwise (exact, ~3x slower per batch).
        levels = np.arange(256, dtype=np.float64)
        self.table = torch.from_numpy((levels * rescale if rescale is not None else levels).astype(np.float32))
        # Tensors, not Python scalars: CUDA divides by a scalar as a multiply by its reciprocal, not exactly.
        by = torch.tensor([1.0 if rescale is None else 1 / rescale], dtype=torch.float32)
        times = torch.tensor([1.0 if rescale is None else rescale], dtype=torch.float32)
        forms = [lambda x: x / by.to(x.device), lambda x: x * times.to(x.device)]
        self.rescale = next((f for f in forms if torch.equal(f(torch.arange(256, dtype=torch.float32)), self.table)),
                            None)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)

    @classmethod
    def of(cls, processor) -> Normalise | None:
        """This processor's last two steps, or None where its pipeline is not the stock one."""
        try:
            from transformers.image_processing_backends import PilBackend
        except ImportError:  # an older transformers without backends: no split
            return None
        if not isinstance(processor, PilBackend) or type(processor)._preprocess is not PilBackend._preprocess:
            return None
        if getattr(processor, "do_pad", False):  # padding follows normalising: zeros mean something else before
            return None
        mean, std = _channels(processor.image_mean), _channels(processor.image_std)
        return cls(processor.rescale_factor if processor.do_rescale else None,
                   mean if processor.do_normalize else None, std if processor.do_normalize else None)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.rescale is not None:
            x = self.rescale(pixels.to(torch.float32))
        else:
            x = self.table.to(pixels.device)[pixels.long()]
        if self.mean is not None:
            shape = (1, -1, 1, 1)
            x = (x - self.mean.to(x.device).view(shape)) / self.std.to(x.device).view(shape)
        return x


def _channels(values) -> list[float]:
    return [float(v) for v in values] if isinstance(values, (list, tuple)) else [float(values)] * 3


class ProcessorPixels:
    """preprocess, decode_pixels and finish_pixels for an adapter whose `processor` is an image processor returning
    `pixel_values` [B, C, H, W]. A family that packs pixels its own way overrides preprocess and sets
    `split_pixels = False`: its workers then run all of it."""

    split_pixels = True

    def _normalise(self) -> Normalise | None:
        if "_normalise_cache" not in self.__dict__:
            self._normalise_cache = Normalise.of(self.processor) if self.split_pixels else None
        return self._normalise_cache

    def preprocess(self, images) -> torch.Tensor:
        if self._normalise() is None:
            pixels = self.processor(images=self.fit(images), return_tensors="pt")["pixel_values"]
            return pixels.to(self.device, self.dtype)
        return self.finish_pixels(self.decode_pixels(images))

    def decode_pixels(self, images) -> torch.Tensor:
        if self._normalise() is None:
            return self.preprocess(images)
        return self.processor(images=self.fit(images), do_rescale=False, do_normalize=False,
                              return_tensors="pt")["pixel_values"]

    def finish_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        normalise = self._normalise()
        if normalise is not None and pixels.dtype == torch.uint8:
            pixels = normalise(pixels.to(self.device, non_blocking=True))
        return pixels.to(self.device, self.dtype, non_blocking=True)
