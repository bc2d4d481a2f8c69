"""A run end to end: tiny BLIP-2 on small synthetic tasks into a results JSON."""

import json
from pathlib import Path

from spatialbench.registry import TaskRegistry
from spatialbench.results import RunResult, read_results
from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig


def _run(small_tasks: Path, out: Path, tasks="small", seeds=2, **kw) -> tuple[Runner, RunResult]:
    kw = {"baselines": [], "control": False, **kw}  # the frozen probe alone, unless a test asks for more
    config = RunConfig(model="blip2-tiny", tasks=[tasks], seeds=seeds, output=out, include_paths=[small_tasks],
                       device="cpu", **kw)
    runner = Runner(config)
    return runner, runner.run()


def test_run_writes_a_valid_results_json_for_every_kind(small_tasks, tmp_path):
    runner, result = _run(small_tasks, tmp_path / "out")
    on_disk = read_results(runner.results_path)
    assert on_disk == result
    assert {t.kind for t in result.tasks.values()} == {"region_localization", "relation", "vsr", "grounding"}
    for task in result.tasks.values():
        assert task.status == "ok", task.error
        summary = task.metrics[task.headline]
        assert len(summary.per_seed) == 2 and summary.ci95[0] <= summary.ci95[1]
        assert 0.0 <= summary.mean <= 1.0
        assert task.headline in task.chance
        assert task.n["test"] > 0 and task.n_images["test"] <= task.n["test"]
        lines = (runner.out_dir / task.predictions_file).read_text().splitlines()
        assert len(lines) == task.n["test"]
        first = json.loads(lines[0])
        assert set(first["predictions"]) == {"0", "1"}
        assert first["condition"] == "frozen"  # whose predictions these are
        if task.kind in ("relation", "region_localization"):  # explicit queries name their categories
            assert all(isinstance(n, str) and " " in n for n in first["query_names"])  # "red circle"
        if task.kind == "relation":
            assert first["target_name"] in ("left of", "right of", "above", "below")
            assert set(first["prediction_names"]) == {"0", "1"}
    assert result.visual_prompt_shape == (8, 48)
    assert result.checkpoint.startswith("blip2|local:")


def test_images_are_extracted_once_per_run_and_reused_by_the_next(small_tasks, tmp_path):
    _, first = _run(small_tasks, tmp_path / "a", cache_dir=tmp_path / "cache")
    # 72 scenes shared by all five tasks (same scene options): each extracted once for the whole run.
    assert first.extraction.images == 72
    assert first.extraction.extracted == 72 and first.extraction.reused == 0
    _, second = _run(small_tasks, tmp_path / "b", cache_dir=tmp_path / "cache")
    assert second.extraction.extracted == 0 and second.extraction.reused == 72
    for name, task in first.tasks.items():
        assert second.tasks[name].metrics == task.metrics  # same seeds, same features: identical numbers


def test_features_are_stored_in_16_bits_unless_float32_is_asked_for_and_the_two_never_mix(small_tasks, tmp_path):
    import pytest
    import torch

    from spatialbench.errors import SpatialbenchError
    from spatialbench.features.shards import Shard

    cache = tmp_path / "cache"
    runner, half = _run(small_tasks, tmp_path / "out", tasks="small_relation", seeds=1, cache_dir=cache)
    assert half.stored_dtype == "bfloat16" and read_results(runner.results_path).stored_dtype == "bfloat16"
    _, full = _run(small_tasks, tmp_path / "full", tasks="small_relation", seeds=1, cache_dir=cache,
                   stored_dtype="float32")
    assert full.stored_dtype == "float32"
    assert full.extraction.extracted == half.extraction.extracted > 0  # its own entries: none of the bf16 ones
    dtypes = {Shard.open(p).dtype for p in (cache / "features").rglob("shards/*.safetensors")}
    assert dtypes == {torch.bfloat16, torch.float32}
    with pytest.raises(SpatialbenchError, match="stored_dtype: 'bfloat16' there, 'float32' now"):
        _run(small_tasks, tmp_path / "out", tasks="small_vsr", seeds=1, cache_dir=cache, stored_dtype="float32")


def test_limit_is_recorded_as_testing_only(small_tasks, tmp_path):
    _, result = _run(small_tasks, tmp_path / "out", tasks="small_relation", seeds=1, limit=5)
    assert result.limit == 5 and "testing only" in result.limit_note
    assert result.tasks["small_relation"].n == {"train": 5, "validation": 5, "test": 5}


def test_a_failing_task_is_recorded_and_the_others_still_run(small_tasks, tmp_path):
    broken = small_tasks / "broken.yaml"
    broken.write_text(
        "name: broken\nkind: relation\ngroups: [small]\n"
        "dataset: {source: synthetic, image_size: 64, sizes: {train: 0, validation: 4, test: 4}}\n"
    )
    runner, result = _run(small_tasks, tmp_path / "out", seeds=1)
    assert result.tasks["broken"].status == "failed"
    assert "no examples" in result.tasks["broken"].error
    assert all(t.status == "ok" for n, t in result.tasks.items() if n != "broken")
    assert read_results(runner.results_path).tasks["broken"].status == "failed"


def test_every_shipped_synthetic_task_runs(tmp_path):
    shipped = [t.name for t in TaskRegistry().resolve("synthetic")]
    config = RunConfig(model="blip2-tiny", tasks=["synthetic"], seeds=1, limit=24, output=tmp_path, device="cpu",
                       baselines=[], control=False)
    result = Runner(config).run()
    assert sorted(result.tasks) == sorted(shipped)
    assert all(t.status == "ok" for t in result.tasks.values())


def test_a_data_seed_draws_other_scenes_and_is_recorded(small_tasks, tmp_path):
    """A confirmation run: the same tasks over scenes from a seed never used while choosing anything."""
    _, base = _run(small_tasks, tmp_path / "a", tasks="small_relation", seeds=1, cache_dir=tmp_path / "cache")
    _, other = _run(small_tasks, tmp_path / "b", tasks="small_relation", seeds=1, cache_dir=tmp_path / "cache",
                    data_seed=11)
    assert base.data_seed is None and other.data_seed == 11
    a, b = base.tasks["small_relation"], other.tasks["small_relation"]
    assert a.dataset_fingerprint != b.dataset_fingerprint and a.version == b.version
    assert other.extraction.extracted == other.extraction.images  # new images, none from the first run's cache
    assert b.test_images_in_train == 0.0 and "image" not in b.by_group  # synthetic splits share no image


def test_a_rerun_with_other_tasks_adds_to_the_results_and_drops_nothing(small_tasks, tmp_path):
    out = tmp_path / "out"
    runner, first = _run(small_tasks, out, tasks="small_relation", seeds=1, baselines=["blind"])
    _, second = _run(small_tasks, out, tasks="small_vsr", seeds=1)  # other task, no baselines this time
    on_disk = read_results(runner.results_path)
    assert set(on_disk.tasks) == {"small_relation", "small_vsr"}
    assert on_disk.tasks["small_relation"] == first.tasks["small_relation"]  # carried as it was
    assert on_disk.baselines == ["blind"]  # what the file's numbers include
    for task in on_disk.tasks.values():
        assert (runner.out_dir / task.predictions_file).is_file()


def test_a_rerun_with_other_conditions_keeps_the_earlier_ones(small_tasks, tmp_path):
    out = tmp_path / "out"
    runner, first = _run(small_tasks, out, tasks="small_relation", seeds=1, baselines=["blind"])
    _, second = _run(small_tasks, out, tasks="small_relation", seeds=1, baselines=["oracle"])
    conditions = read_results(runner.results_path).tasks["small_relation"].conditions
    assert {"frozen", "blind", "oracle"} <= set(conditions)
    assert conditions["blind"] == first.tasks["small_relation"].conditions["blind"]


def test_a_rerun_whose_numbers_are_not_comparable_is_refused_and_the_file_kept(small_tasks, tmp_path):
    import pytest

    from spatialbench.errors import SpatialbenchError

    out = tmp_path / "out"
    runner, _ = _run(small_tasks, out, tasks="small_relation", seeds=1)
    before = runner.results_path.read_bytes()
    with pytest.raises(SpatialbenchError) as err:
        _run(small_tasks, out, tasks="small_vsr", seeds=2)
    assert "seeds: [0] there, [0, 1] now" in str(err.value) and "--output" in err.value.fix
    assert runner.results_path.read_bytes() == before


def test_a_cache_on_a_disk_too_small_for_the_features_is_refused_before_any_work(small_tasks, tmp_path):
    """A 1 MB tmpfs, mounted in a mount namespace of the run's own (unshare: root or not, nothing to clean
    up): the tiny checkpoint (about 430 KB) is built there, and the features of 2,000 scenes (about 1.5 MB
    in bf16) would not fit."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    spec = yaml.safe_load((small_tasks / "small_relation.yaml").read_text())
    spec["name"] = "many_scenes"
    spec["dataset"]["sizes"] = {"train": 1800, "validation": 100, "test": 100}
    (small_tasks / "many_scenes.yaml").write_text(yaml.safe_dump(spec))
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    run = [str(Path(sys.executable).parent / "spatialbench"), "run", "--model", "blip2-tiny", "--tasks", "many_scenes",
           "--include-path", str(small_tasks), "--seeds", "1", "--baselines", "none", "--no-control", "--device", "cpu",
           "--cache-dir", str(disk / "cache"), "--output", str(out)]
    script = f"mount -t tmpfs -o size=1m tmpfs {disk} && exec {' '.join(run)}"
    assert shutil.which("unshare"), "util-linux's unshare is needed (apt-get install util-linux)"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert "the features this run adds to the cache need" in message and "MB" in message
    assert f"{disk / 'cache'}" in message and "free" in message and "--cache-dir" in message
    assert not (out / "blip2-tiny" / "results.json").exists()  # refused before the results file was written
    # Where there is room, the same run goes ahead.
    done = subprocess.run(run[:run.index("--cache-dir")] + ["--cache-dir", str(tmp_path / "cache"), "--output", str(out),
                                                            "--limit", "4"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
