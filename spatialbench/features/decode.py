"""Images decoded and preprocessed a batch ahead of the model: in DataLoader worker processes where
there are cores for them, so a GPU never waits on PIL."""

from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Iterable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..adapters.base import Adapter
from ..errors import SpatialbenchError

ImageLoader = Callable[[], Image.Image]


def default_workers() -> int:
    """Decoding workers when none are asked for: one per core the process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


class Decoded(Dataset):
    """Extraction batches, each decoded and preprocessed where the DataLoader runs it: in a worker process
    (with its own copy of the adapter, kept on the CPU) or, with no workers, in this one."""

    def __init__(self, adapter: Adapter, batches: list[list[str]], todo: dict):
        self.adapter, self.batches, self.todo = adapter, batches, todo

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[list[str], torch.Tensor | None, dict[str, str]]:
        """(keys decoded, their pixel batch, content key -> why an image could not be read)."""
        kept, images, failed = [], [], {}
        for key in self.batches[i]:
            text, loader, content_key = self.todo[key][:3]
            try:
                images.append(loader())
                kept.append(key)
            except SpatialbenchError as e:  # recorded with its path and skipped, not fatal to the run
                failed[content_key] = str(e)
        return kept, self.adapter.decode_pixels(images) if images else None, failed


def _worker_on_cpu(_: int) -> None:
    # The worker's copy of the adapter only preprocesses; the model and the device stay with the parent.
    get_worker_info().dataset.adapter.device = torch.device("cpu")


def batches_in_order(dataset: Decoded, workers: int, pin: bool) -> Iterable:
    if min(workers, len(dataset)) == 0 or "fork" not in multiprocessing.get_all_start_methods():
        return (dataset[i] for i in range(len(dataset)))  # nothing to decode, or no fork (Windows): here
    # fork: workers inherit the image loaders (closures) and the processor without pickling them
    return DataLoader(dataset, batch_size=None, num_workers=min(workers, len(dataset)), pin_memory=pin,
                      worker_init_fn=_worker_on_cpu, multiprocessing_context="fork", prefetch_factor=2)
