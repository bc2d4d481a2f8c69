"""Build hook: bake the source commit into the wheel, so results from a non-editable install name their code.

`pip install .` from a clone builds in the clone, where git can say the commit (and whether tracked files
differ from it). From an sdist or a tarball there is no git: the file then says why the commit is unknown.
"""

import json
import subprocess
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

TARGET = "spatialbench/_build_info.json"


def source_commit(root: str) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError) as e:
        return {"commit": None, "why": f"built without git history ({type(e).__name__}): from an sdist or a copy"}
    return {"commit": commit + ("-dirty" if dirty else ""), "why": None}


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if self.target_name != "wheel" or version == "editable":  # an editable install runs in its checkout
            return
        path = Path(tempfile.mkdtemp()) / "_build_info.json"
        path.write_text(json.dumps(source_commit(self.root)))
        build_data["force_include"][str(path)] = TARGET
