"""The oracle prompt: one token per annotated object, with its category's words and its exact box."""

import math

import torch

from spatialbench.data.synthetic import build_task_data
from spatialbench.probing.oracle import BOX_FEATURES, oracle_features, oracle_shape, vocabulary
from spatialbench.specs import SyntheticDataset

OBJECTS = {
    "a.jpg": [("red circle", (0.1, 0.2, 0.3, 0.4)), ("blue square", (0.5, 0.5, 0.9, 0.7))],
    "b.jpg": [("purple triangle", (0.0, 0.0, 0.5, 0.5))],
}


def test_each_object_becomes_one_token_with_its_words_and_box():
    words = vocabulary(OBJECTS)
    assert words == ["blue", "circle", "purple", "red", "square", "triangle"]
    features = oracle_features(OBJECTS, ["a.jpg", "b.jpg", "a.jpg"])
    assert features.shape == (3, 2, len(words) + BOX_FEATURES + 1) == (3, *oracle_shape(OBJECTS, {"a.jpg", "b.jpg"}))
    assert torch.equal(features[0], features[2])  # rows of one image (e.g. one per text) share its prompt
    big, small = features[0]  # the largest object first
    assert big[[words.index("blue"), words.index("square")]].tolist() == [1, 1] and big[:len(words)].sum() == 2
    x0, y0, x1, y1 = 0.5, 0.5, 0.9, 0.7
    box = big[len(words):len(words) + 8].tolist()
    assert box == torch.tensor([x0, y0, x1, y1, 0.7, 0.6, x1 - x0, y1 - y0]).tolist()
    assert math.isclose(big[len(words) + 8].item(), math.sin(math.pi * 0.7), rel_tol=1e-6)
    assert big[-1] == 1 and small[-1] == 1 and small[words.index("red")] == 1
    padding = features[1, 1]
    assert padding.abs().sum() == 0  # b.jpg has one object: its second token is padding


def test_a_held_out_name_is_made_of_words_seen_elsewhere():
    ds = SyntheticDataset(sizes={"train": 30, "validation": 5, "test": 10}, zero_shot=True)
    data = build_task_data("vsr", ds, {"train": "train", "validation": "validation", "test": "test"})
    assert set(data.image_ids()) <= set(data.objects)
    scene = data.images.scenes[data.splits["test"][0].image_id]
    assert data.objects[scene.id] == [(o.name, scene.normalised(o)) for o in scene.objects]
    assert len(vocabulary(data.objects)) == 10  # six colours and four shapes, not 24 category ids
