"""The project's own error type: every bad input ends here, with where and how to fix it."""

from __future__ import annotations

from pydantic import ValidationError


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


def from_validation_error(err: ValidationError, file: str, root: str = "") -> ValidationErrors:
    """One SpatialbenchError per pydantic error, each naming the dotted field path."""
    out = []
    for e in err.errors():
        loc = ".".join(_clip(str(p)) for p in (root, *e["loc"]) if p != "")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `spatialbench validate` lists the allowed keys)"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {_short_repr(e['input'])})"
        out.append(SpatialbenchError(msg, file=file, field=loc or "(top level)"))
    return ValidationErrors(file, out)


def _short_repr(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # e.g. an int past Python's digit limit for str()
        text = f"a {type(value).__name__} too long to show"
    return _clip(text)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_INPUT else text[:MAX_INPUT] + "..."
