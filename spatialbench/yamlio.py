"""YAML reading that is strict where PyYAML is lenient, plus `include:` inheritance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import SpatialbenchError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently, and reports a value its
    converters cannot take (a date-like or !!tagged scalar: ValueError, KeyError, ...) with its line."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever a converter raises becomes a located YAML error
            value = f" {node.value!r}" if isinstance(node, yaml.ScalarNode) and len(node.value) <= 60 else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value{value} as {node.tag.rpartition(':')[2]} ({type(e).__name__}: {e})",
                node.start_mark) from None


def _mapping_no_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    """A key written twice in one mapping is refused; keys merged in with `<<: *anchor` may be overridden."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # a list or mapping used as a key
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)  # handles `<<` merges; explicit keys win over merged ones


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
        if str(problem).startswith("cannot read the value"):
            fix = "quote the value to keep it a string (e.g. '2020-13-45'), or correct it"
        raise SpatialbenchError(f"invalid YAML: {problem}", file=str(path), field=where, fix=fix) from None
    except RecursionError:
        raise SpatialbenchError("invalid YAML: nested too deeply", file=str(path)) from None
    except Exception as e:  # noqa: BLE001 - a safety net: converters are caught in construct_object above
        raise SpatialbenchError(f"invalid YAML value ({type(e).__name__}: {e})", file=str(path),
                                fix="quote the value to keep it a string (e.g. '2020-13-45'), or correct it") from None
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


def read_with_includes(path: Path, fallback: tuple[Path, ...] = (), _chain: tuple[Path, ...] = ()) -> dict:
    """Read `path`; an `include:` (file or list of files, relative to it, else found in a `fallback` directory:
    the built-in tasks/, so a shipped task copied into one's own folder still finds its base) is merged
    underneath."""
    try:
        path = path.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise SpatialbenchError(f"cannot resolve the path: {e}", file=str(path)) from None
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
        places = [path.parent / name, *(Path(d) / name for d in fallback)]
        target = next((p for p in places if os.path.isfile(p)), None)  # isfile: False for a name with a NUL
        if target is None:
            raise SpatialbenchError(f"included file not found: {' nor '.join(map(str, places))}", file=str(path),
                                    field="include", fix="name a file beside this one or a built-in base (tasks/_*.yaml)")
        merged = _merge(merged, read_with_includes(target, fallback, (*_chain, path)))
    return _merge(merged, data)
