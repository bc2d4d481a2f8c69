"""The `spatialbench leaderboard` commands: build the static page, validate submitted results files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..data.registry import DataContext
from ..errors import SpatialbenchError, ValidationErrors

app = typer.Typer(help="Build the static leaderboard page from results JSONs, and check submitted results.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None)  # plain help: full-width descriptions at 80 columns
# markup=False: paths and messages quote user data, which must never be read as rich markup
out = Console(markup=False, highlight=False, soft_wrap=True)  # soft_wrap: one line per file, for grep and CI logs
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

IncludePath = Annotated[Optional[list[Path]], typer.Option(
    help="extra task YAML directories or files, for results of tasks of your own")]
DataDir = Annotated[Optional[Path], typer.Option(
    help="annotations root, to check the split sizes of real-data tasks [default: $SPATIALBENCH_DATA]")]
CocoRoot = Annotated[Optional[Path], typer.Option(help="COCO images root [default: $COCO_ROOT]")]


def _problems(error: SpatialbenchError) -> list[SpatialbenchError]:
    return error.errors if isinstance(error, ValidationErrors) else [error]


def results_files(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for every results.json under it (`results/`, as one types it)."""
    out = []
    for path in paths:
        found = sorted(path.rglob("results.json")) if path.is_dir() else [path]
        if not found:
            raise SpatialbenchError(f"no results.json under {path}", file=str(path),
                                    fix="point at results/<model>/results.json files or the folder holding them")
        out += found
    return out


def _ok_line(report) -> str:
    r = report.result
    conditions = ", ".join([*r.regimes, *r.baselines])
    line = f"OK {report.path}: {r.model.name}, {len(r.tasks)} task(s), {conditions}"
    line += f"; layers {', '.join(r.layers)}" if r.layers else ""
    return line + (f" ({'; '.join(report.notes)})" if report.notes else "")


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="results JSONs (results/<model>/results.json), or folders of them")],
    include_path: IncludePath = None,
    data_dir: DataDir = None,
    coco_root: CocoRoot = None,
) -> None:
    """Check results files: the schema, the task registry (name, version, split sizes) and internal consistency."""
    from .validate import Validator

    try:
        validator = Validator(include_path or [], DataContext.from_flags(data_dir, coco_root))
    except SpatialbenchError as e:
        for problem in _problems(e):
            err.print(f"error: {problem}")
        raise typer.Exit(2)
    try:
        files = results_files(files)
    except SpatialbenchError as e:
        err.print(f"error: {e}")
        raise typer.Exit(2)
    invalid = 0
    for path in files:
        report = validator.check(path)
        if report.ok:
            out.print(_ok_line(report))
            continue
        invalid += 1
        for problem in report.problems:
            err.print(f"✗ {problem}")
    if invalid:
        err.print(f"{invalid} of {len(files)} file(s) invalid")
        raise typer.Exit(1)


@app.command()
def build(
    results: Annotated[list[Path], typer.Argument(help="results JSONs (e.g. results/*/results.json), or folders of them")],
    out_dir: Annotated[Path, typer.Option("--out", help="where the site goes (other files there are kept)")] = Path(
        "leaderboard"),
    title: Annotated[str, typer.Option(help="the page's title")] = "spatialbench leaderboard",
    include_path: IncludePath = None,
    data_dir: DataDir = None,
    coco_root: CocoRoot = None,
) -> None:
    """Build a self-contained static page (open index.html from disk, or host the folder anywhere)."""
    from .build import build as build_site

    try:
        table, reports = build_site(results_files(results), out_dir, include_path or [], DataContext.from_flags(data_dir, coco_root),
                                    title)
    except SpatialbenchError as e:
        problems = _problems(e)
        for problem in problems:
            err.print(f"✗ {problem}")
        err.print(f"refusing to build: {len(problems)} problem(s); `spatialbench leaderboard validate` checks a file")
        raise typer.Exit(1)
    for report in reports:
        for note in report.notes:
            out.print(f"note: {report.path}: {note}")
    out.print(f"built {out_dir / 'index.html'}: {len(table['rows'])} rows ({len(table['models'])} models x "
              f"regimes and baselines), {len(table['tasks'])} tasks")
