"""Every shipped real card, on a tiny replica of its Hub repo (see replicas.py), through the Hub code path, offline."""

import re

import pytest
from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.registry import ModelRegistry

from .replicas import REPLICAS, install
from .helpers import isolated_offline_hub


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_cache):
    """install(card name) -> its replica's snapshot, in a fresh offline HF cache; any network use fails the test."""
    hub_cache, attempts = isolated_offline_hub(tmp_path, monkeypatch)
    yield lambda name: install(name, hub_cache, tiny_cache)
    assert not attempts


def test_the_replicas_are_the_shipped_real_cards():
    registry = ModelRegistry()
    real = {n for n in registry.names() if "/" in registry.get(n).checkpoint}  # Hub ids; tiny: and testbed builds aside
    assert set(REPLICAS) == real
    assert all(registry.get(n).checkpoint == r.repo for n, r in REPLICAS.items())


@pytest.mark.parametrize("name", sorted(REPLICAS))
def test_every_shipped_card_passes_check_adapter_on_its_hub_replica(name, hub, tiny_cache):
    hub(name)
    result = CliRunner().invoke(app, ["check-adapter", name, "--cache-dir", str(tiny_cache)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "conformant" in result.output
    # compared with the full model as from_pretrained loads the same snapshot, not "n/a"
    assert re.search(r"prompt equals the model's own LLM input\s*│\s*pass", result.output)


def test_check_adapter_lists_the_stored_buffers_it_skipped(hub, tiny_cache):
    hub("idefics")
    result = CliRunner().invoke(app, ["check-adapter", "idefics", "--cache-dir", str(tiny_cache)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "skipped ['model.vision_model.embeddings.position_ids']" in result.output
