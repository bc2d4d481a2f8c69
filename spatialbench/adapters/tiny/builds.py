"""Every tiny checkpoint by name (`checkpoint: tiny:<name>` in a card), built on first use into the cache.

A build makes a model from a config and saves it with save_pretrained (sharded, like a Hub checkpoint) next
to a tokenizer and an image processor; adapters then load it exactly as they load a downloaded checkpoint.
BUILDS is a plain dict: a benchmark or a test adds a build of its own to it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...errors import SpatialbenchError
from ...testbed import build as testbed
from . import blip2, idefics, idefics2, instructblip, kosmos2, llava

BUILD_VERSION = 3  # bump when a builder changes, so stale tiny checkpoints are rebuilt (3: the testbed's vision budget)
RANDOM = "random"


@dataclass(frozen=True)
class Build:
    """make(out, *the directories of `needs`) writes the checkpoint into `out`; `weights` says what they are."""

    make: Callable[..., None]
    weights: str = RANDOM
    needs: tuple[str, ...] = ()


BUILDS: dict[str, Build] = {
    "blip2-tiny": Build(blip2.build_blip2_tiny),
    "blip2-t5-tiny": Build(blip2.build_blip2_t5_tiny),
    "instructblip-tiny": Build(instructblip.build_instructblip_tiny),
    "instructblip-t5-tiny": Build(instructblip.build_instructblip_t5_tiny),
    "idefics-tiny": Build(idefics.build_idefics_tiny),
    "idefics2-tiny": Build(idefics2.build_idefics2_tiny),
    "kosmos2-tiny": Build(kosmos2.build_kosmos2_tiny),
    "kosmos2-224-tiny": Build(kosmos2.build_kosmos2_224_tiny),
    "llava-tiny": Build(llava.build_llava_tiny),
    # The pretrained testbed: one vision encoder shared by both captioners (spatialbench.testbed).
    "testbed-vision": Build(testbed.pretrain_vision, testbed.PRETRAINED),
    "blip2-pretrained": Build(testbed.captioner("names"), testbed.PRETRAINED, needs=("testbed-vision",)),
    "blip2-pretrained-spatial": Build(testbed.captioner("names+boxes"), testbed.PRETRAINED,
                                      needs=("testbed-vision",)),
}


def tiny_weights(name: str) -> str:
    """What a build's weights are, for `ls models` and a run's first line."""
    return BUILDS[name].weights if name in BUILDS else RANDOM


def tiny_names() -> list[str]:
    return sorted(BUILDS)


def materialise(name: str, cache_dir: Path) -> Path:
    """The directory of tiny checkpoint `name`, built on first use; safe when runs race."""
    if name not in BUILDS:
        raise SpatialbenchError(f"unknown tiny model '{name}'", field="checkpoint", fix=f"one of {tiny_names()}")
    build = BUILDS[name]
    target = Path(cache_dir) / "tiny" / f"{name}-v{BUILD_VERSION}"
    if (target / "config.json").is_file():
        return target
    needed = [materialise(other, cache_dir) for other in build.needs]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    try:
        torch.manual_seed(0)  # a tiny checkpoint is the same weights everywhere
        build.make(tmp, *needed)
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # lost a race only if the winner finished
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
