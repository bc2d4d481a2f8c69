"""The command line as a user meets it: help, listings, validation messages, exit codes."""

import json
import shlex
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.registry import TaskRegistry

cli = CliRunner()


@pytest.mark.parametrize("command", [[], ["run"], ["ls"], ["validate"], ["demo"]])
def test_help_is_useful(command):
    result = cli.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output
    if command == ["run"]:
        for flag in ("--model", "--tasks", "--seeds", "--limit", "--output", "--batch-size", "--device",
                     "--cache-dir", "--include-path"):
            assert flag in result.output


def test_ls_tasks_lists_every_task():
    result = cli.invoke(app, ["ls", "tasks"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in TaskRegistry().names():
        assert name in result.output


def test_validate_reports_file_field_and_problem(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("name: ok\nkind: vsr\ndataset: {source: synthetic}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: t\nkind: vsr\ndataset: {source: synthetic}\nprobe: {epoch: 3}\n")
    wrong_type = tmp_path / "card.yaml"
    wrong_type.write_text("name: m\nfamily: blip2\ncheckpoint: x\npoint: middle\n")
    malformed = tmp_path / "broken.yaml"
    malformed.write_text("name: [unclosed\n")
    result = cli.invoke(app, ["validate", str(good), str(typo), str(wrong_type), str(malformed)],
                        env={"COLUMNS": "300"})
    assert result.exit_code == 1
    out = result.output
    assert f"{typo}: probe.epoch: unknown key" in out
    assert f"{wrong_type}: point:" in out and "'middle'" in out
    assert f"{malformed}: line" in out and "invalid YAML" in out
    assert str(good) not in out
    assert len(out.splitlines()) < 25  # one screen


def test_validate_with_no_files_checks_everything_shipped():
    result = cli.invoke(app, ["validate"])
    assert result.exit_code == 0 and "valid" in result.output


def test_validate_warns_on_a_hub_card_at_a_branch_and_not_on_a_pinned_or_built_one(tmp_path):
    cards = {"branch": "checkpoint: org/model\nrevision: main\n",
             "pinned": f"checkpoint: org/model\nrevision: {'a1' * 20}\n",
             "built": "checkpoint: tiny:blip2-tiny\n"}
    for name, body in cards.items():
        (tmp_path / f"{name}.yaml").write_text(f"name: {name}\nfamily: blip2\n{body}")
    result = cli.invoke(app, ["validate", *(str(tmp_path / f"{n}.yaml") for n in cards)], env={"COLUMNS": "400"})
    assert result.exit_code == 0  # a warning, not a failure
    assert f"{tmp_path / 'branch.yaml'}: revision: 'main' is a branch" in result.output
    assert "spatialbench download branch --dry-run" in result.output
    assert "pinned.yaml" not in result.output and "built.yaml" not in result.output


def test_unknown_model_and_task_fail_with_suggestions(tmp_path):
    result = cli.invoke(app, ["run", "--model", "blip2-tinny", "--output", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "unknown model 'blip2-tinny'" in result.output and "blip2-tiny" in result.output
    assert "Traceback" not in result.output
    result = cli.invoke(app, ["run", "--model", "blip2-tiny", "--tasks", "synth_vrs", "--output", str(tmp_path)],
                        env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "synth_vsr" in result.output


def test_run_prints_a_table_and_exits_nonzero_when_a_task_fails(small_tasks, tmp_path, monkeypatch):
    (small_tasks / "broken.yaml").write_text(
        "name: broken\nkind: relation\ngroups: [small]\n"
        "dataset: {source: synthetic, image_size: 64, sizes: {train: 0, validation: 4, test: 4}}\n"
    )
    args = ["run", "--model", "blip2-tiny", "--tasks", "small_relation,broken", "--seeds", "1", "--device", "cpu",
            "--include-path", str(small_tasks), "--output", str(tmp_path / "out"), "--baselines", "none", "--no-control"]
    monkeypatch.setattr("sys.argv", ["/usr/bin/spatialbench", *args])  # what the user typed, as the script sees it
    result = cli.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "small_relation" in result.output and "failed" in result.output
    assert "model blip2-tiny: random weights built in code" in result.output  # said before any number
    saved = json.loads((tmp_path / "out" / "blip2-tiny" / "results.json").read_text())
    assert saved["tasks"]["small_relation"]["status"] == "ok"
    assert saved["tasks"]["broken"]["status"] == "failed"
    assert saved["command"] == shlex.join(["spatialbench", *args])


def test_installed_wheel_ships_tasks_and_cards(tmp_path):
    """A non-editable install carries tasks/ and models/: `ls tasks` works from another directory."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(root)], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("spatialbench-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    shipped = sorted(p.name for p in (target / "spatialbench" / "_builtin" / "tasks").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (root / "tasks").glob("*.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-c", "from spatialbench.cli import main; main()", "ls", "tasks"],
                         cwd=elsewhere, env={"PYTHONPATH": str(target), "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in TaskRegistry().names():
        assert name in out.stdout
    listed = subprocess.run([sys.executable, "-c", "import spatialbench.registry as r; print(r.builtin_dir('tasks'))"],
                            cwd=elsewhere, env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert str(target) in listed.stdout
    # Provenance from a non-editable install: the commit it was built from, baked into the wheel.
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    told = subprocess.run([sys.executable, "-c", "import spatialbench.results as r; print(*r.provenance())"],
                          cwd=elsewhere, env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    commit, source = told.stdout.split()
    assert commit.removesuffix("-dirty") == head and source == "build", told.stderr


def test_demo_pretrains_the_testbed_and_runs_both_regimes_and_every_baseline(tmp_path, monkeypatch):
    import yaml

    from spatialbench.run import demo as shipped
    from spatialbench.testbed import pretraining as pt
    from spatialbench.testbed import build as testbed

    small = pt.Budget(train_scenes=48, validation_scenes=16, steps=3, batch_size=16)
    monkeypatch.setenv("SPATIALBENCH_CACHE", str(tmp_path / "cache"))  # a fresh machine: nothing built yet
    monkeypatch.setattr(testbed, "VISION_BUDGET", small)
    monkeypatch.setattr(testbed, "CAPTION_BUDGET", small)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for path in shipped.DEMO_TASK_DIR.glob("*.yaml"):  # the shipped demo tasks, shrunk to seconds
        spec = yaml.safe_load(path.read_text())
        spec["dataset"]["sizes"] = {"train": 30, "validation": 12, "test": 12}
        spec["probe"]["epochs"] = 2
        (tasks / path.name).write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(shipped, "DEMO_TASK_DIR", tasks)
    result = cli.invoke(app, ["demo", "--output", str(tmp_path / "out")], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "out" / "blip2-pretrained" / "results.json").read_text())
    assert set(run["regimes"]) == {"frozen", "joint"} and "blip2-pretrained" in run["checkpoint"]
    for task in ("demo_region_grid", "demo_relation"):
        assert {"frozen", "joint", "joint_random", "blind", "oracle", "vision_patches"} <= set(
            run["tasks"][task]["conditions"])
    built = tmp_path / "cache" / "tiny"
    assert {p.name.rsplit("-v", 1)[0] for p in built.iterdir()} == {"testbed-vision", "blip2-pretrained"}
    assert "How to read it" in result.output and "blip2-pretrained-spatial" in result.output


def test_an_output_that_is_a_file_is_a_clear_error_before_any_work(tmp_path):
    outfile = tmp_path / "outfile.txt"
    outfile.write_text("notes")
    result = cli.invoke(app, ["run", "--model", "blip2-tiny", "--tasks", "synth_relation", "--output", str(outfile),
                              "--cache-dir", str(tmp_path / "cache")], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert f"--output {outfile} is a file" in result.output and "OUTPUT/<model>/results.json" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "cache").exists()  # refused before loading anything


def test_validate_refuses_an_unknown_family_and_options_it_does_not_take_and_reads_a_directory(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "family.yaml").write_text("name: a\nfamily: blip-2\ncheckpoint: tiny:blip2-tiny\n")
    (cards / "option.yaml").write_text("name: b\nfamily: instructblip\ncheckpoint: tiny:instructblip-tiny\n"
                                       "options: {text_conditionning: false}\n")
    (cards / "fine.yaml").write_text("name: c\nfamily: idefics2\ncheckpoint: tiny:idefics2-tiny\n"
                                     "options: {image_splitting: true}\n")
    result = cli.invoke(app, ["validate", str(cards)], env={"COLUMNS": "400"})
    assert result.exit_code == 1
    out = result.output
    assert f"{cards / 'family.yaml'}: family: unknown adapter family 'blip-2'" in out and "blip2" in out
    assert f"{cards / 'option.yaml'}: options.text_conditionning: unknown key (did you mean text_conditioning?)" in out
    assert "allowed here: geometry, text_conditioning" in out
    assert "fine.yaml" not in out
