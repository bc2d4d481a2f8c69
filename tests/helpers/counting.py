"""A cheap, deterministic adapter that counts its forwards (feature-store and memory tests)."""

import numpy as np
import torch

from spatialbench.adapters.base import Adapter
from spatialbench.specs import ModelCard


class CountingAdapter(Adapter):
    """Prompt = mean colour of the image, repeated: cheap, deterministic, and it counts its forwards."""

    def __init__(self, tag="a"):
        super().__init__(ModelCard(name="c", family="counting", checkpoint="none"))
        self.tag, self.forwards = tag, 0

    @classmethod
    def load(cls, card, **kw):
        return cls()

    def preprocess(self, images):
        return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32)).mean((0, 1)) for i in images])

    def vision_features(self, pixel_values):
        self.forwards += len(pixel_values)
        return pixel_values[:, None, :].repeat(1, 2, 1)

    def resample(self, vision_features, text=None):
        return vision_features

    def embed_text(self, texts):
        raise NotImplementedError

    def resampler_parameters(self):
        return []

    def fingerprint(self):
        return f"counting|{self.tag}"

    def shape_at(self, point):
        return (2, 3)

    text_dim = 0
