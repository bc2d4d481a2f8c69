"""`spatialbench download`: metadata and only the weight files extraction reads, from a card's Hub repo."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from spatialbench.adapters import loading
from spatialbench.adapters.families import get_family
from spatialbench.adapters.download import fetch, plan_download
from spatialbench.cli import app
from spatialbench.errors import SpatialbenchError
from spatialbench.registry import ModelRegistry

from .helpers import square_scenes
from .replicas import REPLICAS, install, weight_files
from .helpers import isolated_offline_hub

CARD = "idefics-80b"  # 17 weight files, the decoder's in most of them


@pytest.fixture
def snapshot(tmp_path, monkeypatch, tiny_cache):
    hub_cache, attempts = isolated_offline_hub(tmp_path, monkeypatch)
    yield install(CARD, hub_cache, tiny_cache)
    assert not attempts


def test_dry_run_lists_exactly_the_files_holding_what_extraction_reads(snapshot, tiny_cache):
    card = ModelRegistry().get(CARD)
    adapter = get_family(card.family).load(card, cache_dir=tiny_cache)
    weight_map = json.loads((snapshot / loading.INDEX).read_text())["weight_map"]
    read = {weight_map[k] for k in adapter.loaded_keys}

    plan = plan_download(card)
    assert set(plan.needed) == read
    assert plan.not_needed and set(plan.needed) | set(plan.not_needed) == set(weight_files(snapshot))
    assert plan.total_bytes == sum((snapshot / f).stat().st_size for f in weight_files(snapshot))

    result = CliRunner().invoke(app, ["download", CARD, "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"{len(read)} of {len(weight_files(snapshot))} weight files" in result.output
    assert f"revision: {snapshot.name}" in result.output  # the commit to pin the card to
    assert "done" not in result.output  # nothing fetched


def test_after_download_only_the_needed_files_are_cached_and_the_card_runs_offline(snapshot, tiny_cache):
    card = ModelRegistry().get(CARD)
    full = get_family(card.family).load(card, cache_dir=tiny_cache)
    px = full.preprocess(square_scenes(2))
    expected = full.visual_prompt(px)
    plan = plan_download(card)
    for name in plan.not_needed:  # as a download that fetched only what the plan needs leaves the cache
        (snapshot / name).unlink()

    assert [p.name for p in fetch(plan)] == list(plan.needed)
    loaded = get_family(card.family).load(card, cache_dir=tiny_cache)
    assert torch.equal(loaded.visual_prompt(px), expected)


def test_a_needed_file_that_cannot_be_fetched_is_named(snapshot):
    plan = plan_download(ModelRegistry().get(CARD))
    missing = next(iter(plan.needed))
    (snapshot / missing).unlink()
    with pytest.raises(SpatialbenchError, match=missing) as err:
        fetch(plan)
    assert "spatialbench download" in err.value.fix


def test_a_card_whose_checkpoint_is_not_a_hub_repo_says_so():
    with pytest.raises(SpatialbenchError, match="not a Hub repo"):
        plan_download(ModelRegistry().get("blip2-tiny"))


def test_a_bin_only_repo_is_planned_from_its_pytorch_index(tmp_path, monkeypatch, tiny_cache):
    # Many fine-tuned checkpoints ship only pytorch_model-*.bin: the same selection, read from their index.
    hub_cache, attempts = isolated_offline_hub(tmp_path, monkeypatch)
    snapshot = install("blip2", hub_cache, tiny_cache, dataclasses.replace(REPLICAS["blip2"], files=4, weights="bin"))
    assert (snapshot / loading.BIN_INDEX).is_file() and not (snapshot / loading.INDEX).is_file()
    card = ModelRegistry().get("blip2")
    plan = plan_download(card)
    adapter = get_family(card.family).load(card, cache_dir=tiny_cache)
    weight_map = json.loads((snapshot / loading.BIN_INDEX).read_text())["weight_map"]
    assert set(plan.needed) == {weight_map[k] for k in adapter.loaded_keys} and plan.not_needed
    assert all(f.endswith(".bin") for f in [*plan.needed, *plan.not_needed])
    assert not attempts
