"""The oracle prompt: one token per annotated object, built from the annotations through a fixed embedding.

It is the ceiling of what a visual prompt can give a probe on a task (every object's category and exact
box, nothing else), probed by the same probe, seeds and items as the model; `blind` is the floor. A token:

    [ multi-hot of the words of the object's category name | x0 y0 x1 y1 cx cy w h |
      sin, cos of pi*f*cx and pi*f*cy for f in 1, 2, 4, 8 | 1 (a real object, not padding) ]

Words rather than category ids, so a name never seen whole in training ("purple triangle" in the zero-shot
split) is still made of seen parts. Images with fewer objects are padded with zero tokens; at most
MAX_OBJECTS per image, the largest first.
"""

from __future__ import annotations

import math

import torch

from ..data.examples import Box

FREQUENCIES = (1, 2, 4, 8)
MAX_OBJECTS = 64
BOX_FEATURES = 8 + 4 * len(FREQUENCIES)


def vocabulary(objects: dict[str, list[tuple[str, Box]]]) -> list[str]:
    return sorted({word for objs in objects.values() for name, _ in objs for word in name.split()})


def oracle_shape(objects: dict[str, list[tuple[str, Box]]], images: set[str]) -> tuple[int, int]:
    """(tokens, width) of the oracle prompt over these images."""
    most = max((len(objects.get(i, ())) for i in images), default=0)
    return max(1, min(MAX_OBJECTS, most)), len(vocabulary(objects)) + BOX_FEATURES + 1


def _box_features(box: Box) -> list[float]:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    out = [x0, y0, x1, y1, cx, cy, x1 - x0, y1 - y0]
    for f in FREQUENCIES:
        out += [math.sin(math.pi * f * cx), math.cos(math.pi * f * cx),
                math.sin(math.pi * f * cy), math.cos(math.pi * f * cy)]
    return out


def oracle_features(objects: dict[str, list[tuple[str, Box]]], row_images: list[str]) -> torch.Tensor:
    """[rows, tokens, width]: the oracle prompt of each feature row's image."""
    words = {w: i for i, w in enumerate(vocabulary(objects))}
    n, width = oracle_shape(objects, set(row_images))
    per_image: dict[str, torch.Tensor] = {}
    for image in dict.fromkeys(row_images):
        tokens = torch.zeros(n, width)
        largest = sorted(objects.get(image, ()), key=lambda o: -(o[1][2] - o[1][0]) * (o[1][3] - o[1][1]))[:n]
        for t, (name, box) in enumerate(largest):
            for word in name.split():
                tokens[t, words[word]] = 1.0
            tokens[t, len(words):len(words) + BOX_FEATURES] = torch.tensor(_box_features(box))
            tokens[t, -1] = 1.0
        per_image[image] = tokens
    return torch.stack([per_image[i] for i in row_images])
