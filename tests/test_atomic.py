"""Crash-safe writes."""

import os
import stat

import pytest

from spatialbench import atomic
from spatialbench.atomic import atomic_write


def test_the_file_gets_the_mode_of_a_plain_write_not_mkstemps_private_one(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "UMASK", 0o022)
    atomic_write(tmp_path / "results.json", lambda p: p.write_text("{}"))
    assert stat.S_IMODE(os.stat(tmp_path / "results.json").st_mode) == 0o644
    assert (tmp_path / "results.json").read_text() == "{}"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")

    def fail(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["results.json"]
