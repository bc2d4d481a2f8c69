"""Synthetic probe inputs with a known answer written into the features (or shuffled away from them)."""

import numpy as np
import torch

from spatialbench.probing.fit import ProbeInputs, Split
from spatialbench.probing.heads import ProbeShape
from spatialbench.probing.visual import standardised

N = {"train": 600, "validation": 150, "test": 300}
Q, D, K = 4, 8, 4


def splits_of(targets: dict, query) -> dict:
    out, start = {}, 0
    for name, n in N.items():
        out[name] = Split(torch.arange(start, start + n), query[start:start + n], targets[name],
                          np.full((n, 2), 100.0))
        start += n
    return out


def class_inputs(encode: bool, implicit: bool = False) -> ProbeInputs:
    g = torch.Generator().manual_seed(0)
    total = sum(N.values())
    target = torch.randint(0, K, (total,), generator=g)
    features = torch.randn(total, Q, D, generator=g) * 0.3
    if encode:  # the answer is written into token 0, one-hot
        features[torch.arange(total), 0, target] += 3.0
    else:  # shuffled labels: targets are independent of the features
        target = target[torch.randperm(total, generator=g)]
    if implicit:
        query = torch.randint(0, 5, (total,), generator=g)
        text, mask = torch.randn(5, 3, 6, generator=g), torch.ones(5, 3, dtype=torch.long)
        shape = ProbeShape(Q, D, K, text_dim=6)
    else:
        query = torch.randint(0, 10, (total, 1), generator=g)
        text = mask = None
        shape = ProbeShape(Q, D, K, n_categories=10, n_slots=1)
    split_targets, start = {}, 0
    for name, n in N.items():
        split_targets[name] = target[start:start + n]
        start += n
    splits = splits_of(split_targets, query)
    return ProbeInputs(standardised(features, splits["train"].image), splits, shape, box=False, text=text,
                       text_mask=mask)


def box_inputs() -> ProbeInputs:
    g = torch.Generator().manual_seed(1)
    total = sum(N.values())
    centre = torch.rand(total, 2, generator=g) * 0.5 + 0.25
    size = torch.rand(total, 2, generator=g) * 0.3 + 0.1
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    features = torch.randn(total, Q, D, generator=g) * 0.01
    features[:, 0, :2] += torch.logit(centre)  # linear in what the box head's sigmoid inverts
    features[:, 0, 2:4] += torch.logit(size)
    query = torch.zeros(total, 1, dtype=torch.long)
    targets, start = {}, 0
    for name, n in N.items():
        targets[name] = boxes[start:start + n]
        start += n
    splits = splits_of(targets, query)
    return ProbeInputs(standardised(features, splits["train"].image), splits,
                       ProbeShape(Q, D, 4, n_categories=1, n_slots=1), box=True)
