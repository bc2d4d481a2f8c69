"""Find a checkpoint's files and read only the tensors extraction needs.

A 7B LLM is 28 GB in fp32; extraction needs the vision encoder, the resampler, the projection and the
token-embedding table. We read the safetensors index, fetch only the shards holding those tensors,
and read those tensors alone (safe_open reads by offset), so decoder layers are never materialised.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from ..errors import SpatialbenchError
from .tiny.builds import materialise, tiny_weights

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# Many fine-tuned community checkpoints still ship only PyTorch pickles: same layout, other names.
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
LAYOUTS = ((INDEX, SINGLE), (BIN_INDEX, BIN_SINGLE))  # preferred first, as from_pretrained prefers safetensors
META_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPATIALBENCH_CACHE", Path.home() / ".cache" / "spatialbench"))


class Checkpoint:
    """A checkpoint directory (local, or a Hub snapshot fetched lazily) and its weight map."""

    def __init__(self, root: Path, repo_id: str | None = None, revision: str | None = None):
        self.root, self.repo_id, self.revision = root, repo_id, revision
        self.weight_map: dict[str, str] = self._weight_map()

    def _weight_map(self) -> dict[str, str]:
        for index, _ in LAYOUTS:  # an index is metadata: a Hub snapshot already holds it
            if (self.root / index).is_file():
                return json.loads((self.root / index).read_text())["weight_map"]
        for _, single in LAYOUTS:
            if (self.root / single).is_file():
                return {k: single for k in _keys(self.root / single)}
        if self.repo_id:  # no index in the snapshot: one weight file, fetched now
            path = self._file(SINGLE, BIN_SINGLE)
            return {k: path.name for k in _keys(path)}
        raise SpatialbenchError(
            f"no weights in {self.root}: none of {INDEX}, {SINGLE}, {BIN_INDEX}, {BIN_SINGLE}",
            field="checkpoint", fix="point the model card's checkpoint at a directory written by save_pretrained",
        )

    def _file(self, name: str, fallback: str | None = None) -> Path:
        """A weight file, local or from the Hub; `fallback`: the other layout's name for the same file."""
        local = self.root / name
        if local.is_file() or not self.repo_id:
            return local
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

        names = [name, fallback] if fallback else [name]
        for candidate in names:
            try:
                path = Path(hf_hub_download(self.repo_id, candidate, revision=self.revision))
            except (EntryNotFoundError, LocalEntryNotFoundError):  # not in the repo, or (offline) not cached
                continue
            except (HfHubHTTPError, OSError) as e:
                raise SpatialbenchError(f"cannot fetch '{candidate}' of '{self.repo_id}': {e}",
                                        field="checkpoint") from None
            return path
        raise SpatialbenchError(
            f"{' or '.join(repr(n) for n in names)} of checkpoint '{self.repo_id}' is neither in the local Hugging "
            "Face cache nor fetchable (HF_HUB_OFFLINE is set, there is no network, or the repo has no such file)",
            field="checkpoint", fix=f"run once online: `hf download {self.repo_id}`",
        )

    def load(self, wanted: Callable[[str], bool], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Every tensor whose name satisfies `wanted`, read shard by shard; no other shard is opened."""
        by_shard: dict[str, list[str]] = {}
        for key, shard in self.weight_map.items():
            if wanted(key):
                by_shard.setdefault(shard, []).append(key)
        out: dict[str, torch.Tensor] = {}
        for shard, keys in sorted(by_shard.items()):
            for key, t in _read(self._file(shard), keys).items():
                out[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out

    def fingerprint(self) -> str:
        """Hub checkpoints: repo@commit. Local ones: a digest of config, index and weight contents."""
        if self.repo_id:
            return f"{self.repo_id}@{self.root.name}"
        h = hashlib.sha256()
        for name in sorted(p.name for p in self.root.iterdir() if p.suffix in (".json", ".safetensors", ".bin")):
            h.update(name.encode())
            with open(self.root / name, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return f"local:{self.root.name}:{h.hexdigest()[:16]}"


def _pickle(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch weight file, memory-mapped and weights-only: no code in it runs, no page is read yet."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # noqa: BLE001 - name the file; torch's own message says why
        raise SpatialbenchError(f"cannot read {path}: {e}", field="checkpoint") from None


def _keys(path: Path) -> list[str]:
    if path.suffix == ".bin":
        return list(_pickle(path))
    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _read(path: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """Tensors `keys` of one weight file; only their bytes are read (safetensors by offset, pickles mapped)."""
    if path.suffix == ".bin":
        state = _pickle(path)
        return {k: state[k].clone() for k in keys}  # owned copies, not views of a mapping about to close
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in keys}


def resolve(checkpoint: str, revision: str, cache_dir: Path | None = None) -> Checkpoint:
    """A local directory, tiny:<name> (built in code on first use), or a Hub repo id."""
    if checkpoint.startswith("tiny:"):
        return Checkpoint(materialise(checkpoint.removeprefix("tiny:"), cache_dir or default_cache_dir()))
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return Checkpoint(path)
    return _from_hub(checkpoint, revision)


WEIGHTS = {  # what `ls models` says of a card's weights, and what it means (the legend; a run's first line)
    "random": "random weights built in code: its numbers test the machinery and say nothing about any model",
    "pretrained here": "the testbed: a small BLIP-2 pretrained here on synthetic scenes, not a released model",
    "local": "a local checkpoint directory",
    "Hub: cached": "a Hub checkpoint in the local Hugging Face cache",
    "Hub: not here": "a Hub checkpoint not in the local cache: `spatialbench download NAME` fetches it",
}


def weights_kind(checkpoint: str, revision: str) -> str:
    """Which of WEIGHTS a card's checkpoint is, without fetching anything."""
    if checkpoint.startswith("tiny:"):
        return tiny_weights(checkpoint.removeprefix("tiny:"))
    if Path(checkpoint).expanduser().is_dir():
        return "local"
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(checkpoint, "config.json", revision=revision), str)
    return "Hub: cached" if cached else "Hub: not here"


def _from_hub(repo_id: str, revision: str) -> Checkpoint:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        # Only metadata now; weight shards are fetched one by one when their tensors are wanted.
        root = Path(snapshot_download(repo_id, revision=revision, allow_patterns=META_PATTERNS))
    except LocalEntryNotFoundError:
        raise SpatialbenchError(
            f"checkpoint '{repo_id}' (revision {revision}) is not in the local Hugging Face cache and the Hub "
            "cannot be reached (HF_HUB_OFFLINE is set or there is no network)",
            field="checkpoint",
            fix=f"run once online (`hf download {repo_id}`), or set checkpoint to a local directory",
        ) from None
    except (HfHubHTTPError, ValueError, OSError) as e:
        raise SpatialbenchError(f"cannot fetch '{repo_id}': {e}", field="checkpoint") from None
    return Checkpoint(root, repo_id=repo_id, revision=revision)


def input_embedding_key(text_config, prefix: str, names) -> str:
    """The checkpoint name of the LLM's input-embedding table, found on a weightless (meta) LLM: its own
    name with or without an LM head around the LLM (BLIP-2 stores a CausalLM, Idefics2 a bare model), or an
    embedding tied to it where only that is stored (a T5 saved with just `encoder.embed_tokens.weight`).
    With `names` None, the table's own name under a head."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    with torch.device("meta"):
        try:
            lm = AutoModelForCausalLM.from_config(text_config)
        except ValueError:
            lm = AutoModelForSeq2SeqLM.from_config(text_config)
    table = lm.get_input_embeddings()
    key = next(f"{n}.weight" for n, m in lm.named_modules() if m is table)
    tied = [t for t, source in (getattr(lm, "all_tied_weights_keys", None) or {}).items()
            if source == key and isinstance(lm.get_submodule(t.rsplit(".", 1)[0]), torch.nn.Embedding)]
    bare = key.removeprefix(f"{lm.base_model_prefix}.")
    candidates = list(dict.fromkeys(prefix + k for k in (key, bare, *tied)))
    if names is None:
        return candidates[0]
    found = next((k for k in candidates if k in names), None)
    if found is None:
        raise SpatialbenchError(
            f"checkpoint has no input-embedding table: none of {candidates} is in its weight map",
            field="checkpoint", fix="the LLM's token embeddings must be saved with the checkpoint (save_pretrained does)",
        )
    return found


def dtype_plan(model_class: str, config, dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """key -> dtype, as from_pretrained(dtype=...) of `model_class` assigns them: its _keep_in_fp32_modules
    stay float32 under float16 (the strict ones under bfloat16 too), read off a weightless (meta) model."""
    if dtype == torch.float32:
        return lambda key: dtype
    import transformers

    with torch.device("meta"):
        skeleton = getattr(transformers, model_class)(copy.deepcopy(config))
    keep = set(skeleton._keep_in_fp32_modules or ()) if dtype == torch.float16 else set()
    keep |= set(skeleton._keep_in_fp32_modules_strict or ())
    # Like transformers: unanchored search, so T5's "wo" also keeps qformer...word_embeddings in fp32 under fp16.
    pattern = re.compile("|".join(k.replace("*", ".*") for k in sorted(keep))) if keep else None
    return lambda key: torch.float32 if pattern is not None and pattern.search(key) else dtype


def materialise_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Fill a module built on the meta device with checkpoint tensors; every parameter must be there.

    Returns the checkpoint keys skipped: buffers the module holds as non-persistent (position_ids, which
    checkpoints written by older transformers still store). from_pretrained drops them too; the module
    computes them itself, so the stored copy is not read."""
    state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    buffers = {name for name, _ in module.named_buffers()}
    skipped = [k for k in unexpected if k in buffers]
    unexpected = [k for k in unexpected if k not in buffers]
    still_meta = [n for n, b in module.named_buffers() if b.is_meta]
    if missing or unexpected or still_meta:
        raise SpatialbenchError(
            f"checkpoint does not match the model config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"unset buffers {still_meta[:5]}",
            field="checkpoint",
        )
    return [prefix + k for k in skipped]
