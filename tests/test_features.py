"""The feature cache: one extraction per image, content-addressed, crash-safe, self-healing."""

import numpy as np
import torch
from PIL import Image

from spatialbench.adapters.base import Adapter
from spatialbench.features import FeatureStore
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

    prompt_shape = (2, 3)
    text_dim = 0


def _images(n):
    return {f"k{i}": (lambda i=i: Image.new("RGB", (8, 8), (i, 2 * i, 3 * i))) for i in range(n)}


def test_each_image_is_extracted_once_and_reused(tmp_path):
    adapter = CountingAdapter()
    store = FeatureStore(adapter, tmp_path, batch_size=3)
    images = _images(7)
    store.ensure([*images.items(), *images.items()])  # duplicates in one request
    assert store.extracted == 7 and adapter.forwards == 7
    again = FeatureStore(adapter, tmp_path)
    again.ensure(images.items())
    assert again.extracted == 0 and again.reused == 7 and adapter.forwards == 7
    prompts = again.load(["k2", "k5"])
    assert prompts.shape == (2, 2, 3)
    assert torch.equal(prompts[0, 0], torch.tensor([2.0, 4.0, 6.0]))


def test_a_different_model_never_hits_another_models_entries(tmp_path):
    FeatureStore(CountingAdapter("a"), tmp_path).ensure(_images(3).items())
    other = FeatureStore(CountingAdapter("b"), tmp_path)
    other.ensure(_images(3).items())
    assert other.extracted == 3 and other.reused == 0


def test_a_corrupt_entry_is_detected_and_extracted_again(tmp_path):
    store = FeatureStore(CountingAdapter(), tmp_path)
    store.ensure(_images(3).items())
    path = store.path(store.key("k1"))
    path.write_bytes(path.read_bytes()[:20])  # truncated, as by a crash mid-write elsewhere
    again = FeatureStore(CountingAdapter(), tmp_path)
    again.ensure(_images(3).items())
    assert again.recomputed == 1 and again.extracted == 1 and again.reused == 2
    assert torch.equal(again.load(["k1"])[0, 0], torch.tensor([1.0, 2.0, 3.0]))


def test_no_temporary_files_are_left_behind(tmp_path):
    FeatureStore(CountingAdapter(), tmp_path).ensure(_images(5).items())
    assert not list(tmp_path.rglob("*.tmp"))
    assert len(list(tmp_path.rglob("*.safetensors"))) == 5
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pt"))
