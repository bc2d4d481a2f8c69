"""What a probe reads for each feature row, a batch at a time, so no condition holds a task's features.

Rows come from the feature store (read on demand), from scratch shards (a baseline's prompts drawn per
seed) or from a small tensor (the oracle's, a test's). Standardisation statistics are computed in one
streaming pass over the training rows and applied per batch on the device.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

CHUNK_BYTES = 4 * 2**20  # of float32 rows per read in a streaming pass (about 4x that in flight): bounded whatever the prompt size
RESIDENT_BYTES = 1 * 2**30  # a task's prompts (float32, mapped and standardised) up to this are held on the device...
RESIDENT_SHARE = 4  # ...and up to this fraction (1/4) of the memory the process may still take there


def resident_budget(device: torch.device | str = "cpu") -> int:
    """Bytes a task's prompts may hold on `device`: a quarter of what is free there (on the host, MemAvailable,
    and what RLIMIT_DATA still allows where it is set), at most RESIDENT_BYTES."""
    device = torch.device(device)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _host_available()
    return min(RESIDENT_BYTES, free // RESIDENT_SHARE)


def _host_available() -> int:
    import resource

    free = 2**62
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
            free = min(free, max(0, limit - used))
    except (OSError, StopIteration, ValueError):  # not Linux: the fixed cap alone
        pass
    return free


def chunk_rows(shape: tuple[int, ...]) -> int:
    """Rows of this [n, Q, D] shape in one streaming chunk."""
    row = 4
    for s in shape[1:]:
        row *= s
    return max(1, min(256, CHUNK_BYTES // row))


class Moments:
    """Per-dimension mean and standard deviation over tokens and rows, accumulated chunk by chunk (float64)."""

    def __init__(self):
        self.n, self.total, self.squares = 0, None, None

    def add(self, chunk: torch.Tensor) -> None:
        x = chunk.double().reshape(-1, chunk.shape[-1])
        self.n += len(x)
        s, q = x.sum(0), (x * x).sum(0)
        self.total, self.squares = (s, q) if self.total is None else (self.total + s, self.squares + q)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), each [1, 1, D] float32; std is the unbiased one, floored at 1e-6."""
        mean = self.total / self.n
        var = ((self.squares - self.n * mean * mean) / max(self.n - 1, 1)).clamp(min=0)
        return mean.float()[None, None], var.sqrt().float().clamp(min=1e-6)[None, None]


Map = Callable[[torch.Tensor], torch.Tensor]


class Visual:
    """Feature rows [n, Q, D] (a Rows view or a tensor), read a batch at a time: optionally through a fixed
    map (the stored tensor -> the prompt, e.g. a BLIP-2's language projection of its Q-Former output), then
    standardised."""

    def __init__(self, rows, stats: tuple[torch.Tensor, torch.Tensor] | None = None, map: Map | None = None,
                 shape: tuple[int, ...] | None = None):
        self.rows, self.stats, self.map = rows, stats, map
        self._shape = tuple(shape) if shape is not None else tuple(rows.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """[n, Q, D] of what batch() gives (after the map)."""
        return self._shape

    def __len__(self) -> int:
        return self.shape[0]

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rows `index` as float32 on `device`, standardised there."""
        x = self.rows[index]
        if torch.device(device).type == "cuda":
            x = x.pin_memory()
        x = self.map(x) if self.map is not None else x  # the map moves the rows to its module's device
        x = x.to(device, non_blocking=True).float()
        if self.stats is None:
            return x
        mean, std = self.stats
        return (x - mean.to(x.device)) / std.to(x.device)

    def resident(self, device: torch.device | str = "cpu", budget: int | None = None) -> Visual:
        """Every row as batch() gives it, computed once into one tensor on `device`, when its float32 bytes fit
        `budget` (default resident_budget: then a batch is one index, no read, map or allocation but its
        own); else these rows."""
        budget = resident_budget(device) if budget is None else budget
        n = 4
        for s in self.shape:
            n *= s
        if n > budget or self.rows is None:
            return self
        index = torch.arange(len(self))
        step = chunk_rows(self.shape)
        rows = torch.cat([self.batch(index[i:i + step], device) for i in range(0, len(index), step)])
        return Visual(rows)

    def chunks(self, index: torch.Tensor) -> Iterable[torch.Tensor]:
        """Rows `index` through the map, unstandardised, a bounded chunk at a time (for a streaming pass)."""
        step = chunk_rows(self.shape)
        for i in range(0, len(index), step):
            x = self.rows[index[i:i + step]]
            yield self.map(x) if self.map is not None else x


class Constant(Visual):
    """The same prompt (zeros) for every row: the blind baseline, which needs no storage at all."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__(None, shape=shape)

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros((len(index), *self._shape[1:]), device=device)


def moments(chunks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    m = Moments()
    for chunk in chunks:
        m.add(chunk)
    return m.result()


def standardised(rows, train_rows: torch.Tensor, map: Map | None = None, shape: tuple[int, ...] | None = None) -> Visual:
    """Per-dimension z-scores with the training rows' statistics: prompts vary in scale by orders of magnitude.
    `map` (and the `shape` it gives): a fixed map applied to each batch of rows first."""
    plain = Visual(rows, map=map, shape=shape)
    return Visual(rows, moments(plain.chunks(train_rows.unique())), map, shape)
