"""Visual prompts, extracted once per unique image and cached on disk as safetensors.

An entry's key is a digest of the adapter fingerprint (checkpoint, revision or content, extraction
point, dtype), the image content and, where the resampler reads text (InstructBLIP), the text, so a
changed checkpoint, image or instruction can never hit a stale entry.
Entries are written to a temporary file and renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import torch
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


class FeatureStore:
    """The on-disk cache of one adapter's visual prompts; counts what it extracts and reuses."""

    def __init__(self, adapter: Adapter, cache_dir: Path, batch_size: int = 32, point: str | None = None):
        self.adapter, self.batch_size, self.point = adapter, batch_size, point or adapter.point
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
        for batch in batches:
            if vision is not None:
                batch = [k for k in batch if todo[k][2] not in vision.failed]
            else:
                batch, images = self._read(batch, todo, on_batch)
            if not batch:
                continue
            texts = [todo[k][0] for k in batch]
            texts = None if texts[0] is None else texts
            with self.adapter.at_point(self.point), torch.no_grad():
                if vision is not None:
                    features = vision.load([(todo[k][2], None) for k in batch]).to(self.adapter.device)
                    prompts = self.adapter.resample(features, texts).detach().cpu()
                else:
                    prompts = self.adapter.visual_prompt(self.adapter.preprocess(images), texts).detach().cpu()
            self.extracted += len(batch)
            for key, prompt in zip(batch, prompts):
                atomic_write(self.path(key), lambda p, t=prompt.contiguous(): save_file(
                    {"prompt": t}, str(p), metadata={"sha256": _checksum(t)}))
            if on_batch:
                on_batch(len(batch))

    def _read(self, batch: list[str], todo: dict, on_batch) -> tuple[list[str], list[Image.Image]]:
        """Decode a batch; an unreadable image is recorded (with its path) and skipped, not fatal to the run."""
        kept, images = [], []
        for key in batch:
            text, loader, content_key = todo[key]
            try:
                images.append(loader())
                kept.append(key)
            except SpatialbenchError as e:
                self.failed[content_key] = str(e)
                if on_batch:
                    on_batch(1)
        return kept, images

    def load(self, requests: list[tuple[str, str | None]]) -> torch.Tensor:
        """[N, Q, D] prompts for these (content key, text) pairs, in order; all must have been ensured."""
        return torch.stack([load_file(str(self.path(self.key(k, t))))["prompt"] for k, t in requests])
