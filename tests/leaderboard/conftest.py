"""Fixtures of the leaderboard tests: copies of the fixture results, and one headless Chromium per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import CHROMIUM_ARGS, FIXTURES, INSTALL, MODELS, chromium_executable


@pytest.fixture
def results(tmp_path) -> list[Path]:
    """Fresh copies of the three fixture results, laid out as `spatialbench run` writes them."""
    paths = []
    for model in MODELS:
        path = tmp_path / "results" / model / "results.json"
        path.parent.mkdir(parents=True)
        shutil.copyfile(FIXTURES / f"{model}.json", path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {INSTALL}", pytrace=False)
    executable = chromium_executable()
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()
