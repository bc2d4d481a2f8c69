"""Control tasks (after Hewitt & Liang, 2019): targets relabelled by a mapping fixed per category."""

from __future__ import annotations

import numpy as np


def _category_ids(categories_of_items) -> tuple[np.ndarray, np.ndarray]:
    cats = np.asarray(categories_of_items)
    if cats.ndim != 1 or not np.issubdtype(cats.dtype, np.integer) or (cats < 0).any():
        raise ValueError("categories must be a 1-D array of non-negative integer ids")
    return np.unique(cats, return_inverse=True)


def control_targets(categories_of_items, targets, n_classes: int, seed: int) -> np.ndarray:
    """Control class per item: the true class relabelled by a random permutation fixed for its category.

    Hewitt & Liang map each word type to a random tag; a spatial probe here is given the category
    as input, so a target that depends on the category alone is solved from the query, not the image
    (measured: 1.00). The permutation keeps the need to read the answer from the visual prompt and
    adds one arbitrary category-specific mapping that only the probe's capacity can supply.
    The permutation comes from default_rng([seed, category]), so train and test agree in any order.
    """
    if n_classes < 2:
        raise ValueError("a control task needs at least two classes")
    ids, inv = _category_ids(categories_of_items)
    targets = np.asarray(targets)
    if targets.shape != inv.shape or (targets < 0).any() or (targets >= n_classes).any():
        raise ValueError(f"targets must be one class in [0, {n_classes}) per item")
    perms = np.stack([np.random.default_rng([seed, int(c)]).permutation(n_classes) for c in ids])
    return perms[inv, targets]


def control_boxes(categories_of_items, boxes, seed: int) -> np.ndarray:
    """Control box per item: the true box moved by one of the square's 8 symmetries, fixed per category.

    The box analogue of control_targets: flips and a transpose of the unit square keep every box
    valid and the size distribution intact. Boxes are normalised [N, 4] (x0, y0, x1, y1).
    """
    ids, inv = _category_ids(categories_of_items)
    boxes = np.asarray(boxes, dtype=float)
    if boxes.shape != (len(inv), 4):
        raise ValueError("boxes must be [N, 4] normalised (x0, y0, x1, y1), one per item")
    symmetry = np.array([np.random.default_rng([seed, int(c)]).integers(8) for c in ids])[inv]
    x0, y0, x1, y1 = boxes.T.copy()
    flip_x, flip_y, transpose = symmetry & 1 > 0, symmetry & 2 > 0, symmetry & 4 > 0
    x0[flip_x], x1[flip_x] = 1 - x1[flip_x], 1 - x0[flip_x]
    y0[flip_y], y1[flip_y] = 1 - y1[flip_y], 1 - y0[flip_y]
    x0[transpose], y0[transpose], x1[transpose], y1[transpose] = (
        y0[transpose], x0[transpose], y1[transpose], x1[transpose])
    return np.stack([x0, y0, x1, y1], axis=1)
