"""Tables, progress and help at 80 and 120 columns: names wrap, numbers and names are never cut."""

import io
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.registry import ModelRegistry, TaskRegistry
from spatialbench.run.report import Reporter
from spatialbench.results import read_results

from tests.helpers.runs import FIXTURE, run_dir

cli = CliRunner()
WIDTHS = [80, 120]


def _invoke(width: int, *args: str) -> str:
    result = cli.invoke(app, list(args), env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output  # nothing cut
    assert max(len(line) for line in result.output.splitlines()) <= width
    return result.output


def _squeezed(text: str) -> str:
    """The output with all white space and table rules removed: wrapped cells read back whole."""
    return re.sub(r"[\s│┃─━┏┓┗┛┡┩┣┫╇╈╋┳┻]+", "", text)


@pytest.mark.parametrize("width", WIDTHS)
def test_ls_shows_every_name_and_checkpoint_whole(width):
    models = _squeezed(_invoke(width, "ls", "models"))
    registry = ModelRegistry()
    for name in registry.names():
        assert name in models and registry.get(name).checkpoint in models  # the last column: wraps read back whole
    assert "random:randomweightsbuiltincode" in models  # the legend says what the tiny models are
    tasks = _squeezed(_invoke(width, "ls", "tasks"))
    assert all(name in tasks for name in TaskRegistry().names())


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_prints_every_number_whole(width, tmp_path):
    a = run_dir(tmp_path, "a", [1.0] * 40)
    b = run_dir(tmp_path, "b", [0.0] * 40)
    out = _invoke(width, "compare", str(a), str(b), "--condition", "frozen")
    assert re.search(r"1\.000\s+0\.000\s+\+1\.000\s+\[\+1\.000,\+1\.000\]", out)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_run_table_keeps_condition_names_and_numbers_whole(width):
    console = Console(file=io.StringIO(), width=width)
    Reporter(console).summary(read_results(FIXTURE), "results.json")
    out = console.file.getvalue()
    assert "…" not in out
    for task in read_results(FIXTURE).tasks.values():
        assert task.name in out  # a task name is never split
        for cond in task.conditions.values():
            assert f"{cond.metrics[task.headline].mean:.3f}" in out


@pytest.mark.parametrize("width", WIDTHS)
def test_progress_keeps_its_counts_and_time_on_a_narrow_terminal(width):
    console = Console(file=io.StringIO(), width=width, force_terminal=True)
    with Reporter(console).training({"refcocoplus_unc_testb_long_task_name": 240}) as tick:
        for epoch in range(180):
            tick("refcocoplus_unc_testb_long_task_name", "joint_random lr 0.0003", 2, epoch, 0.123456)
    out = console.file.getvalue()
    assert "240/240" in out and re.search(r"\d+:\d\d:\d\d", out)
    assert "probing refcocoplus_unc_testb_long_task_name" in out  # the name whole: only the note gives way


@pytest.mark.parametrize("width", WIDTHS)
def test_progress_printed_to_a_log_keeps_the_task_name_whole(width):
    console = Console(file=io.StringIO(), width=width)  # not a terminal: a log file, as `run 2> log` writes
    with Reporter(console).training({"demo_region_grid": 320}) as tick:
        for epoch in range(13):
            tick("demo_region_grid", "joint_random lr 0.001 rlr 0.002", 0, epoch, 0.156)
    out = console.file.getvalue()
    [bar] = [line for line in out.splitlines() if "320/320" in line]  # the bar, drawn once at the end
    assert "probing demo_region_grid" in bar and max(len(line) for line in out.splitlines()) <= width


@pytest.mark.parametrize("width", WIDTHS)
def test_run_help_uses_the_width(width):
    out = _invoke(width, "run", "--help")
    assert "model card name (see `ls models`) or a" in out  # descriptions are not squeezed into a narrow column
