"""MDL probing by online code (Voita & Titov, 2020), for the classification tasks.

The training items, in a seeded order, are sent block by block: the first block with the uniform code,
every later one with the bits a probe trained on all earlier blocks assigns to its true labels. A
representation that makes the task easy compresses the labels more (fewer bits, higher compression).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..specs import ProbeSpec
from ..stats import codelength
from .fit import Encoder, ProbeInputs, fit


def online_code(inputs: ProbeInputs, spec: ProbeSpec, headline: str, seed: int, accelerator,
                encoder: Callable[[], Encoder] | None = None, encoder_lr: float | None = None,
                before_fit: Callable[[], None] | None = None,
                on_epoch: Callable[[int, float], None] | None = None, lr: float | None = None) -> codelength.MdlResult:
    """Codelength of the training labels given the visual prompt (one probe fit per block).

    `encoder` makes a fresh trainable encoder per block (the joint regime); `before_fit` runs before
    each fit (the joint regime restores the resampler's starting weights there).
    """
    if inputs.box:
        raise ValueError("online code needs class targets; box tasks have no MDL")
    train = inputs.splits["train"]
    order = np.random.default_rng(seed).permutation(len(train))
    ends = codelength.default_blocks(len(train))
    block_bits = []
    for start, end in zip(ends, ends[1:]):
        splits = {"train": train.subset(order[:start]), "validation": inputs.splits["validation"],
                  "test": train.subset(order[start:end])}
        if before_fit:
            before_fit()
        result = fit(inputs.with_splits(splits), spec, seed, headline, accelerator, on_epoch=on_epoch,
                     encoder=encoder() if encoder else None, encoder_lr=encoder_lr, lr=lr)
        block_bits.append(result.test_loss * (end - start) / math.log(2))  # mean nats -> total bits
    return codelength.online_codelength(list(np.diff(ends)), block_bits, ends[0], inputs.shape.n_out)
