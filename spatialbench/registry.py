"""Discovery of tasks (tasks/*.yaml plus --include-path) and model cards (models/*.yaml).

Files whose name starts with "_" are bases for `include:` and are not tasks themselves.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import SpatialbenchError, ValidationErrors, from_validation_error
from .specs import ModelCard, TaskSpec
from .yamlio import read_with_includes

T = TypeVar("T", bound=BaseModel)


def builtin_dir(name: str) -> Path:
    """tasks/ or models/: inside the installed wheel, or at the top of a source checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_builtin" / name, package.parent / name):
        if candidate.is_dir():
            return candidate
    raise SpatialbenchError(f"built-in {name}/ directory not found beside {package}")


_FILES: dict[int, tuple[BaseModel, Path]] = {}  # id(spec) -> (spec, its YAML): later errors can name the file


def load_spec(path: Path, model: type[T]) -> T:
    """One YAML file as a validated spec; every problem names the file and the field."""
    data = read_with_includes(path, fallback=(builtin_dir("tasks"),) if model is TaskSpec else ())
    try:
        spec = model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, str(path), model=model) from None
    _FILES[id(spec)] = (spec, Path(path))  # the spec is kept alive, so its id is never reused
    return spec


def spec_file(spec: BaseModel) -> Path | None:
    """The YAML file `spec` was loaded from by load_spec; None for a spec built in code."""
    entry = _FILES.get(id(spec))
    return entry[1] if entry is not None and entry[0] is spec else None


def yaml_files(dirs: list[Path]) -> list[Path]:
    files = []
    for d in dirs:
        if not d.exists():
            raise SpatialbenchError(f"include path does not exist: {d}", field="--include-path")
        found = [d] if d.is_file() else sorted([*d.rglob("*.yaml"), *d.rglob("*.yml")])
        files += [f for f in found if not f.name.startswith("_")]
    return files


def unknown_name(kind: str, name: str, known: list[str], extra: str = "") -> SpatialbenchError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"run `spatialbench ls {kind}s` to list them"
    return SpatialbenchError(f"unknown {kind} '{name}'{extra}", fix=hint)


class _Registry:
    kind = ""
    model: type[BaseModel]

    def __init__(self, dirs: list[Path]):
        self.items: dict = {}
        self.files: dict[str, Path] = {}
        errors: list[SpatialbenchError] = []
        for path in yaml_files(dirs):
            try:
                spec = load_spec(path, self.model)
            except ValidationErrors as e:
                errors += e.errors
                continue
            except SpatialbenchError as e:
                errors.append(e)
                continue
            if spec.name in self.items:
                errors.append(SpatialbenchError(
                    f"{self.kind} '{spec.name}' is also defined in {self.files[spec.name]}", file=str(path),
                    field="name"))
                continue
            self.items[spec.name], self.files[spec.name] = spec, path
        # A bad file is left out and named, not fatal: the other files of its directory still load.
        self.errors = errors

    def check(self) -> None:
        """Raise every file's problem together (`validate`); loading alone leaves bad files out."""
        if self.errors:
            raise ValidationErrors("", self.errors)

    def left_out(self) -> str:
        """Why a name may be missing: the files that failed to load, for an unknown-name message."""
        files = sorted({e.file for e in self.errors if e.file})
        return f" ({len(files)} file(s) failed to load: {', '.join(files)}; `spatialbench validate` them)" if files else ""

    def names(self) -> list[str]:
        return sorted(self.items)

    def get(self, name: str):
        if name not in self.items:
            raise unknown_name(self.kind, name, self.names(), self.left_out())
        return self.items[name]


class TaskRegistry(_Registry):
    kind, model = "task", TaskSpec

    def __init__(self, include_paths: list[Path] = ()):
        super().__init__([builtin_dir("tasks"), *map(Path, include_paths)])

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for spec in self.items.values():
            for group in spec.groups:
                out.setdefault(group, []).append(spec.name)
        return {g: sorted(names) for g, names in sorted(out.items())}

    def resolve(self, selector: str | list[str]) -> list[TaskSpec]:
        """`all`, group names and task names, comma-separated; order kept, duplicates dropped."""
        parts = [p for item in ([selector] if isinstance(selector, str) else selector) for p in item.split(",")]
        groups, chosen = self.groups(), {}
        for part in (p.strip() for p in parts if p.strip()):
            if part == "all":
                names = self.names()
            elif part in groups:
                names = groups[part]
            elif part in self.items:
                names = [part]
            else:
                raise unknown_name("task", part, [*self.names(), *groups, "all"],
                                   " (neither a task nor a group)" + self.left_out())
            chosen.update(dict.fromkeys(names))
        if not chosen:
            raise SpatialbenchError("no tasks selected", field="--tasks", fix="pass --tasks all, a group or names")
        return [self.items[n] for n in chosen]


CARDS_ENTRY_POINT = "spatialbench.cards"


def packaged_card_dirs() -> list[Path]:
    """Card directories that installed packages declare in the `spatialbench.cards` entry-point group."""
    dirs = []
    for ep in entry_points(group=CARDS_ENTRY_POINT):
        try:
            target = ep.load()
            dirs.append(Path(target() if callable(target) else target))
        except Exception as e:  # a broken package is named, not hidden behind a traceback
            raise SpatialbenchError(f"model cards from entry point {ep.value} failed to load: {e}",
                                    fix=f"fix or uninstall the package that provides '{ep.value}'") from e
    return dirs


class ModelRegistry(_Registry):
    kind, model = "model", ModelCard

    def __init__(self, include_paths: list[Path] = ()):
        super().__init__([builtin_dir("models"), *packaged_card_dirs(), *map(Path, include_paths)])


def resolve_card(model: ModelCard | str | Path) -> ModelCard:
    """A model card as given, by name, or from the path of a card's YAML file."""
    if isinstance(model, ModelCard):
        return model
    path = Path(model)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_spec(path, ModelCard)
    return ModelRegistry().get(str(model))
