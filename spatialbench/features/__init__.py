"""The feature store: visual prompts extracted once per image, cached in shards, read back on demand.

store    FeatureStore (the cache and its index, extraction) and Rows (a view of some entries)
shards   the on-disk shard format, written once, checked row by row, read with pread
decode   images decoded and preprocessed in DataLoader worker processes
"""

from .decode import default_workers
from .store import FeatureStore, Request, Rows, digest

__all__ = ["FeatureStore", "Request", "Rows", "default_workers", "digest"]
