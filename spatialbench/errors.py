"""The project's own error type: every bad input ends here, with where and how to fix it."""

from __future__ import annotations

import difflib
from typing import get_args

from pydantic import BaseModel, ValidationError


class SpatialbenchError(Exception):
    """A user-facing error: what went wrong, where (file, field), and how to fix it."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None, fix: str | None = None):
        self.message, self.file, self.field, self.fix = message, file, field, fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.file, self.field) if p)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text}\n  fix: {self.fix}" if self.fix else text


MAX_LISTED = 20  # errors shown in one message: a file with thousands of errors still fits a screen
MAX_INPUT = 60  # characters of an offending value quoted back


class ValidationErrors(SpatialbenchError):
    """Several field errors in one file, reported together (each names the file itself)."""

    def __init__(self, file: str, errors: list[SpatialbenchError]):
        self.errors = errors
        lines = [str(e) for e in errors[:MAX_LISTED]]
        if len(errors) > MAX_LISTED:
            lines.append(f"... and {len(errors) - MAX_LISTED} more error(s)")
        super().__init__("\n".join(lines), file=None)
        self.file = file

    def __str__(self) -> str:  # every listed error already names its file: do not prefix it again
        return self.message


def from_validation_error(err: ValidationError, file: str, root: str = "", model=None) -> ValidationErrors:
    """One SpatialbenchError per pydantic error, each naming the dotted field path; an unknown key lists the
    keys allowed there (read off `model`, the pydantic model validated)."""
    out = []
    for e in err.errors():
        loc = ".".join(_clip(str(p)) for p in (root, *e["loc"]) if p != "")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            allowed = _keys_at(model, e["loc"][:-1])
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed or [], n=1)
            msg = "unknown key" + (f" (did you mean {close[0]}?)" if close else "") + (
                f"; allowed here: {', '.join(allowed)}" if allowed else " (check the spelling)")
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {_short_repr(e['input'])})"
        out.append(SpatialbenchError(msg, file=file, field=loc or "(top level)"))
    return ValidationErrors(file, out)


def _keys_at(model, loc: tuple) -> list[str] | None:
    """The field names of the pydantic model found at `loc` inside `model`, through lists, dicts and unions."""
    candidates = [model] if isinstance(model, type) and issubclass(model, BaseModel) else []
    for part in loc:
        here = next((m for m in candidates if part in m.model_fields), None)
        if here is not None:
            candidates = _models_in(here.model_fields[part].annotation)
        elif len(candidates) > 1:  # a union's tag (pydantic names the member it tried): the member that has it
            tagged = [m for m in candidates if any(part in get_args(f.annotation) for f in m.model_fields.values())]
            candidates = tagged or candidates
        # else: a list index or dict key: the same model goes on
    return sorted(candidates[0].model_fields) if len(candidates) == 1 else None


def _models_in(annotation) -> list:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _short_repr(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # e.g. an int past Python's digit limit for str()
        text = f"a {type(value).__name__} too long to show"
    return _clip(text)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_INPUT else text[:MAX_INPUT] + "..."
