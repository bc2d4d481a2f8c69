"""Shards: many visual prompts in one safetensors file, written once and read row by row.

A shard holds one tensor `prompts` [n, Q, D] in the extraction dtype; its metadata lists each row's
key and the sha256 of each row's bytes (a flipped bit inside the data parses fine, so parsing alone is
not enough). A shard is written to a temporary file as its rows arrive, fsynced once and renamed into
place, so a crash never leaves half of one, and many writers can add shards to one directory at once.
The files are plain safetensors: any safetensors reader opens them.

Rows are read with pread into a buffer, not through a memory map: mapped pages would count towards the
process's resident memory as training touches every row each epoch, while the page cache that pread
fills is the kernel's to evict.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from ..atomic import UMASK

FORMAT = "2"  # 1 was one safetensors file per entry; 2: shards
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


NAMES = {t: name for name, t in DTYPES.items()}
ENTRY_ROOM = 2 * (64 + 6)  # header bytes per row: its key and its sha256, 64 hex digits each, quoted twice in JSON


def _bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().view(torch.uint8).numpy()).cast("B")


def checksum(t: torch.Tensor) -> str:
    return hashlib.sha256(_bytes(t)).hexdigest()


class ShardWriter:
    """One shard, written as rows arrive: each batch goes straight to a temporary file, after room left for
    the header, so no shard is ever held in memory. close() writes the header into that room (padded with
    spaces, as the safetensors format allows), fsyncs once and renames the file into place."""

    def __init__(self, path: Path, row_shape: tuple[int, ...], dtype: torch.dtype, max_rows: int, durable: bool = True):
        self.path, self.row_shape, self.dtype, self.max_rows, self.durable = Path(path), tuple(row_shape), dtype, max_rows, durable
        self.room = 512 + ENTRY_ROOM * max_rows
        self.room += -self.room % 8  # the data starts 8-byte aligned
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.file = open(self.tmp, "wb")
        self.file.seek(8 + self.room)
        self.keys: list[str] = []
        self.sums: list[str] = []

    def add(self, keys: list[str], prompts: torch.Tensor) -> None:
        if len(self.keys) + len(keys) > self.max_rows:
            raise ValueError(f"{self.path}: more than {self.max_rows} rows")
        if tuple(prompts.shape[1:]) != self.row_shape or prompts.dtype != self.dtype:
            raise ValueError(f"{self.path}: rows of {tuple(prompts.shape[1:])} {prompts.dtype}, the shard holds "
                             f"{self.row_shape} {self.dtype}")
        prompts = prompts.contiguous()
        self.sums += [checksum(p) for p in prompts] if self.durable else [""] * len(prompts)
        self.keys += keys
        self.file.write(_bytes(prompts))

    def close(self) -> None:
        n = len(self.keys)
        size = n * torch.empty((), dtype=self.dtype).element_size()
        for s in self.row_shape:
            size *= s
        meta = {"format": FORMAT, "keys": json.dumps(self.keys), "sha256": json.dumps(self.sums)}
        header = json.dumps({"__metadata__": meta, "prompts": {"dtype": NAMES[self.dtype], "shape": [n, *self.row_shape],
                                                               "data_offsets": [0, size]}}).encode()
        if len(header) > self.room:
            raise ValueError(f"{self.path}: header of {len(header)} bytes, room for {self.room}")
        header += b" " * (-len(header) % 8)
        try:
            if len(self.keys) * 2 < self.max_rows:  # mostly empty room (a shard closed early): copy compactly
                self.file.close()
                done = self.tmp.with_suffix(".compact.tmp")
                with open(self.tmp, "rb") as src, open(done, "wb") as dst:
                    dst.write(struct.pack("<Q", len(header)) + header)
                    src.seek(8 + self.room)
                    shutil.copyfileobj(src, dst, 4 * 2**20)
                    self._finish(dst)
                self.tmp.unlink()
                self.tmp = done
            else:
                self.file.seek(0)
                self.file.write(struct.pack("<Q", self.room) + header + b" " * (self.room - len(header)))
                self._finish(self.file)
            os.chmod(self.tmp, 0o666 & ~UMASK)
            os.replace(self.tmp, self.path)
        finally:
            self.file.close()
            if self.tmp.exists():
                self.tmp.unlink()

    def _finish(self, f) -> None:
        f.flush()
        if self.durable:
            os.fsync(f.fileno())
        f.close()


def write_shard(path: Path, keys: list[str], prompts: torch.Tensor, durable: bool = True) -> None:
    """A whole shard at once. `durable`: fsynced (a cache shard); else not (scratch no later process reads)."""
    writer = ShardWriter(path, prompts.shape[1:], prompts.dtype, len(keys), durable)
    writer.add(keys, prompts)
    writer.close()


class BadShard(Exception):
    """A shard that cannot be read whole (truncated, not a shard, or not this format); `keys`: the entries
    its header names, where it could be read."""

    def __init__(self, message: str, keys: list[str] | None = None):
        super().__init__(message)
        self.keys = keys or []


@dataclass
class Shard:
    path: Path
    keys: list[str]
    sums: list[str]
    dtype: torch.dtype
    row_shape: tuple[int, ...]
    offset: int  # of the first row's bytes in the file

    @property
    def row_bytes(self) -> int:
        n = 1
        for s in self.row_shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()

    @classmethod
    def open(cls, path: Path) -> Shard:
        """The shard's header, checked against the file's size (only the header is read)."""
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                (n,) = struct.unpack("<Q", f.read(8))
                if n > size - 8:
                    raise BadShard(f"{path}: header runs past the end of the file")
                header = json.loads(f.read(n))
            meta, info = header.get("__metadata__") or {}, header["prompts"]
            if meta.get("format") != FORMAT:
                raise BadShard(f"{path}: not a format-{FORMAT} shard")
            begin, end = info["data_offsets"]
            shard = cls(Path(path), json.loads(meta["keys"]), json.loads(meta["sha256"]), DTYPES[info["dtype"]],
                        tuple(info["shape"][1:]), 8 + n + begin)
        except BadShard:
            raise
        except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
            raise BadShard(f"{path}: {type(e).__name__}: {e}") from e
        if 8 + n + end > size or len(shard.keys) != info["shape"][0] or len(shard.sums) != len(shard.keys):
            raise BadShard(f"{path}: truncated or inconsistent", shard.keys)
        return shard


class Reader:
    """Rows of many shards, read on demand; one open file per shard."""

    def __init__(self):
        self.files: dict[Path, int] = {}

    def open(self, shard: Shard) -> int:
        fd = self.files.get(shard.path)
        if fd is None:
            fd = self.files[shard.path] = os.open(shard.path, os.O_RDONLY)
        return fd

    def read(self, shard: Shard, row: int, out: torch.Tensor) -> None:
        """Row `row` of `shard` into `out` (a contiguous CPU tensor of the shard's row shape and dtype)."""
        fd = self.open(shard)
        view = memoryview(out.view(torch.uint8).numpy()).cast("B")
        got = os.preadv(fd, [view], shard.offset + row * shard.row_bytes)
        if got != shard.row_bytes:
            raise BadShard(f"{shard.path}: row {row} is cut short")

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()

    def __del__(self):
        self.close()
