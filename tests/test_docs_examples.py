"""The task examples in the README and docs/adding-a-task.md work when copied into one's own folder."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.run.demo import DEMO_TASK_DIR, DEMO_TASKS
from spatialbench.run.plan import estimate
from spatialbench.registry import TaskRegistry
from spatialbench.registry import resolve_card
from spatialbench.specs import RunConfig

ROOT = Path(__file__).resolve().parents[1]
cli = CliRunner()


def _first_task_yaml(doc: Path) -> str:
    """The first ```yaml block of `doc` that is a task (it has a `kind:`)."""
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.DOTALL)
    return next(b for b in blocks if re.search(r"^kind:", b, re.MULTILINE))


@pytest.mark.parametrize("doc", ["README.md", "docs/adding-a-task.md"])
def test_the_task_example_validates_and_runs_as_written_from_ones_own_folder(doc, tmp_path):
    mine = tmp_path / "my_tasks"
    mine.mkdir()
    text = _first_task_yaml(ROOT / doc)
    name = re.search(r"^name: (\S+)", text, re.MULTILINE).group(1)
    (mine / f"{name}.yaml").write_text(text)  # no base beside it: the include finds the built-in one

    result = cli.invoke(app, ["validate", str(mine)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert [t.name for t in TaskRegistry([mine]).resolve(name)] == [name]
    result = cli.invoke(app, ["run", "--model", "blip2-tiny", "--tasks", name, "--include-path", str(mine),
                              "--limit", "8", "--seeds", "1", "--baselines", "none", "--no-control",
                              "--output", str(tmp_path / "out"), "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output


def _readme_fits(command: str) -> int:
    """The probe fits the README's cost table gives for the row whose command starts with `command`."""
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(f"| `{command}"))
    return int(row.split("|")[2])


def test_the_readme_cost_table_counts_the_fits_the_plan_counts():
    def fits(**kw) -> int:
        config = RunConfig(model="blip2-pretrained", **kw)
        tasks = TaskRegistry(config.include_paths).resolve(config.tasks)
        return estimate(config, tasks, resolve_card(config.model)).totals()["fits"]

    demo = fits(tasks=[DEMO_TASKS], seeds=1, include_paths=[DEMO_TASK_DIR], regime="both", control=False,
                baselines=["blind", "oracle", "vision_patches", "joint_random"])
    assert _readme_fits("spatialbench demo") == demo
    assert _readme_fits("spatialbench run --model blip2-pretrained --tasks synthetic") == fits(tasks=["synthetic"])
