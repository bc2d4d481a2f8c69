"""Visual prompts, extracted once per unique image and cached on disk in shards (see shards.py).

An entry's key is a digest of the adapter fingerprint (checkpoint, revision or content, extraction
point, dtype), the dtype the store keeps (16-bit by default in a run), the image content and, where the resampler reads text (InstructBLIP), the text, so a
changed checkpoint, dtype, image or instruction can never hit a stale entry. Entries are written a shard at a time by a background thread, with one fsync per shard;
every row is checked against its checksum before it is reused, and a bad one is extracted again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import SafetensorError, safe_open

from ..adapters.base import Adapter
from ..adapters.layers import reads_image_only
from ..atomic import atomic_write
from .decode import Decoded, ImageLoader, batches_in_order
from .shards import ENTRY_ROOM, FORMAT, NAMES, BadShard, Reader, Shard, ShardWriter, checksum, write_shard

Request = tuple[str, "str | None", ImageLoader]  # (image content key, text the resampler reads, loader)
SHARD_BYTES = 256 * 2**20  # a shard is closed once this much is in it (at most SHARD_ROWS rows: the header's room)...
SHARD_ROWS = 4096
SHARD_SECONDS = 60.0  # ...or this long after it was opened, so a crash loses at most a minute of extraction
MAX_PENDING = 4  # batches handed to the writer thread and not yet on disk: the memory extraction may hold


def disk_bytes(rows: int, row_bytes: int) -> int:
    """On-disk bytes of `rows` entries written in one extraction: the data plus each shard's header room."""
    if rows == 0:
        return 0
    per_shard = max(1, min(SHARD_ROWS, SHARD_BYTES // row_bytes))
    full, rest = divmod(rows, per_shard)
    room = lambda n: 8 + 512 + ENTRY_ROOM * n  # noqa: E731 - a partial shard is copied compactly
    return rows * row_bytes + full * room(per_shard) + (room(rest) if rest else 0)


def digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class Rows:
    """Shard rows in a fixed order, read on demand: rows[i] -> [len(i), Q, D] tensor in the stored dtype."""

    def __init__(self, reader: Reader, places: list[tuple[Shard, int]], dtype: torch.dtype, row_shape: tuple):
        self.reader, self.places, self.dtype, self.row_shape = reader, places, dtype, tuple(row_shape)

    def __len__(self) -> int:
        return len(self.places)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.places), *self.row_shape)

    def __getitem__(self, index) -> torch.Tensor:
        index = torch.arange(len(self.places))[index] if isinstance(index, slice) else torch.as_tensor(index)
        out = torch.empty((len(index), *self.row_shape), dtype=self.dtype)
        for j, i in enumerate(index.tolist()):
            shard, row = self.places[i]
            self.reader.read(shard, row, out[j])
        return out


class _Sink:
    """The shard one store is filling during an ensure: closed when full or a minute old."""

    def __init__(self, store: FeatureStore):
        self.store, self.shard, self.since = store, None, time.monotonic()
        self.keys: set[str] = set()  # given to the writer in this ensure (a text-blind store sees an image per text)

    def add(self, writer: ThreadPoolExecutor, pending: list[Future], keys: list[str], rows: torch.Tensor) -> None:
        fresh = []
        for i, key in enumerate(keys):
            if key not in self.keys:
                self.keys.add(key)
                fresh.append(i)
        if not fresh:
            return
        store = self.store
        if self.shard is None:
            self.shard, self.since = store._open_shard(), time.monotonic()
        pending.append(writer.submit(self.shard.add, [keys[i] for i in fresh], rows[fresh]))
        self.shard.rows += len(fresh)
        if self.shard.rows + store.batch_size > self.shard.max_rows or time.monotonic() - self.since >= SHARD_SECONDS:
            self.close(writer, pending)

    def close(self, writer: ThreadPoolExecutor, pending: list[Future]) -> None:
        if self.shard is not None:
            pending.append(writer.submit(self.store._close, self.shard))
            self.shard = None


class FeatureStore:
    """The on-disk cache of one adapter's visual prompts; counts what it extracts and reuses."""

    def __init__(self, adapter: Adapter, cache_dir: Path, batch_size: int = 32, point: str | None = None,
                 workers: int = 0, shard_bytes: int = SHARD_BYTES, dtype: torch.dtype | None = None):
        """`dtype`: what the entries are kept in (default the adapter's: extraction's own precision)."""
        self.adapter, self.batch_size, self.point = adapter, batch_size, point or adapter.point
        self.workers, self.shard_bytes = workers, shard_bytes
        with adapter.at_point(self.point):
            fingerprint, self.shape = adapter.fingerprint(), tuple(adapter.prompt_shape)
        self.dtype = dtype or adapter.dtype
        self.reads_text = adapter.reads_text and not reads_image_only(self.point)  # else an entry is keyed by image
        stored = NAMES[self.dtype]
        # The fingerprint names the adapter's dtype; a store kept in it has the key caches had before 16-bit
        # storage, so they stay valid (and the one-file-per-entry ones still migrate).
        same = self.dtype == adapter.dtype
        self.model_key = digest(fingerprint)[:20] if same else digest(fingerprint, f"stored {stored}")[:20]
        self.root = Path(cache_dir) / "features" / self.model_key
        self.shards = self.root / "shards"
        self.extracted = 0  # visual-prompt forward passes, one per image
        self.reused = 0
        self.recomputed = 0  # corrupt entries found and extracted again
        self.failed: dict[str, str] = {}  # content key -> why its image could not be read
        self.notes: list[str] = []  # what the store did that the user should hear of (a migrated cache)
        self.reader = Reader()
        self._candidates: dict[str, list[tuple[Shard, int]]] = {}  # key -> places, not yet checked
        self._checked: dict[str, tuple[Shard, int]] = {}  # key -> its place, checksum verified
        self._seen: set[Path] = set()
        self._lost: set[str] = set()  # keys of shards found broken
        about = self.root / "model.json"
        if not about.exists():
            text = json.dumps({"fingerprint": fingerprint, "stored_dtype": stored, "shape": list(self.shape),
                               "format": FORMAT}, indent=2)
            atomic_write(about, lambda p: p.write_text(text))
        self._migrate()

    def key(self, content_key: str, text: str | None = None) -> str:
        if text is None or not self.reads_text:
            return digest(self.model_key, content_key)
        return digest(self.model_key, content_key, text)

    # -- the index: every shard's header, read once -------------------------------------------------------

    def _scan(self) -> None:
        """Index the shards written since the last scan (by this process or any other)."""
        for path in sorted(self.shards.glob("*.safetensors")) if self.shards.exists() else []:
            if path not in self._seen:
                self._seen.add(path)
                try:
                    self._add(Shard.open(path))
                except BadShard as e:
                    path.unlink(missing_ok=True)  # truncated or not a shard: its entries are extracted again
                    self._lost.update(e.keys)

    def _add(self, shard: Shard) -> None:
        if shard.dtype != self.dtype or shard.row_shape != self.shape:
            raise BadShard(f"{shard.path}: {shard.dtype} {shard.row_shape}, not {self.dtype} {self.shape}")
        for row, key in enumerate(shard.keys):
            self._candidates.setdefault(key, []).append((shard, row))

    def _locate(self, key: str) -> bool:
        """Whether the entry is cached whole: the first of its copies whose bytes match their checksum."""
        if key in self._checked:
            return True
        places = self._candidates.pop(key, [])
        buffer = torch.empty(self.shape, dtype=self.dtype)
        for shard, row in places:
            try:
                self.reader.read(shard, row, buffer)
            except (BadShard, OSError):
                continue
            if checksum(buffer) == shard.sums[row]:
                self._checked[key] = (shard, row)
                return True
        if places or key in self._lost:  # every copy was corrupt: extract it again
            self.recomputed += 1
            self._lost.discard(key)
        return False

    def bytes_to_add(self, items: Iterable[Request]) -> int:
        """What extracting these would add to the disk: the entries the index lacks. Counted from the shards'
        headers, no row read, so an entry found corrupt during extraction (written again) is not counted."""
        self._scan()
        keys = {self.key(content_key, text) for content_key, text, _ in items}
        missing = sum(1 for k in keys if k not in self._checked and k not in self._candidates)
        row = torch.empty((), dtype=self.dtype).element_size()
        for s in self.shape:
            row *= s
        return disk_bytes(missing, row)

    # -- extraction -------------------------------------------------------------------------------------------

    def ensure(self, items: Iterable[Request], on_batch: Callable[[int], None] | None = None,
               vision: FeatureStore | None = None, shard: tuple[int, int] = (0, 1),
               also: list[FeatureStore] = ()) -> None:
        """Extract every (content key, text, image loader) not yet cached, batch by batch.

        With `vision` (a store at the vision_patches point that already holds these images), prompts are
        resampled from the cached vision features, so the vision encoder runs once per image per run.
        With `also` (stores of the same adapter at other points or layers), one forward fills them all: a
        request is extracted when any of them lacks it, and each store gets the rows it lacks.
        `shard` = (rank, world): this process takes every world-th unique request, counted before the
        cache is looked at, so the shares never depend on what another process has written meanwhile.
        """
        if vision is not None and also:
            raise ValueError("ensure: `vision` resamples cached features; `also` needs the whole forward")
        group = [self, *also]
        requests: dict[str, Request] = {}
        for content_key, text, loader in items:
            requests.setdefault(self.key(content_key, text), (content_key, text, loader))
        rank, world = shard
        for store in group:
            store._scan()
        todo: dict[str, tuple[str | None, ImageLoader, str, list[FeatureStore]]] = {}
        for key, (content_key, text, loader) in list(requests.items())[rank::world]:
            lacking = [st for st in group if not st._locate(st.key(content_key, text))]
            if not lacking:
                self.reused += 1
                if on_batch:
                    on_batch(1)
            else:
                todo[key] = (text, loader, content_key, lacking)
        # Batches never mix text-conditioned requests with plain ones.
        plain = [k for k, (text, *_) in todo.items() if text is None]
        conditioned = [k for k, (text, *_) in todo.items() if text is not None]
        batches = [keys[i:i + self.batch_size] for keys in (plain, conditioned) for i in range(0, len(keys), self.batch_size)]
        if vision is not None:  # resampled from cached vision features: nothing to decode
            work = ((batch, None, {}) for batch in batches)
        else:
            work = batches_in_order(Decoded(self.adapter, batches, todo), self.workers,
                                    pin=self.adapter.device.type == "cuda")
        sinks = {id(st): _Sink(st) for st in group}
        with ThreadPoolExecutor(max_workers=1) as writer:  # rows are written while the next batches run
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
                with torch.no_grad():
                    if vision is not None:
                        features = vision.rows([(todo[k][2], None) for k in batch])[:]
                        features = features.to(self.adapter.device, self.adapter.dtype)  # stored in 16 bits
                        with self.adapter.at_point(self.point):
                            outs = {self.point: self.adapter.resample(features, texts)}
                    else:
                        outs = self.adapter.prompts_at(self.adapter.finish_pixels(pixels), [st.point for st in group],
                                                       texts)
                self.extracted += len(batch)
                for st in group:
                    rows = [i for i, k in enumerate(batch) if st in todo[k][3]]
                    keys = [st.key(todo[batch[i]][2], todo[batch[i]][0]) for i in rows]
                    sinks[id(st)].add(writer, pending, keys, outs[st.point][rows].detach().to("cpu", st.dtype))
                while pending and (pending[0].done() or len(pending) > MAX_PENDING * len(group)):
                    pending.pop(0).result()  # a failed write stops the run here, not silently
                if on_batch:
                    on_batch(len(batch))
            for sink in sinks.values():
                sink.close(writer, pending)
            for f in pending:
                f.result()

    def _open_shard(self) -> ShardWriter:
        row_bytes = torch.empty(self.shape, dtype=self.dtype).nbytes
        shard = ShardWriter(self.shards / f"{uuid.uuid4().hex}.safetensors", self.shape, self.dtype,
                            max_rows=max(self.batch_size, min(SHARD_ROWS, self.shard_bytes // row_bytes)))
        shard.rows = 0  # rows handed to the writer thread so far
        return shard

    def _close(self, writer: ShardWriter) -> None:
        writer.close()
        self._written(writer.path, writer.keys)

    def _write(self, keys: list[str], prompts: list[torch.Tensor]) -> None:
        path = self.shards / f"{uuid.uuid4().hex}.safetensors"
        write_shard(path, keys, torch.cat(prompts))
        self._written(path, keys)

    def _written(self, path: Path, keys: list[str]) -> None:
        shard = Shard.open(path)
        self._seen.add(path)
        for row, key in enumerate(keys):  # just written from these tensors: no need to read them back
            self._checked.setdefault(key, (shard, row))

    # -- reading ----------------------------------------------------------------------------------------------

    def rows(self, requests: list[tuple[str, str | None]]) -> Rows:
        """A view of the entries for these (content key, text) pairs, in order; all must have been ensured."""
        places = []
        for content_key, text in requests:
            key = self.key(content_key, text)
            if not self._locate(key):
                self._scan()
                if not self._locate(key):
                    raise KeyError(f"no cached entry for {content_key!r} (text {text!r}) in {self.root}")
            places.append(self._checked[key])
        return Rows(self.reader, places, self.dtype, self.shape)

    def load(self, requests: list[tuple[str, str | None]]) -> torch.Tensor:
        """[N, Q, D] prompts for these pairs, in memory: for a few rows only (tests, small tools)."""
        return self.rows(requests)[:]

    # -- scratch: rows that live as long as their reader ----------------------------------------------------

    @staticmethod
    def scratch(folder: Path | None, chunks: Iterable[torch.Tensor]) -> Rows:
        """Rows held on disk rather than in memory (a baseline's prompts drawn per seed): each chunk a shard,
        unlinked as soon as it is open, so the space goes back when the Rows do, or when the process dies."""
        reader, places, first = Reader(), [], None
        folder = Path(folder or tempfile.gettempdir())
        for chunk in chunks:
            path = Path(folder) / f".scratch-{uuid.uuid4().hex}.safetensors"
            write_shard(path, [""] * len(chunk), chunk, durable=False)
            shard = Shard.open(path)
            reader.open(shard)
            path.unlink()
            places += [(shard, row) for row in range(len(chunk))]
            first = first if first is not None else chunk
        return Rows(reader, places, first.dtype, first.shape[1:])

    # -- caches written before shards -------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Move entries of the one-file-per-entry layout (root/xx/key.safetensors) into shards; drop the ones
        that are not whole (they are extracted again)."""
        legacy = sorted(self.root.glob("??/*.safetensors"))
        if not legacy:
            return
        keys, prompts, dropped = [], [], 0
        for path in legacy:
            try:
                with safe_open(str(path), framework="pt") as f:
                    t, want = f.get_tensor("prompt"), (f.metadata() or {}).get("sha256")
                if want != checksum(t) or tuple(t.shape) != self.shape:
                    raise ValueError("checksum or shape")
                keys.append(path.stem)
                prompts.append(t.to(self.dtype)[None])
            except (SafetensorError, KeyError, OSError, ValueError, RuntimeError):
                dropped += 1
        for i in range(0, len(keys), 4096):
            self._write(keys[i:i + 4096], prompts[i:i + 4096])
        for path in legacy:
            path.unlink(missing_ok=True)
        for folder in {path.parent for path in legacy}:
            try:
                folder.rmdir()
            except OSError:  # not empty: another process's migration, or the user's own files
                pass
        self.notes.append(f"feature cache {self.root}: {len(keys)} entries of the old one-file-per-entry layout "
                          f"moved into shards" + (f"; {dropped} not whole, extracted again" if dropped else ""))
