"""`leaderboard build`: validated results files -> a static site that opens from disk or any web host.

The site is index.html, style.css and three scripts, plus the data twice: data.json for other tools, and
data.js for the page itself, because browsers refuse fetch() of a local file opened over file://.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

from ..atomic import atomic_write
from ..data.registry import DataContext
from ..errors import SpatialbenchError, ValidationErrors
from .table import Source, build_data
from .validate import Report, Validator

ASSETS = ("index.html", "style.css", "app.js", "detail.js", "plots.js")
DATA_GLOBAL = "SPATIALBENCH_LEADERBOARD"

# Inside a <script>, "</script>" or "<!--" in a string would end or confuse the script, and U+2028/2029 end a
# line in older JavaScript. Escaping these as \uXXXX keeps every string exactly as it was, and inert.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(data: object) -> str:
    """JSON that is safe to embed in a script, whatever its strings hold."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.translate(str.maketrans(_SCRIPT_ESCAPES))


def data_script(data: object) -> str:
    """data.js: the data as a string literal handed to JSON.parse, which browsers parse much faster than the
    same data written as a JavaScript object literal (it matters at hundreds of models)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return f"window.{DATA_GLOBAL} = JSON.parse({script_json(text)});\n"


def write_site(data: dict, out: Path) -> Path:
    """Write the page's files into `out` (other files there are left alone); returns index.html's path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpatialbenchError("exists and is not a directory", file=str(out), field="--out")
    out.mkdir(parents=True, exist_ok=True)
    assets = resources.files(__package__)
    for name in ASSETS:
        with resources.as_file(assets / name) as src:
            atomic_write(out / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    try:
        js = data_script(data)
    except ValueError as e:  # NaN or infinity: validation should have caught it
        raise SpatialbenchError(f"the data is not valid JSON: {e}", field="--out") from None
    atomic_write(out / "data.js", lambda tmp: tmp.write_text(js, encoding="utf-8"))
    # Compact: with indent, json falls back to its pure-Python encoder, ten times slower on a large board.
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    atomic_write(out / "data.json", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    for name in (*ASSETS, "data.js", "data.json"):
        (out / name).chmod(0o644)  # atomic_write's temporary file is private; a web server must read these
    return out / "index.html"


def validate_all(paths: list[Path], validator: Validator) -> list[Report]:
    """Every file's report; raises one ValidationErrors listing every problem of every invalid file."""
    if not paths:
        raise SpatialbenchError("no results files given", field="RESULTS", fix="pass results/*/results.json")
    reports = [validator.check(Path(p)) for p in paths]
    problems = [p for r in reports for p in r.problems]
    if problems:
        raise ValidationErrors("", problems)
    return reports


def check_same_items(reports: list[Report]) -> None:
    """A page compares rows item by item, so every file must have scored each task on the same items: the
    same scenes (dataset seed), data and --limit, which the task's dataset fingerprint digests."""
    seen: dict[str, dict[str, list[str]]] = {}
    for r in reports:
        for name, task in r.result.tasks.items():
            if task.status == "ok":
                seen.setdefault(name, {}).setdefault(task.dataset_fingerprint, []).append(f"{r.path} (data seed "
                                                                                          f"{r.result.data_seed})")
    problems = [SpatialbenchError(
        f"task '{name}' was scored on different items in different files: "
        + "; ".join(f"{', '.join(files)}: fingerprint {fp}" for fp, files in by_fp.items()),
        field=f"tasks.{name}.dataset_fingerprint",
        fix="build one page from runs with the same --data-seed (and data), or build them as separate pages")
        for name, by_fp in seen.items() if len(by_fp) > 1]
    if problems:
        raise ValidationErrors("", problems)


def build(paths: list[Path], out: Path, include_paths: list[Path] = (), data: DataContext | None = None,
          title: str = "spatialbench leaderboard") -> tuple[dict, list[Report]]:
    """Validate, tabulate and write the site. Refuses (raises) if any file is invalid."""
    validator = Validator(include_paths, data)
    reports = validate_all(paths, validator)
    check_same_items(reports)
    sources = [Source(r.path, r.result) for r in reports]
    table = build_data(sources, validator.known_tasks(), title)
    write_site(table, out)
    return table, reports
