"""Crash safety: a run killed at any moment resumes to the same results; Ctrl-C keeps finished work;
two processes (gloo, CPU) share the images and the probe fits and agree with one process."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spatialbench.results import read_results
from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig
from tests.helpers import stable, write_small_tasks
from tests.helpers.paused_run import PAUSED

SPATIALBENCH = str(Path(sys.executable).parent / "spatialbench")
PAUSED_RUN = Path(__file__).parents[1] / "helpers" / "paused_run.py"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return write_small_tasks(tmp_path_factory.mktemp("resume") / "tasks")


@pytest.fixture(scope="module")
def without_control(small, tmp_path_factory) -> dict:
    """The uninterrupted single-process run without control tasks, which both concurrency tests must equal."""
    return _reference(small, tmp_path_factory.mktemp("reference"), control=False)


def _args(small, out, cache, *extra):
    return ["run", "--model", "blip2-tiny", "--tasks", "small_grid,small_relation,small_vsr", "--seeds", "2",
            "--device", "cpu", "--include-path", str(small), "--output", str(out), "--cache-dir", str(cache),
            "--baselines", "blind", *extra]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def _reference(small, tmp_path, **kw):
    config = RunConfig(model="blip2-tiny", tasks=["small_grid,small_relation,small_vsr"], seeds=2, device="cpu",
                       include_paths=[small], output=tmp_path / "reference", cache_dir=tmp_path / "cache",
                       baselines=["blind"], **kw)
    runner = Runner(config)
    return runner.run().model_dump(mode="json")


def _start_paused_after(args, cells: int, stderr) -> subprocess.Popen:
    """The run, stopped after its `cells`-th finished fit until a line is written to its stdin
    (tests/helpers/paused_run.py): a signal sent now arrives at a known point, however fast the machine."""
    proc = subprocess.Popen([sys.executable, str(PAUSED_RUN), str(cells), *args], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)
    for line in proc.stdout:  # ends when the run prints PAUSED, or when it exits without pausing
        if line.strip() == PAUSED:
            return proc
    proc.wait()
    raise AssertionError(f"the run ended (rc {proc.returncode}) before its {cells}th fit")


def test_sigkill_mid_task_then_rerun_gives_the_uninterrupted_results(small, without_control, tmp_path):
    reference = without_control
    out = tmp_path / "out"
    cells = out / "blip2-tiny" / "cells"
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = _start_paused_after(_args(small, out, tmp_path / "cache", "--no-control"), 4, stderr)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(cells.rglob("*.npz"))
    assert len(finished) == 4  # killed in the middle of the work: 12 fits in all
    for path in finished:  # every file on disk is whole: written to a temporary file, fsynced, renamed
        assert "meta" in np.load(path)
    if (out / "blip2-tiny" / "results.json").exists():
        read_results(out / "blip2-tiny" / "results.json")

    rerun = subprocess.run([SPATIALBENCH, *_args(small, out, tmp_path / "cache", "--no-control")], env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(finished)} reused" in rerun.stderr  # the finished cells were not fitted again
    resumed = read_results(out / "blip2-tiny" / "results.json").model_dump(mode="json")
    assert stable(resumed) == stable(reference)


def test_ctrl_c_keeps_finished_work_and_says_how_to_resume(small, tmp_path):
    out = tmp_path / "out"
    cells = out / "blip2-tiny" / "cells"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = _start_paused_after(_args(small, out, tmp_path / "cache"), 2, stderr)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=600)  # a guard against a hang, not a measurement: the run ends within seconds
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the run ignored SIGINT:\n{log.read_text()}") from None
    output = log.read_text()
    assert proc.returncode == 130, output
    assert "interrupted" in output and "Run the same command again to resume" in output
    assert "2 finished probe fits are kept" in output
    assert len(list(cells.rglob("*.npz"))) == 2


def _entries(cache: Path) -> list[str]:
    """The keys of every entry in the cache's shards (Shard.open checks each shard is whole)."""
    from spatialbench.features.shards import Shard

    return [k for path in sorted((cache / "features").rglob("shards/*.safetensors")) for k in Shard.open(path).keys]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_work_and_agree_with_one(small, without_control, tmp_path):
    reference = without_control
    out, cache = tmp_path / "out", tmp_path / "two-cache"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), SPATIALBENCH, *_args(small, out, cache, "--no-control")]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = read_results(out / "blip2-tiny" / "results.json")
    ex = result.extraction
    # Each image extracted exactly once in total, by one of the two processes; none dropped or padded.
    assert len(ex.by_process) == 2 and all(n > 0 for n in ex.by_process)
    assert sum(ex.by_process) == ex.extracted == ex.images
    keys = _entries(cache)
    assert len(keys) == len(set(keys)) == ex.images  # every image's entry written once, by one process
    # The probe cells were split between the processes; the results equal the single-process run's.
    assert stable(result.model_dump(mode="json")) == stable(reference)
    shutil.rmtree(out / "blip2-tiny" / "cells")


def test_two_runs_sharing_one_cache_at_once_both_finish_correctly(small, without_control, tmp_path):
    reference = without_control  # its own cache
    shared = tmp_path / "shared-cache"
    procs = [subprocess.Popen([SPATIALBENCH, *_args(small, tmp_path / f"out{i}", shared, "--no-control")],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for i in range(2):
        result = read_results(tmp_path / f"out{i}" / "blip2-tiny" / "results.json")
        assert stable(result.model_dump(mode="json")) == stable(reference)
    # Every image has an entry (two runs racing may both write one: the first whole copy is read); none
    # half-written, no temporary file left behind.
    keys = _entries(shared)
    assert len(set(keys)) == result.extraction.images and len(keys) <= 2 * result.extraction.images
    assert not [p for p in (shared / "features").rglob("*") if p.name.endswith(".tmp")]


def _fitted(output: str) -> int:
    return int(re.search(r"probe fits: (\d+) fitted", output).group(1))


def test_two_runs_on_one_output_fit_every_cell_once_between_them(small, without_control, tmp_path):
    out, cells = tmp_path / "out", tmp_path / "out" / "blip2-tiny" / "cells"
    procs = [subprocess.Popen([SPATIALBENCH, *_args(small, out, tmp_path / "cache", "--no-control")], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    finished = list(cells.rglob("*.npz"))
    assert len(finished) == 12 and sum(_fitted(o) for o in outputs) == 12, outputs  # each cell fitted once
    assert not list(cells.rglob("*.claim"))  # every claim released
    result = read_results(out / "blip2-tiny" / "results.json")
    assert stable(result.model_dump(mode="json")) == stable(without_control)


def test_a_fit_claimed_by_a_killed_process_is_fitted_by_the_other(small, without_control, tmp_path):
    out, cells = tmp_path / "out", tmp_path / "out" / "blip2-tiny" / "cells"
    args = _args(small, out, tmp_path / "cache", "--no-control")
    with open(tmp_path / "stderr.txt", "w") as stderr:
        first = _start_paused_after(args, 1, stderr)  # inside its first group of two cells: one left, claimed
    [claim] = cells.rglob("*.claim")
    assert str(first.pid) in claim.read_text()
    second = subprocess.Popen([SPATIALBENCH, *args], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    first.kill()
    first.wait()
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output
    assert _fitted(output) == 11  # all but the killed process's one finished fit, its claimed cell included
    assert not list(cells.rglob("*.claim"))
    result = read_results(out / "blip2-tiny" / "results.json")
    assert stable(result.model_dump(mode="json")) == stable(without_control)


def test_a_claim_of_another_node_is_taken_over_once_it_expires(small, without_control, tmp_path):
    out, cells = tmp_path / "out", tmp_path / "out" / "blip2-tiny" / "cells"
    claim = cells / "small_relation" / "frozen.claim"
    claim.parent.mkdir(parents=True)
    claim.write_text("another-node pid:[1] 4242 0123abcd")  # a process there died holding it; nothing touches it
    done = subprocess.run([SPATIALBENCH, *_args(small, out, tmp_path / "cache", "--no-control")],
                          env={**_env(), "SPATIALBENCH_CLAIM_EXPIRY": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _fitted(done.stderr) == 12 and not claim.exists()
    result = read_results(out / "blip2-tiny" / "results.json")
    assert stable(result.model_dump(mode="json")) == stable(without_control)
