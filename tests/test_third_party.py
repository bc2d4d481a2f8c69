"""A third-party adapter package, installed from tests/fixtures, works with ls, check-adapter and run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "toy_adapter"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The toy package installed (non-editable, no network) into its own directory."""
    root = tmp_path_factory.mktemp("toy")
    wheels, target = root / "wheels", root / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(FIXTURE)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True)
    return target


def _cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", "from spatialbench.cli import main; main()", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_ls_models_shows_the_packaged_card(site, tmp_path):
    out = _cli(site, "ls", "models", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if "toy-tiny" in l)
    assert "toy" in line and "not installed" not in line and "random" in line  # its family loaded; its weights said


def test_check_adapter_passes_for_the_third_party_family(site, tmp_path):
    out = _cli(site, "check-adapter", "toy-tiny", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "prompt equals the model's own LLM input" in out.stdout and "conformant" in out.stdout
    # it inherits BLIP-2's layers, but its own reference_prompts returns none of them: unverified, said so
    line = next(l for l in out.stdout.splitlines() if "every declared layer" in l)
    assert "n/a" in line and "reference_prompts gives none" in line


def test_run_works_with_the_third_party_family(site, small_tasks, tmp_path):
    out = _cli(site, "run", "--model", "toy-tiny", "--tasks", "small_relation,small_vsr", "--seeds", "1",
               "--include-path", str(small_tasks), "--output", str(tmp_path / "out"), "--device", "cpu",
               "--baselines", "none", "--no-control", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    results = (tmp_path / "out" / "toy-tiny" / "results.json").read_text()
    assert '"family": "toy"' in results and '"visual_prompt_shape": [\n    4,\n    48\n  ]' in results
