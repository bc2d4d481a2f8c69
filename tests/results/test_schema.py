"""What a results JSON records about where its numbers came from."""

import subprocess

from spatialbench.results import git_hash


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_git_hash_says_when_tracked_files_differ_from_the_commit(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "task.yaml").write_text("version: 1\n")
    _git(tmp_path, "add", "task.yaml")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = git_hash(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "notes.txt").write_text("untracked files do not change the numbers")
    assert git_hash(tmp_path) == clean
    (tmp_path / "task.yaml").write_text("version: 2\n")
    assert git_hash(tmp_path) == clean + "-dirty"


def test_no_checkout_no_hash(tmp_path):
    assert git_hash(tmp_path) is None


def test_a_build_without_git_says_why_its_commit_is_unknown(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("hatch_build", Path(__file__).resolve().parents[2] / "hatch_build.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    info = hook.source_commit(str(tmp_path))  # an unpacked sdist: no .git
    assert info["commit"] is None and "without git history" in info["why"]
