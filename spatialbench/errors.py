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


class ValidationErrors(SpatialbenchError):
    """Several field errors in one file, reported together."""

    def __init__(self, file: str, errors: list[SpatialbenchError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors), file=None)
        self.file = file


def from_validation_error(err: ValidationError, file: str, root: str = "") -> ValidationErrors:
    """One SpatialbenchError per pydantic error, each naming the dotted field path."""
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (root, *e["loc"]) if p != "")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `spatialbench validate` lists the allowed keys)"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        out.append(SpatialbenchError(msg, file=file, field=loc or "(top level)"))
    return ValidationErrors(file, out)
