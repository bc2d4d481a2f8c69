"""Where a run computes: the device and the mixed precision its flags resolve to."""

from __future__ import annotations

import torch

from ..errors import SpatialbenchError


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SpatialbenchError("--device cuda was asked for but torch sees no CUDA device",
                                field="--device", fix="use --device cpu, or install a CUDA build of torch")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """auto: bf16 autocast on a GPU that has it (the field's default for fine-tuning), none on CPU."""
    if precision != "auto":
        return precision
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"


def resolve_stored_dtype(stored: str, card_dtype: str, device: str) -> str:
    """The feature cache's dtype. auto: 16-bit, which halves a real run's cache (BLIP-2's vision patches are
    1.45 MB an image in float32): the card's own dtype where it is 16-bit (no second rounding), else bf16,
    or fp16 on a GPU without bf16 (whose reads and maps would otherwise run in emulation)."""
    if stored != "auto":
        return stored
    if card_dtype in ("bfloat16", "float16"):
        return card_dtype
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "float16" if cuda and not torch.cuda.is_bf16_supported() else "bfloat16"
