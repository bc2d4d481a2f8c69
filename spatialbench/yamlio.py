"""YAML reading that is strict where PyYAML is lenient, plus `include:` inheritance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpatialbenchError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""


def _mapping_no_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_no_duplicates)


def read_yaml(path: Path) -> dict:
    """Parse one YAML mapping, turning every failure into a SpatialbenchError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpatialbenchError(f"cannot read: {e}", file=str(path)) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(e, "problem", None) or str(e)
        fix = "YAML indents with spaces only: replace the tabs" if "\t" in text and "\\t" in str(problem) else None
        raise SpatialbenchError(f"invalid YAML: {problem}", file=str(path), field=where, fix=fix) from None
    if not isinstance(data, dict):
        raise SpatialbenchError(
            f"expected a mapping of keys to values, got {type(data).__name__}", file=str(path)
        )
    return data


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_with_includes(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read `path`; an `include:` (file or list of files, relative to it) is merged underneath."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise SpatialbenchError(f"include cycle: {cycle}", file=str(path), field="include")
    data = read_yaml(path)
    includes = data.pop("include", None)
    if includes is None:
        return data
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SpatialbenchError("must be a file name or a list of file names", file=str(path), field="include")
    merged: dict = {}
    for name in includes:
        target = path.parent / name
        if not target.is_file():
            raise SpatialbenchError(f"included file not found: {target}", file=str(path), field="include")
        merged = _merge(merged, read_with_includes(target, (*_chain, path)))
    return _merge(merged, data)
