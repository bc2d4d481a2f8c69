"""Visual prompts, extracted once per unique image and cached on disk as safetensors.

An entry's key is a digest of the adapter fingerprint (checkpoint, revision or content, extraction
point, dtype), the image content and, where the resampler reads text (InstructBLIP), the text, so a
changed checkpoint, image or instruction can never hit a stale entry.
Entries are written to a temporary file and renamed into place, so a crash never leaves half a file.

Images are decoded and preprocessed by DataLoader worker processes (`workers`), a batch ahead of the
model, and entries are written by a background thread, so the device waits on neither.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .adapters.base import Adapter
from .atomic import atomic_write
from .errors import SpatialbenchError

ImageLoader = Callable[[], Image.Image]
Request = tuple[str, "str | None", ImageLoader]  # (image content key, text the resampler reads, loader)


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _checksum(t: torch.Tensor) -> str:
    """Of the tensor's bytes: a flipped bit inside the data parses fine, so parsing alone is not enough."""
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def default_workers() -> int:
    """Decoding workers when none are asked for: one per core the process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


class _Decoded(Dataset):
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
            text, loader, content_key = self.todo[key]
            try:
                images.append(loader())
                kept.append(key)
            except SpatialbenchError as e:  # recorded with its path and skipped, not fatal to the run
                failed[content_key] = str(e)
        return kept, self.adapter.preprocess(images) if images else None, failed


def _worker_on_cpu(_: int) -> None:
    # The worker's copy of the adapter only preprocesses; the model and the device stay with the parent.
    get_worker_info().dataset.adapter.device = torch.device("cpu")


def _batches_in_order(dataset: _Decoded, workers: int, pin: bool) -> Iterable:
    if min(workers, len(dataset)) == 0 or "fork" not in multiprocessing.get_all_start_methods():
        return (dataset[i] for i in range(len(dataset)))  # nothing to decode, or no fork (Windows): here
    # fork: workers inherit the image loaders (closures) and the processor without pickling them
    return DataLoader(dataset, batch_size=None, num_workers=min(workers, len(dataset)), pin_memory=pin,
                      worker_init_fn=_worker_on_cpu, multiprocessing_context="fork", prefetch_factor=2)


class FeatureStore:
    """The on-disk cache of one adapter's visual prompts; counts what it extracts and reuses."""

    def __init__(self, adapter: Adapter, cache_dir: Path, batch_size: int = 32, point: str | None = None,
                 workers: int = 0):
        self.adapter, self.batch_size, self.point = adapter, batch_size, point or adapter.point
        self.workers = workers
        with adapter.at_point(self.point):
            fingerprint, shape = adapter.fingerprint(), adapter.prompt_shape
        self.model_key = digest(fingerprint)[:20]
        self.root = Path(cache_dir) / "features" / self.model_key
        self.extracted = 0  # visual-prompt forward passes, one per image
        self.reused = 0
        self.recomputed = 0  # corrupt entries found and extracted again
        self.failed: dict[str, str] = {}  # content key -> why its image could not be read
        about = self.root / "model.json"
        if not about.exists():
            text = json.dumps({"fingerprint": fingerprint, "shape": list(shape)}, indent=2)
            atomic_write(about, lambda p: p.write_text(text))

    def key(self, content_key: str, text: str | None = None) -> str:
        return digest(self.model_key, content_key, text) if text is not None else digest(self.model_key, content_key)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def _valid(self, key: str) -> bool:
        """Whether the entry is there and whole: it parses, and its tensor matches the checksum written with it."""
        path = self.path(key)
        if not path.exists():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                whole = (f.metadata() or {}).get("sha256") == _checksum(f.get_tensor("prompt"))
        except (SafetensorError, KeyError, OSError, ValueError, RuntimeError):
            whole = False
        if not whole:
            path.unlink(missing_ok=True)  # truncated or corrupt: extract it again
            self.recomputed += 1
        return whole

    def ensure(self, items: Iterable[Request], on_batch: Callable[[int], None] | None = None,
               vision: FeatureStore | None = None, shard: tuple[int, int] = (0, 1)) -> None:
        """Extract every (content key, text, image loader) not yet cached, batch by batch.

        With `vision` (a store at the vision_patches point that already holds these images), prompts are
        resampled from the cached vision features, so the vision encoder runs once per image per run.
        `shard` = (rank, world): this process takes every world-th unique request, counted before the
        cache is looked at, so the shares never depend on what another process has written meanwhile.
        """
        requests: dict[str, Request] = {}
        for content_key, text, loader in items:
            requests.setdefault(self.key(content_key, text), (content_key, text, loader))
        rank, world = shard
        todo: dict[str, tuple[str | None, ImageLoader, str]] = {}
        for key, (content_key, text, loader) in list(requests.items())[rank::world]:
            if self._valid(key):
                self.reused += 1
                if on_batch:
                    on_batch(1)
            else:
                todo[key] = (text, loader, content_key)
        # Batches never mix text-conditioned requests with plain ones.
        plain = [k for k, (text, *_) in todo.items() if text is None]
        conditioned = [k for k, (text, *_) in todo.items() if text is not None]
        batches = [keys[i:i + self.batch_size] for keys in (plain, conditioned) for i in range(0, len(keys), self.batch_size)]
        if vision is not None:  # resampled from cached vision features: nothing to decode
            work = ((batch, None, {}) for batch in batches)
        else:
            work = _batches_in_order(_Decoded(self.adapter, batches, todo), self.workers,
                                     pin=self.adapter.device.type == "cuda")
        with ThreadPoolExecutor(max_workers=1) as writer:  # entries are written while the next batch runs
            pending: list[Future] = []
            for batch, pixels, failed in work:
                self.failed.update(failed)
                if on_batch and failed:
                    on_batch(len(failed))
                if vision is not None:
                    batch = [k for k in batch if todo[k][2] not in vision.failed]
                if not batch:
                    continue
                texts = [todo[k][0] for k in batch]
                texts = None if texts[0] is None else texts
                with self.adapter.at_point(self.point), torch.no_grad():
                    if vision is not None:
                        features = vision.load([(todo[k][2], None) for k in batch]).to(self.adapter.device)
                        prompts = self.adapter.resample(features, texts)
                    else:
                        pixels = pixels.to(self.adapter.device, non_blocking=True)
                        prompts = self.adapter.visual_prompt(pixels, texts)
                    prompts = prompts.detach().cpu()
                self.extracted += len(batch)
                pending += [writer.submit(self._write, key, prompt) for key, prompt in zip(batch, prompts)]
                finished = {f for f in pending if f.done()}
                for f in finished:
                    f.result()  # a failed write stops the run here, not silently
                pending = [f for f in pending if f not in finished]
                if on_batch:
                    on_batch(len(batch))
            for f in pending:
                f.result()

    def _write(self, key: str, prompt: torch.Tensor) -> None:
        t = prompt.contiguous()
        atomic_write(self.path(key), lambda p: save_file({"prompt": t}, str(p), metadata={"sha256": _checksum(t)}))

    def load(self, requests: list[tuple[str, str | None]]) -> torch.Tensor:
        """[N, Q, D] prompts for these (content key, text) pairs, in order; all must have been ensured."""
        return torch.stack([load_file(str(self.path(self.key(k, t))))["prompt"] for k, t in requests])
