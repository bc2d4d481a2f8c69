"""`leaderboard build`: the files of the site, the data embedded safely, invalid files refused."""

import json
import re
import subprocess
import sys

from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.leaderboard.build import ASSETS, DATA_GLOBAL, data_script, script_json

from .helpers import TASKS, fixture_data, write

cli = CliRunner()


def build(*args):
    return cli.invoke(app, ["leaderboard", "build", *map(str, args), "--include-path", str(TASKS)],
                      env={"COLUMNS": "300"})


def _data_js(text: str) -> dict:
    """Undo data.js: `window.X = JSON.parse("<JSON string literal>");` (a JSON string literal is valid JS)."""
    match = re.fullmatch(rf"window\.{DATA_GLOBAL} = JSON\.parse\((.*)\);\n", text, re.DOTALL)
    assert match, text[:200]
    return json.loads(json.loads(match.group(1)))


def test_build_writes_a_self_contained_site(results, tmp_path):
    out = tmp_path / "site"
    result = build(*results, "--out", out)
    assert result.exit_code == 0, result.output
    assert "8 rows (3 models x regimes and baselines), 3 tasks" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*ASSETS, "data.js", "data.json"])
    data = json.loads((out / "data.json").read_text())
    assert _data_js((out / "data.js").read_text()) == data
    assert [s["file"] for s in data["sources"]] == [str(p) for p in results]
    html = (out / "index.html").read_text()
    # Local files only: nothing for the browser to fetch from the network, and the data by <script src>
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert '<script src="data.js"></script>' in html and "fetch(" not in (out / "app.js").read_text()


def test_build_takes_the_results_folder_as_one_types_it(results, tmp_path):
    result = build(results[0].parent.parent, "--out", tmp_path / "site")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "site" / "data.json").read_text())
    assert sorted(s["file"] for s in data["sources"]) == sorted(str(p) for p in results)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = build(empty, "--out", tmp_path / "site2")
    assert result.exit_code == 1 and f"no results.json under {empty}" in result.output


def test_build_refuses_an_invalid_file_naming_file_and_field(results, tmp_path):
    data = fixture_data("kosmos2-tiny")
    data["tasks"]["tiny_vsr"]["n"]["test"] = 3
    bad = write(tmp_path / "bad" / "results.json", data)
    out = tmp_path / "site"
    result = build(*results, bad, "--out", out)
    assert result.exit_code == 1
    assert f"{bad}: tasks.tiny_vsr.n.test: 3 examples" in result.output
    assert "refusing to build" in result.output and not out.exists()


def test_build_refuses_files_that_scored_a_task_on_different_items(results, tmp_path):
    """Rows are compared item by item: a run on other scenes (another --data-seed) cannot share a page."""
    data = json.loads(results[0].read_text())
    name = next(iter(data["tasks"]))
    data["tasks"][name]["dataset_fingerprint"] = "0" * 16  # as a run on other scenes or data would record
    other = write(tmp_path / "other" / "results.json", data)
    out = tmp_path / "site"
    result = build(results[1], results[2], other, "--out", out)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert f"tasks.{name}.dataset_fingerprint: task '{name}' was scored on different items" in text
    assert "fingerprint 0000000000000000" in text and "same --data-seed" in text and not out.exists()


def test_embedded_strings_cannot_end_the_script():
    nasty = {"name": "</script><script>alert(1)</script>", "sep": "a\u2028b\u2029c", "amp": "&lt;<!--"}
    js = data_script(nasty)
    assert "<" not in js and ">" not in js and "&" not in js and "\u2028" not in js and "\u2029" not in js
    assert _data_js(js) == nasty
    assert json.loads(script_json(nasty)) == nasty


def test_the_leaderboard_reads_results_without_the_runner_trainer_or_torch():
    code = ("import sys, spatialbench.leaderboard.commands, spatialbench.leaderboard.build; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'accelerate') "
            "or m in ('spatialbench.run.runner', 'spatialbench.probing.fit', 'spatialbench.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_results_of_an_older_task_version_never_join_a_board_of_the_current_ones(results, tmp_path):
    """A protocol-v1 run (schema 2, synth_relation v3) beside current runs: the build refuses it, naming the
    version, rather than put numbers of two protocols in one column."""
    from pathlib import Path

    old = Path(__file__).resolve().parents[2] / "docs" / "runs" / "protocol-v1" / "blip2-tiny-synthetic-both.json"
    result = build(*results, old, "--out", tmp_path / "site")
    assert result.exit_code != 0 and not (tmp_path / "site" / "index.html").exists()
    assert "version 3 of 'synth_relation' is not known; the registry has version 6" in result.output


def committed_page_differences(committed, package) -> list[str]:
    """The page's assets in `committed` that are not byte for byte the package's copies in `package`."""
    return [name for name in ASSETS if (committed / name).read_bytes() != (package / name).read_bytes()]


def test_the_committed_page_assets_are_the_packages_byte_for_byte(tmp_path):
    """leaderboard/ serves the page code the package builds with: a page change that forgot
    `scripts/leaderboard.sh --page-only` fails here. (Its data.json is stale until the page is rebuilt:
    leaderboard/README.md says so, and its guard returns with that rebuild.)"""
    import shutil
    from pathlib import Path

    import spatialbench.leaderboard as package

    root = Path(__file__).resolve().parents[2]
    package_dir = Path(package.__file__).parent
    assert committed_page_differences(root / "leaderboard", package_dir) == []
    # One byte changed in a copy of the committed app.js is seen.
    copy = tmp_path / "leaderboard"
    shutil.copytree(root / "leaderboard", copy)
    text = (copy / "app.js").read_bytes()
    (copy / "app.js").write_bytes(text[:100] + bytes([text[100] ^ 1]) + text[101:])
    assert committed_page_differences(copy, package_dir) == ["app.js"]
