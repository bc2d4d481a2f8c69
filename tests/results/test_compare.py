"""Model vs model: `spatialbench compare` pairs two runs' per-item scores and bootstraps over images."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.results.compare import ModelComparison, compare
from spatialbench.errors import SpatialbenchError
from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig
from tests.helpers.runs import run_dir, samples

def test_known_answer_a_beats_b_on_every_item(tmp_path):
    a = run_dir(tmp_path, "a", [1.0] * 40)
    b = run_dir(tmp_path, "b", [1.0] * 20 + [0.0] * 20)
    result = compare(a, b)
    t = result.tasks["tiny_relation"]
    assert (t.a, t.b, t.diff) == (1.0, 0.5, 0.5)
    assert t.n_items == 40 and t.n_images == 10
    assert 0.0 < t.ci95[0] <= 0.5 <= t.ci95[1] < 1.0
    assert t.p_value == pytest.approx(1 / 2001)  # no replicate reaches the shifted null
    assert set(result.skipped) == {"tiny_grid", "tiny_vsr"}  # the fixture's other tasks: no samples files here
    assert result.skipped["tiny_grid"].startswith(f"no samples file {a.parent / 'samples_tiny_grid.jsonl'}")


def test_the_same_run_against_itself_differs_by_nothing(tmp_path):
    rng = np.random.default_rng(0)
    a = run_dir(tmp_path, "a", list(rng.integers(0, 2, 60).astype(float)))
    t = compare(a, a).tasks["tiny_relation"]
    assert t.diff == 0.0 and t.ci95 == (0.0, 0.0) and t.p_value == 1.0


def test_the_condition_picks_which_scores_are_paired(tmp_path):
    a = run_dir(tmp_path, "a", [1.0] * 30)
    b = run_dir(tmp_path, "b", [0.0] * 30)
    assert compare(a, b, "frozen").tasks["tiny_relation"].diff == 1.0
    assert compare(a, b, "joint").tasks["tiny_relation"].diff == -1.0  # the samples' joint score is 1 - frozen's


def test_older_samples_files_compare_their_first_regime_only(tmp_path):
    a = run_dir(tmp_path, "a", [1.0] * 30, with_scores=False)
    b = run_dir(tmp_path, "b", [0.5] * 30, with_scores=False)
    assert compare(a, b, "frozen").tasks["tiny_relation"].diff == 0.5
    with pytest.raises(SpatialbenchError, match="predates per-condition scores") as e:
        compare(a, b, "joint")
    assert "samples_tiny_relation.jsonl" in str(e.value) and "--condition frozen" in str(e.value)


def test_other_test_items_are_skipped_with_the_reason(tmp_path):
    a = run_dir(tmp_path, "a", [1.0] * 30)
    b = run_dir(tmp_path, "b", [1.0] * 30)
    data = json.loads(b.read_text())
    data["tasks"]["tiny_relation"]["version"] = 2
    b.write_text(json.dumps(data))
    result = compare(a, b)
    assert result.tasks == {} and "task version 1 in A, 2 in B" in result.skipped["tiny_relation"]
    samples(b.parent, [1.0] * 29, 10)  # one item fewer
    data["tasks"]["tiny_relation"]["version"] = 1
    b.write_text(json.dumps(data))
    assert "1 not in both" in compare(a, b).skipped["tiny_relation"]
    assert "has no 'random_resampler'" in compare(a, b, "random_resampler").skipped["tiny_relation"]


def test_a_broken_samples_line_names_the_file_and_line(tmp_path):
    a = run_dir(tmp_path, "a", [1.0] * 5)
    path = a.parent / "samples_tiny_relation.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(SpatialbenchError, match="line 6") as e:
        compare(a, a)
    assert str(path) in str(e.value)


def _real_run(model: str, small_tasks: Path, out: Path) -> Path:
    config = RunConfig(model=model, tasks=["small_relation,small_grid"], seeds=2, output=out,
                       include_paths=[small_tasks], device="cpu", regime="both", baselines=["blind"], control=False)
    runner = Runner(config)
    runner.run()
    return runner.results_path


def test_two_real_runs_compare_from_the_command_line(small_tasks, tmp_path):
    a = _real_run("blip2-tiny", small_tasks, tmp_path / "runs")
    b = _real_run("kosmos2-tiny", small_tasks, tmp_path / "runs")
    out = tmp_path / "comparison.json"
    got = CliRunner().invoke(app, ["compare", str(a), str(b), "--condition", "joint", "--out", str(out)],
                             env={"COLUMNS": "160"})
    assert got.exit_code == 0, got.output
    assert "blip2-tiny - kosmos2-tiny (joint)" in got.output and "items/imgs" in got.output
    result = ModelComparison.model_validate_json(out.read_text())
    assert set(result.tasks) == {"small_relation", "small_grid"} and result.skipped == {}
    for name, t in result.tasks.items():
        ours = json.loads(a.read_text())["tasks"][name]["conditions"]["joint"]["metrics"]["accuracy"]["mean"]
        theirs = json.loads(b.read_text())["tasks"][name]["conditions"]["joint"]["metrics"]["accuracy"]["mean"]
        # the samples' seed-averaged item scores average back to each run's reported mean
        assert t.a == pytest.approx(ours) and t.b == pytest.approx(theirs) and t.diff == pytest.approx(ours - theirs)
        assert t.ci95[0] <= t.diff <= t.ci95[1]
    frozen = CliRunner().invoke(app, ["compare", str(a), str(b), "--condition", "blind"])
    assert frozen.exit_code == 0, frozen.output


def test_nothing_comparable_exits_1(tmp_path):
    a = run_dir(tmp_path, "a", [1.0] * 5)
    got = CliRunner().invoke(app, ["compare", str(a), str(a), "--condition", "random_resampler"])
    assert got.exit_code == 1 and "no task could be compared" in got.output
    assert "skipped tiny_relation: A has no 'random_resampler'" in got.output
