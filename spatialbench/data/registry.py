"""The data-source registry and where real data lives: loaders import this, sources.py imports the loaders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SpatialbenchError
from ..specs import TaskSpec
from .examples import TaskData


@dataclass(frozen=True)
class DataContext:
    """Where real data lives on this machine: flags first, then environment variables."""

    data_dir: Path | None = None
    coco_root: Path | None = None

    @classmethod
    def from_flags(cls, data_dir: Path | None = None, coco_root: Path | None = None) -> DataContext:
        env = lambda name: Path(os.environ[name]) if os.environ.get(name) else None
        return cls(data_dir or env("SPATIALBENCH_DATA"), coco_root or env("COCO_ROOT"))

    def path(self, template: str, field: str, **values: str) -> Path:
        """Fill {data_dir}, {coco_root} and any given placeholders of a dataset path."""
        needed = {"data_dir": (self.data_dir, "--data-dir or $SPATIALBENCH_DATA"),
                  "coco_root": (self.coco_root, "--coco-root or $COCO_ROOT")}
        for name, (value, how) in needed.items():
            if "{" + name + "}" in template:
                if value is None:
                    raise SpatialbenchError(f"'{template}' needs {{{name}}}, which is not set", field=field,
                                            fix=f"pass {how}, or write an absolute path in the task YAML")
                values[name] = str(value)
        try:
            return Path(template.format(**values)).expanduser()
        except (KeyError, IndexError) as e:
            raise SpatialbenchError(f"unknown placeholder {e} in '{template}'", field=field) from None


Loader = Callable[[TaskSpec, DataContext], TaskData]
_SOURCES: dict[str, Loader] = {}


def register_source(name: str) -> Callable[[Loader], Loader]:
    def wrap(fn: Loader) -> Loader:
        _SOURCES[name] = fn
        return fn

    return wrap
