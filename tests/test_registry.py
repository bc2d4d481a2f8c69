"""Every shipped task and card loads; bad files and unknown names fail naming the file and field."""

import pytest
from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.errors import SpatialbenchError, ValidationErrors
from spatialbench.registry import ModelRegistry, TaskRegistry, builtin_dir

TASK = "name: {name}\nkind: relation\ngroups: [mine]\ndataset: {{source: synthetic}}\n"


def test_every_shipped_task_and_card_validates():
    tasks = TaskRegistry()
    shipped = {p.stem for p in builtin_dir("tasks").glob("*.yaml") if not p.name.startswith("_")}
    assert set(tasks.names()) == shipped
    assert {"synth_region", "synth_region_grid", "synth_relation", "synth_vsr", "synth_vsr_zeroshot",
            "synth_grounding"} <= shipped
    kinds = {t.kind for t in tasks.resolve("synthetic")}
    assert kinds == {"region_localization", "relation", "vsr", "grounding"}
    cards = ModelRegistry()
    assert {"blip2", "blip2-tiny"} <= set(cards.names())
    assert cards.get("blip2").checkpoint == "Salesforce/blip2-opt-2.7b"


def test_selectors_all_groups_and_names(tmp_path):
    (tmp_path / "mine.yaml").write_text(TASK.format(name="mine_rel"))
    reg = TaskRegistry([tmp_path])
    assert [t.name for t in reg.resolve("mine")] == ["mine_rel"]
    assert len(reg.resolve("all")) == len(reg.names())
    picked = [t.name for t in reg.resolve("synth_vsr,mine_rel,synth_vsr")]
    assert picked == ["synth_vsr", "mine_rel"]


def test_unknown_task_or_model_suggests_close_matches():
    with pytest.raises(SpatialbenchError) as e:
        TaskRegistry().resolve("synth_relaton")
    assert "unknown task 'synth_relaton'" in str(e.value) and "synth_relation" in str(e.value)
    with pytest.raises(SpatialbenchError) as e:
        ModelRegistry().get("blip2-tny")
    assert "blip2-tiny" in str(e.value)


@pytest.mark.parametrize(
    "body, field, words",
    [
        ("name: t\nkind: relation\ndataset: {source: synthetic}\nprobee: {}\n", "probee", "unknown key"),
        ("name: t\nkind: relation\ndataset: {source: synthetic}\nprobe: {epochs: many}\n", "probe.epochs",
         "valid integer"),
        ("name: t\nkind: relations\ndataset: {source: synthetic}\n", "kind", "'region_localization'"),
        ("name: t\nkind: relation\ndataset: {source: synthetic, sizes: {train: 5}}\n", "dataset", "sizes lacks"),
        ("name: t\nkind: relation\ndataset: {source: synthetic}\nmetrics: [mean_iou]\n", "(top level)",
         "do not apply"),
    ],
)
def test_bad_task_files_name_file_and_field(tmp_path, body, field, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    with pytest.raises(ValidationErrors) as e:
        TaskRegistry([tmp_path]).check()
    first = e.value.errors[0]
    assert first.file == str(bad)
    assert first.field.startswith(field)
    assert words in str(e.value)


def test_every_error_of_a_file_is_reported_together(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: t\nkind: nope\ndataset: {source: synthetic}\nextra: 1\n")
    with pytest.raises(ValidationErrors) as e:
        TaskRegistry([tmp_path]).check()
    assert {err.field for err in e.value.errors} == {"kind", "extra"}


def test_duplicate_task_names_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text(TASK.format(name="synth_vsr"))
    with pytest.raises(ValidationErrors, match="also defined in"):
        TaskRegistry([tmp_path]).check()


def test_one_bad_file_leaves_the_others_of_its_directory_usable_and_is_named(tmp_path):
    (tmp_path / "good.yaml").write_text(TASK.format(name="mine"))
    (tmp_path / "bad.yaml").write_text("name: broken\nkind: nope\ndataset: {source: synthetic}\n")
    registry = TaskRegistry([tmp_path])
    assert [t.name for t in registry.resolve("mine")] == ["mine"]
    with pytest.raises(SpatialbenchError) as e:
        registry.resolve("broken")
    assert str(tmp_path / "bad.yaml") in str(e.value) and "spatialbench validate" in str(e.value)


def test_ls_tasks_lists_the_good_files_and_names_the_one_left_out(tmp_path):
    (tmp_path / "good.yaml").write_text(TASK.format(name="mine"))
    (tmp_path / "bad.yaml").write_text("name: broken\nkind: [\n")
    result = CliRunner().invoke(app, ["ls", "tasks", "--include-path", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert " mine " in result.output and "left out:" in result.output and str(tmp_path / "bad.yaml") in result.output


def test_missing_include_path_is_an_error(tmp_path):
    with pytest.raises(SpatialbenchError, match="does not exist"):
        TaskRegistry([tmp_path / "nope"])
