"""The feature cache: one extraction per image, content-addressed, crash-safe, self-healing."""

import torch
from PIL import Image
from safetensors.torch import save_file

from spatialbench.features import FeatureStore
from tests.helpers.counting import CountingAdapter


class _Images(dict):
    def items(self):
        return [(key, None, loader) for key, loader in super().items()]


def _images(n):
    return _Images({f"k{i}": (lambda i=i: Image.new("RGB", (8, 8), (i, 2 * i, 3 * i))) for i in range(n)})


def test_each_image_is_extracted_once_and_reused(tmp_path):
    adapter = CountingAdapter()
    store = FeatureStore(adapter, tmp_path, batch_size=3)
    images = _images(7)
    store.ensure([*images.items(), *images.items()])  # duplicates in one request
    assert store.extracted == 7 and adapter.forwards == 7
    again = FeatureStore(adapter, tmp_path)
    again.ensure(images.items())
    assert again.extracted == 0 and again.reused == 7 and adapter.forwards == 7
    prompts = again.load([("k2", None), ("k5", None)])
    assert prompts.shape == (2, 2, 3)
    assert torch.equal(prompts[0, 0], torch.tensor([2.0, 4.0, 6.0]))


def test_a_different_model_never_hits_another_models_entries(tmp_path):
    FeatureStore(CountingAdapter("a"), tmp_path).ensure(_images(3).items())
    other = FeatureStore(CountingAdapter("b"), tmp_path)
    other.ensure(_images(3).items())
    assert other.extracted == 3 and other.reused == 0


def _shards(root):
    return sorted(root.rglob("shards/*.safetensors"))


def test_a_truncated_shard_is_detected_and_its_entries_extracted_again(tmp_path):
    store = FeatureStore(CountingAdapter(), tmp_path)
    store.ensure(_images(3).items())
    (path,) = _shards(tmp_path)
    path.write_bytes(path.read_bytes()[:-20])  # cut short, as a failing disk would leave it
    again = FeatureStore(CountingAdapter(), tmp_path)
    again.ensure(_images(3).items())
    assert again.recomputed == 3 and again.extracted == 3 and again.reused == 0
    assert torch.equal(again.load([("k1", None)])[0, 0], torch.tensor([1.0, 2.0, 3.0]))
    assert not path.exists()


def test_a_flipped_byte_inside_a_row_is_detected_and_only_that_entry_extracted_again(tmp_path):
    store = FeatureStore(CountingAdapter(), tmp_path)
    store.ensure(_images(3).items())
    (path,) = _shards(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last row (k2): the file still parses; only the row's checksum can tell
    path.write_bytes(bytes(data))
    again = FeatureStore(CountingAdapter(), tmp_path)
    again.ensure(_images(3).items())
    assert again.recomputed == 1 and again.extracted == 1 and again.reused == 2
    assert torch.equal(again.load([("k2", None)])[0, 0], torch.tensor([2.0, 4.0, 6.0]))
    third = FeatureStore(CountingAdapter(), tmp_path)  # the new copy is found past the corrupt one
    third.ensure(_images(3).items())
    assert third.recomputed == 0 and third.extracted == 0 and third.reused == 3


def test_entries_are_written_a_shard_at_a_time_with_one_fsync_each(tmp_path, monkeypatch):
    import os

    row = 2 * 3 * 4  # bytes of one CountingAdapter prompt
    store = FeatureStore(CountingAdapter(), tmp_path, batch_size=2, shard_bytes=4 * row)
    syncs = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real(fd))[1])
    store.ensure(_images(9).items())
    assert len(_shards(tmp_path)) == len(syncs) == 3  # 4 + 4 + 1 entries (a shard closes on a whole batch)
    assert not list(tmp_path.rglob("*.tmp"))
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pt"))
    keys = [(f"k{i}", None) for i in range(9)]
    assert FeatureStore(CountingAdapter(), tmp_path).load(keys)[:, 0, 0].tolist() == [float(i) for i in range(9)]


def test_entries_keep_the_extraction_dtype(tmp_path):
    adapter = CountingAdapter()
    adapter.dtype = torch.bfloat16
    store = FeatureStore(adapter, tmp_path)
    store.ensure(_images(2).items())
    again = FeatureStore(adapter, tmp_path)
    again.ensure(_images(2).items())
    rows = again.rows([("k1", None)])
    assert again.reused == 2 and rows.dtype == torch.bfloat16 and rows[[0]].dtype == torch.bfloat16
    from spatialbench.features.shards import Shard

    shard = Shard.open(_shards(tmp_path)[0])
    assert shard.dtype == torch.bfloat16 and shard.row_bytes == 2 * 3 * 2  # 2 bytes a value on disk


def _legacy(store, content_key, tensor, checksum=True):
    """An entry as the one-file-per-entry layout wrote it: root/xx/key.safetensors, tensor `prompt`."""
    from spatialbench.features.shards import checksum as sha

    key = store.key(content_key)
    path = store.root / key[:2] / f"{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prompt": tensor}, str(path), metadata={"sha256": sha(tensor)} if checksum else None)
    return path


def test_an_old_per_entry_cache_is_moved_into_shards_and_a_broken_entry_extracted_again(tmp_path):
    store = FeatureStore(CountingAdapter(), tmp_path)
    old = [_legacy(store, "k0", torch.full((2, 3), 7.0)), _legacy(store, "k1", torch.ones(2, 3), checksum=False)]
    again = FeatureStore(CountingAdapter(), tmp_path)
    assert len(again.notes) == 1 and "1 entries of the old one-file-per-entry layout moved into shards" in again.notes[0]
    assert "1 not whole, extracted again" in again.notes[0]
    assert not any(p.exists() for p in old) and not any(p.parent.exists() for p in old)
    again.ensure(_images(2).items())
    assert again.reused == 1 and again.extracted == 1  # k0 came over as it was; k1 had no checksum
    assert torch.equal(again.load([("k0", None)])[0], torch.full((2, 3), 7.0))


class TextReadingAdapter(CountingAdapter):
    reads_text = True

    def resample(self, vision_features, text=None):
        shift = torch.tensor([[len(t)] for t in text], dtype=torch.float32)[:, :, None] if text else 0.0
        return vision_features + shift


def test_text_conditioned_prompts_are_keyed_by_text_and_never_batched_with_plain_ones(tmp_path):
    adapter = TextReadingAdapter()
    store = FeatureStore(adapter, tmp_path, batch_size=4)
    load = _images(1)["k0"]
    store.ensure([("k0", None, load), ("k0", "ab", load), ("k0", "abcd", load), ("k0", "ab", load)])
    assert store.extracted == 3
    prompts = store.load([("k0", None), ("k0", "ab"), ("k0", "abcd")])
    assert prompts[:, 0, 0].tolist() == [0.0, 2.0, 4.0]


def _unreadable():
    from spatialbench.errors import SpatialbenchError

    raise SpatialbenchError("cannot read /data/broken.jpg")


def test_worker_processes_decode_and_the_entries_are_those_of_decoding_here(tmp_path):
    import os

    here, there = CountingAdapter(), CountingAdapter()
    images = _images(7)
    FeatureStore(here, tmp_path / "a", batch_size=2, workers=0).ensure(images.items())
    store = FeatureStore(there, tmp_path / "b", batch_size=2, workers=2)
    seen = []
    original = there.preprocess
    there.preprocess = lambda imgs: (seen.append(os.getpid()), original(imgs))[1]  # runs in the workers
    store.ensure(images.items())
    keys = [(k, None) for k in images]
    assert torch.equal(FeatureStore(here, tmp_path / "a").load(keys), store.load(keys))
    assert there.forwards == here.forwards == 7  # the model ran here, once per image
    assert seen == []  # the workers' appends went to their own copies: nothing was preprocessed in this process


def test_a_worker_records_an_unreadable_image_and_the_others_are_extracted(tmp_path):
    images = _Images({**_images(3), "bad": _unreadable})
    store = FeatureStore(CountingAdapter(), tmp_path, batch_size=2, workers=2)
    done = []
    store.ensure(images.items(), on_batch=done.append)
    assert store.failed == {"bad": "cannot read /data/broken.jpg"}
    assert store.extracted == 3 and sum(done) == 4


def test_a_16bit_store_keeps_its_entries_in_16_bits_under_its_own_key(tmp_path):
    images = _images(3)
    full = FeatureStore(CountingAdapter(), tmp_path)
    full.ensure(images.items())
    half = FeatureStore(CountingAdapter(), tmp_path, dtype=torch.bfloat16)
    half.ensure(images.items())
    assert half.extracted == 3 and half.reused == 0  # never served the float32 entries, nor they its
    assert half.model_key != full.model_key
    got = half.load([("k1", None)])
    assert got.dtype == torch.bfloat16 and torch.equal(got[0, 0].float(), torch.tensor([1.0, 2.0, 3.0]))
    sizes = {root.name: sum(p.stat().st_size for p in _shards(root)) for root in (full.root, half.root)}
    assert sizes[half.root.name] < sizes[full.root.name]
    again = FeatureStore(CountingAdapter(), tmp_path, dtype=torch.float32)  # the adapter's own dtype: the old key
    again.ensure(images.items())
    assert again.model_key == full.model_key and again.reused == 3

