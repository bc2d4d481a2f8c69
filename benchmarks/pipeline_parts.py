"""Where the pipeline figure's worker speedup goes: the same JPEGs through three ever-fuller pipelines, each
with no worker and with 2, in one process (`python benchmarks/pipeline_parts.py`; docs/benchmarks.md).

- plain:  open, decode, PIL-resize to 224 and stack, in a DataLoader (no processor, no store);
- decode: the adapter's own decode_pixels (the image processor up to its resize: what a worker runs);
- ensure: FeatureStore.ensure with an instant model (decode in workers, finish and shard writes here).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).parent))
import midsize  # noqa: E402
import speed  # noqa: E402

from spatialbench.features import FeatureStore  # noqa: E402
from spatialbench.features.decode import Decoded, batches_in_order  # noqa: E402


class Plain(Dataset):
    def __init__(self, loaders, batch_size):
        self.loaders, self.batch_size = loaders, batch_size

    def __len__(self):
        return -(-len(self.loaders) // self.batch_size)

    def __getitem__(self, i):
        part = self.loaders[i * self.batch_size:(i + 1) * self.batch_size]
        return torch.from_numpy(np.stack([np.asarray(f().resize((224, 224), Image.BICUBIC)) for f in part]))


def main(n: int = 256, batch_size: int = 32, rounds: int = 3) -> dict:
    work = Path(tempfile.mkdtemp(prefix="pipeline-parts-"))
    try:
        adapter = speed.load_adapter(midsize.write_card(work, work / "cache", "float32"), "cpu", work / "cache")
        speed.instant(adapter)
        requests = speed.jpeg_requests(work / "jpegs", n)
        todo = {key: (None, loader, key) for key, _, loader in requests}
        keys = list(todo)
        batches = [keys[i:i + batch_size] for i in range(0, n, batch_size)]

        def plain(w):
            data = Plain([loader for _, _, loader in requests], batch_size)
            for _ in (DataLoader(data, batch_size=None, num_workers=w, multiprocessing_context="fork") if w
                      else (data[i] for i in range(len(data)))):
                pass

        def decode(w):
            for _ in batches_in_order(Decoded(adapter, batches, todo), w, pin=False):
                pass

        def ensure(w):
            cache = work / f"store-{w}"
            FeatureStore(adapter, cache, batch_size, workers=w).ensure(requests)
            shutil.rmtree(cache)

        out = {}
        for name, run in (("plain", plain), ("decode", decode), ("ensure", ensure)):
            seconds = {0: [], 2: []}
            for _ in range(rounds):
                for w in (0, 2):
                    start = time.perf_counter()
                    run(w)
                    seconds[w].append(round(time.perf_counter() - start, 3))
            out[name] = {"seconds": {str(w): s for w, s in seconds.items()},
                         "speedup": round(sum(seconds[0]) / sum(seconds[2]), 3)}
            print(name, out[name], flush=True)
        return {"images": n, "batch_size": batch_size, "rounds": rounds, "parts": out}
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
