"""What the leaderboard tests share: the fixture results and where the system Chromium is.

The fixture results are real runs of three tiny models on the tiny tasks in fixtures/tasks (regenerate them
with make_fixtures.py); a run takes minutes on two CPU cores, the page tests take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TASKS = FIXTURES / "tasks"
MODELS = ("blip2-tiny", "kosmos2-tiny", "idefics2-tiny")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL = ("the browser tests need Debian's chromium and Playwright (driving the system browser; no browser "
           "download): `sudo apt-get install -y chromium` and `pip install -e '.[test]'`")


def fixture_data(model: str) -> dict:
    return json.loads((FIXTURES / f"{model}.json").read_text())


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def chromium_executable(path: Path = CHROMIUM) -> str:
    """The system Chromium; a missing one fails the test (CI installs it), never skips it."""
    if not path.exists():
        pytest.fail(f"{path} not found: {INSTALL}", pytrace=False)
    return str(path)
