"""Per-layer extraction points: where in one forward pass each layer's output is read.

A family declares its layers as taps, named `<stage>.<n>` (specs.is_layer; n counts from 1 in forward order):
`vision.n` the vision encoder's n-th block, `resampler.n` the resampler's n-th layer. A tap reads a module's output (or,
where the layer's output is a residual stream no module returns, the input of the module after it) with a
forward hook, so every layer of an image comes from the one forward that also gives the prompt. The same
taps on the full Hugging Face model give the model's own hidden states, which `check-adapter` compares
bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
VISION_DEPTHS = 4  # vision-encoder blocks tapped: evenly spaced, the last one included


@dataclass(frozen=True)
class Tap:
    module: str  # path below the root the adapter runs (its parts) or the full model's matching module
    like: str  # the extraction point whose (Q, D) this layer's output shares
    read: str = "output"  # "output": the module's output; "input": its first input (the stream entering it)
    tokens: int | None = None  # keep only the leading tokens (the queries, where text tokens follow them)

    def take(self, value) -> torch.Tensor:
        x = value[0] if isinstance(value, (tuple, list)) else value
        if not isinstance(x, torch.Tensor):  # a ModelOutput
            x = x[0]
        return x[:, : self.tokens] if self.tokens is not None else x


def stage_of(name: str) -> str:
    return name.split(".", 1)[0]


def reads_image_only(point: str) -> bool:
    """Whether a point or layer lies before the resampler, so no text the resampler reads can change it."""
    return point == "vision_patches" or stage_of(point) == "vision"


def vision_depths(blocks: int, n: int = VISION_DEPTHS) -> list[int]:
    """Up to n evenly spaced block numbers of a vision encoder, 1-based, ending at its last block."""
    return sorted({max(1, round(blocks * j / n)) for j in range(1, n + 1)})


def stack(stage: str, path: str, numbers: list[int], like: str, **kw) -> dict[str, Tap]:
    """Taps `<stage>.<n>` on the modules `<path>.<n - 1>` (a ModuleList of blocks)."""
    return {f"{stage}.{n}": Tap(f"{path}.{n - 1}", like, **kw) for n in numbers}


@contextmanager
def tapped(root: torch.nn.Module, taps: dict[str, Tap]):
    """While open, every forward through `root` records each tap's tensor into the yielded dict."""
    got: dict[str, torch.Tensor] = {}
    handles = []
    for name, tap in taps.items():
        module = root.get_submodule(tap.module)
        if tap.read == "input":
            hook = lambda m, args, kwargs, name=name, tap=tap: got.__setitem__(  # noqa: E731
                name, tap.take(args if args else next(iter(kwargs.values()))))
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        else:
            hook = lambda m, args, out, name=name, tap=tap: got.__setitem__(name, tap.take(out))  # noqa: E731
            handles.append(module.register_forward_hook(hook))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def select(declared: list[str], asked: str) -> list[str]:
    """`--layers all` or a comma list of layer names (a bare number n means resampler.n), in forward order."""
    from ..errors import SpatialbenchError

    if not declared:
        raise SpatialbenchError("this adapter declares no layers", field="--layers",
                                fix="run without --layers, or add layer taps to the family (docs/adding-a-model.md)")
    if asked.strip() == "all":
        return list(declared)
    names = [f"resampler.{a}" if a.isdigit() else a for a in (x.strip() for x in asked.split(",")) if a]
    unknown = [n for n in names if n not in declared]
    if unknown or not names:
        raise SpatialbenchError(f"--layers {asked}: no layer {', '.join(unknown) or '(none given)'}", field="--layers",
                                fix=f"use 'all' or some of {', '.join(declared)}")
    return [n for n in declared if n in names]
