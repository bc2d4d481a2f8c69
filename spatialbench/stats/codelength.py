"""MDL by online code (Voita & Titov, 2020): block boundaries and the codelength of the labels."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MdlResult:
    codelength_bits: float
    uniform_bits: float
    compression: float            # uniform_bits / codelength_bits


# Cumulative block ends in units of 0.01 % of the data (Voita & Titov 2020), kept
# as integers so that n * fraction is exact.
_BLOCK_ENDS = (10, 20, 40, 80, 160, 320, 625, 1250, 2500, 5000, 10000)


def default_blocks(n: int) -> list[int]:
    """Cumulative block end indices for n items: 0.1 %, 0.2 %, ..., 50 %, 100 %.

    Ends are floored, raised to at least 1 and deduplicated; the last is n. Use
    first_block_size = ends[0] and block_sizes = np.diff(ends) for online_codelength.
    """
    if n < 1:
        raise ValueError("need at least one item")
    return sorted({max(1, n * e // 10000) for e in _BLOCK_ENDS})


def online_codelength(
    block_sizes: list[int], block_nll_bits: list[float], first_block_size: int, n_classes: int,
) -> MdlResult:
    """Online (prequential) codelength, Voita & Titov (2020).

    The first block is sent with the uniform code, first_block_size * log2 K bits.
    block_sizes / block_nll_bits describe the later blocks in order: each is sent
    with the bits (sum of -log2 p of its true labels) assigned by a probe trained
    on all earlier blocks; the caller trains and supplies those sums.
    """
    if len(block_sizes) != len(block_nll_bits) or n_classes < 2:
        raise ValueError("need one bit count per later block, and at least two classes")
    if first_block_size < 1 or any(s < 1 for s in block_sizes) or any(not b >= 0 for b in block_nll_bits):
        raise ValueError("block sizes must be positive and block bits non-negative")
    bits_per_item = math.log2(n_classes)
    codelength = first_block_size * bits_per_item + float(sum(block_nll_bits))
    uniform = (first_block_size + sum(block_sizes)) * bits_per_item
    return MdlResult(codelength, uniform, uniform / codelength)
