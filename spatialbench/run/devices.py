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
