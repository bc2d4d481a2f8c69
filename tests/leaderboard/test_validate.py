"""`leaderboard validate`: valid fixtures pass with one OK line each; every kind of bad file names its field."""

import copy

import pytest
from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.leaderboard.validate import Validator
from spatialbench.registry import TaskRegistry

from .helpers import MODELS, TASKS, fixture_data, write

cli = CliRunner()


def validate(*paths, include=True):
    args = ["leaderboard", "validate", *map(str, paths)] + (["--include-path", str(TASKS)] if include else [])
    return cli.invoke(app, args, env={"COLUMNS": "300"})


def test_the_fixtures_are_valid_with_one_ok_line_per_file(results):
    result = validate(*results)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("OK ") for line in lines)
    assert "blip2-tiny, 3 task(s), frozen, joint, blind" in lines[0]
    assert "; layers vision.1, vision.2, resampler.1, resampler.2" in lines[0]


def _frozen(task: dict) -> list[dict]:
    """The frozen regime's metrics, which the top-level metrics repeat: edit both, or the copy disagrees."""
    return [task["metrics"], task["conditions"]["frozen"]["metrics"]]


def out_of_range(d):
    for m in _frozen(d["tasks"]["tiny_vsr"]):
        m["accuracy"].update(mean=1.3, per_seed=[1.3, 1.3], ci95=[0.5, 0.9])


def ci_misses_mean(d):
    for m in _frozen(d["tasks"]["tiny_relation"]):
        m["accuracy"].update(mean=0.41, per_seed=[0.4, 0.42], ci95=[0.6, 0.7])


def mean_is_not_mean_of_seeds(d):
    for m in _frozen(d["tasks"]["tiny_grid"]):
        m["accuracy"]["per_seed"] = [m["accuracy"]["mean"] + 0.1, m["accuracy"]["mean"] + 0.2]


def seeds_missing(d):
    d["tasks"]["tiny_vsr"]["conditions"]["joint"]["metrics"]["macro_f1"]["per_seed"].pop()


def n_wrong(d):
    d["tasks"]["tiny_grid"]["n"]["test"] += 7


def more_images_than_examples(d):
    task = d["tasks"]["tiny_relation"]
    task["n_images"]["train"] = task["n"]["train"] + 1


def unknown_task(d):
    d["tasks"]["tiny_nope"] = dict(copy.deepcopy(d["tasks"]["tiny_vsr"]), name="tiny_nope")


def unknown_version(d):
    d["tasks"]["tiny_vsr"]["version"] = 7


def ok_without_metrics(d):
    task = d["tasks"]["tiny_vsr"]
    task["metrics"], task["conditions"], task["comparisons"] = {}, {}, {}


def gap_is_not_the_difference(d):
    d["tasks"]["tiny_grid"]["comparisons"]["joint_vs_frozen"]["diff"] += 0.2


def selectivity_is_not_task_minus_control(d):
    d["tasks"]["tiny_relation"]["conditions"]["joint"]["selectivity"]["diff"] += 0.1


def recovered_is_not_the_share(d):
    d["tasks"]["tiny_vsr"]["conditions"]["frozen"]["recovered"]["value"] += 0.3


def recovered_without_its_ceiling(d):
    del d["tasks"]["tiny_grid"]["conditions"]["oracle"]


def baseline_as_regime(d):
    d["tasks"]["tiny_vsr"]["conditions"]["blind"]["role"] = "regime"


def layer_as_baseline(d):
    d["tasks"]["tiny_relation"]["conditions"]["resampler.1"]["role"] = "baseline"


def layer_not_in_the_run(d):
    d["layers"].remove("vision.1")


def not_a_layer_name(d):
    d["layers"].append("decoder.3")


def layer_step_is_not_the_difference(d):
    d["tasks"]["tiny_grid"]["comparisons"]["resampler.2_vs_resampler.1"]["diff"] += 0.2


def wrong_type(d):
    d["tasks"]["tiny_vsr"]["conditions"]["frozen"]["metrics"]["accuracy"]["mean"] = "high"


def unknown_key(d):
    d["tasks"]["tiny_grid"]["score"] = 1.0


CASES = [
    (out_of_range, "tasks.tiny_vsr.metrics.accuracy.mean", "1.3 is outside [0, 1]"),
    (ci_misses_mean, "tasks.tiny_relation.conditions.frozen.metrics.accuracy.ci95", "does not contain the mean 0.41"),
    (mean_is_not_mean_of_seeds, "tasks.tiny_grid.metrics.accuracy.mean", "is not the mean of per_seed"),
    (seeds_missing, "tasks.tiny_vsr.conditions.joint.metrics.macro_f1.per_seed", "1 value(s) for the run's 2 seed(s)"),
    (n_wrong, "tasks.tiny_grid.n.test", "but task 'tiny_grid' v1 has"),
    (more_images_than_examples, "tasks.tiny_relation.n_images.train", "images for"),
    (unknown_task, "tasks.tiny_nope", "unknown task 'tiny_nope'"),
    (unknown_version, "tasks.tiny_vsr.version", "version 7 of 'tiny_vsr' is not known; the registry has version 1"),
    (ok_without_metrics, "tasks.tiny_vsr.metrics", "status is 'ok' but there are no metrics"),
    (gap_is_not_the_difference, "tasks.tiny_grid.comparisons.joint_vs_frozen.diff", "is not the difference"),
    (selectivity_is_not_task_minus_control, "tasks.tiny_relation.conditions.joint.selectivity.diff",
     "is not the difference"),
    (recovered_is_not_the_share, "tasks.tiny_vsr.conditions.frozen.recovered.value",
     "is not (score - blind) / (oracle - blind)"),
    (recovered_without_its_ceiling, "tasks.tiny_grid.conditions.frozen.recovered", "lacks the blind or the oracle"),
    (baseline_as_regime, "tasks.tiny_vsr.conditions.blind.role", "blind is a baseline"),
    (layer_as_baseline, "tasks.tiny_relation.conditions.resampler.1.role", "resampler.1 is a layer"),
    (layer_not_in_the_run, "tasks.tiny_grid.conditions.vision.1", "is not among the run's regimes"),
    (not_a_layer_name, "layers", "'decoder.3' is not a layer name"),
    (layer_step_is_not_the_difference, "tasks.tiny_grid.comparisons.resampler.2_vs_resampler.1.diff",
     "is not the difference"),
    (wrong_type, "tasks.tiny_vsr.conditions.frozen.metrics.accuracy.mean", "valid number"),
    (unknown_key, "tasks.tiny_grid.score", "unknown key"),
]


@pytest.mark.parametrize("mutate, field, phrase", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_kind_of_bad_file_is_rejected_naming_the_field(tmp_path, mutate, field, phrase):
    data = fixture_data("blip2-tiny")
    mutate(data)
    bad = write(tmp_path / "bad.json", data)
    good = write(tmp_path / "good.json", fixture_data("kosmos2-tiny"))
    result = validate(good, bad)
    assert result.exit_code == 1
    assert f"OK {good}" in result.output and f"OK {bad}" not in result.output
    assert f"{bad}: {field}: " in result.output and phrase in result.output, result.output
    assert "1 of 2 file(s) invalid" in result.output


def test_a_file_that_is_not_json_is_rejected(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text('{"schema_version": 2, ')
    result = validate(bad)
    assert result.exit_code == 1 and f"{bad}: not a readable JSON file" in result.output


def test_tasks_of_your_own_need_their_yaml(results):
    result = validate(results[0], include=False)
    assert result.exit_code == 1
    assert "tasks.tiny_grid: unknown task 'tiny_grid'" in result.output and "--include-path" in result.output


def test_real_dataset_sizes_are_skipped_with_a_note_when_the_data_is_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("SPATIALBENCH_DATA", raising=False)
    data = fixture_data("idefics2-tiny")
    task = data["tasks"].pop("tiny_vsr")
    version = TaskRegistry().get("vsr_random").version
    data["tasks"] = {"vsr_random": dict(task, name="vsr_random", version=version)}
    result = validate(write(tmp_path / "r.json", data), include=False)
    assert result.exit_code == 0, result.output
    assert "n of vsr_random not checked: it reads the VSR annotations from the Hub" in result.output


def test_expected_sizes_respect_the_files_limit():
    validator = Validator()
    spec = validator.registry.get("synth_vsr")
    n, images = validator.expected_sizes(spec, 5)
    assert n == {"train": 5, "validation": 5, "test": 5} and all(1 <= images[s] <= 5 for s in images)
    full, _ = validator.expected_sizes(spec, None)
    assert full["train"] > 5


def test_every_fixture_model_differs():
    """The fixtures cover three families and both regimes, as the browser tests assume."""
    families = {fixture_data(m)["model"]["family"] for m in MODELS}
    regimes = {r for m in MODELS for r in fixture_data(m)["regimes"]}
    assert len(families) == 3 and regimes == {"frozen", "joint"}


def test_a_confirmation_run_is_checked_against_its_own_data_seed():
    """A recorded run with --data-seed 3 (docs/methodology.md): its split sizes are those of seed 3's scenes,
    not those of the task's own seed, and it validates against the current registry."""
    from pathlib import Path

    path = Path(__file__).parents[2] / "docs" / "runs" / "blip2-tiny-synth-vsr-v5-seed3.json"
    report = Validator().check(path)
    assert report.result.data_seed == 3
    assert report.ok, [str(p) for p in report.problems]
    spec = TaskRegistry().get("synth_vsr")
    assert report.result.tasks["synth_vsr"].n["train"] != Validator().expected_sizes(spec, None)[0]["train"]
