"""The `spatialbench` command line."""

from __future__ import annotations

import inspect
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import SpatialbenchError
from .specs import BASELINES, RunConfig

# rich_markup_mode=None: click's plain help, whose descriptions take the terminal's whole width at 80 columns
# (rich's option panels leave them a narrow column there).
app = typer.Typer(help="Probe whether a resampler's visual prompt keeps spatial information.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)
out = Console()
err = Console(stderr=True)


def _fail(error: SpatialbenchError) -> None:
    err.print(f"[red]error:[/red] {error}", markup=True, highlight=False)
    raise typer.Exit(2)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _baselines(text: str) -> list[str]:
    names = {"all": list(BASELINES), "none": []}.get(text.strip(), [b.strip() for b in text.split(",") if b.strip()])
    bad = [b for b in names if b not in BASELINES]
    if bad:
        _fail(SpatialbenchError(f"unknown baseline(s) {bad}", field="--baselines", fix=f"choose from {list(BASELINES)}"))
    return names


class Regime(str, Enum):
    frozen = "frozen"
    joint = "joint"
    both = "both"


class Point(str, Enum):
    resampler = "resampler"
    projected = "projected"
    vision_patches = "vision_patches"


class ResamplerMode(str, Enum):
    train = "train"
    eval = "eval"


class Stored(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Precision(str, Enum):
    auto = "auto"
    no = "no"
    bf16 = "bf16"
    fp16 = "fp16"


# Every option of `run`, declared once: `plan` takes the same ones, so any run's command line can be planned.
RUN_OPTIONS: dict[str, tuple[object, object]] = {  # name -> (annotation, default; empty: required)
    "model": (Annotated[str, typer.Option("--model", "-m", help="model card name (see `ls models`) or a card's YAML "
                                          "path")], inspect.Parameter.empty),
    "tasks": (Annotated[str, typer.Option("--tasks", "-t", help="all, a group, or task names, comma-separated")],
              "all"),
    "seeds": (Annotated[int, typer.Option(help="probe seeds per task", min=1)], 3),
    "limit": (Annotated[Optional[int], typer.Option(help="TESTING ONLY: cap examples per split", min=1)], None),
    "output": (Annotated[Path, typer.Option(help="results go to OUTPUT/<model>/results.json")], Path("results")),
    "batch_size": (Annotated[int, typer.Option(help="images per extraction batch", min=1)], 32),
    "workers": (Annotated[Optional[int], typer.Option(
        help="processes decoding images during extraction; 0: none [default: one per core, at most 8]", min=0)], None),
    "device": (Annotated[Device, typer.Option(help="where the model and probes run")], Device.auto),
    "cache_dir": (Annotated[Optional[Path], typer.Option(
        help="feature cache [default: $SPATIALBENCH_CACHE or ~/.cache/spatialbench]")], None),
    "include_path": (Annotated[Optional[list[Path]], typer.Option(help="extra task YAML directories or files")], None),
    "mixed_precision": (Annotated[Precision, typer.Option(
        help="training precision of the probe and, in the joint regime, the resampler (accelerate); auto: bf16 "
             "autocast on a GPU that supports it, none on CPU")], Precision.auto),
    "stored_dtype": (Annotated[Optional[Stored], typer.Option(
        help="the dtype the feature cache keeps prompts in; auto: 16-bit (the card's dtype where it is 16-bit, "
             "else bf16, or fp16 on a GPU without bf16); float32 doubles the cache [default: the card's "
             "stored_dtype, auto]")], None),
    "point": (Annotated[Optional[Point], typer.Option(
        help="override the card's extraction point; vision_patches probes the pre-resampler patch tokens")], None),
    "trust_remote_code": (Annotated[bool, typer.Option(
        help="allow a generic card with trust_remote_code to run the checkpoint's own Python code")], False),
    "data_dir": (Annotated[Optional[Path], typer.Option(
        help="annotations root, {data_dir} in task YAMLs [default: $SPATIALBENCH_DATA]")], None),
    "coco_root": (Annotated[Optional[Path], typer.Option(
        help="COCO images root (train2014/, train2017/, val2017/), {coco_root} in task YAMLs [default: $COCO_ROOT]")],
        None),
    "regime": (Annotated[Regime, typer.Option(
        help="frozen: only the probe learns; joint: the resampler learns with it; both: side by side")], Regime.frozen),
    "baselines": (Annotated[str, typer.Option(
        help=f"comma-separated: {', '.join(BASELINES)}; 'all' or 'none' (joint_random runs with the joint regime)")],
        "all"),
    "control": (Annotated[bool, typer.Option(
        help="control tasks and selectivity for the explicit probes (see docs/methodology.md)")], True),
    "resampler_lr": (Annotated[Optional[list[float]], typer.Option(
        help="joint regime: the resampler's learning rate; repeat for a grid selected on validation "
             "[default: the card's resampler_lr]", min=0)], None),
    "resampler_mode": (Annotated[Optional[ResamplerMode], typer.Option(
        help="joint regime: train keeps the resampler's dropout on, as fine-tuning does; eval turns it off "
             "[default: the card's resampler_mode]")], None),
    "data_seed": (Annotated[Optional[int], typer.Option(
        help="synthetic tasks: draw the scenes with this seed, not the task's (a confirmation run)")], None),
    "mdl": (Annotated[bool, typer.Option(
        help="MDL probing: online codelength and compression per classification task and regime")], False),
    "gradient_checkpointing": (Annotated[bool, typer.Option(
        help="joint regime: recompute the resampler's activations in backward (less memory, slower)")], False),
    "layers": (Annotated[Optional[str], typer.Option(
        help="layer-wise probing: 'all' the adapter's layers (`check-adapter` lists them) or some, e.g. "
             "resampler.1,vision.2 (a bare n is resampler.n); one forward per image gives them all")], None),
}


def run_options(command: Callable) -> Callable:
    """Give `command(**options, ...)` every option of RUN_OPTIONS, before its own keyword parameters."""
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
           for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
              for name, (annotation, default) in RUN_OPTIONS.items()]
    command.__signature__ = inspect.Signature(shared + own)
    return command


def run_config(options: dict) -> RunConfig:
    """The run's one config from its flags (RUN_OPTIONS), recording the command line as typed."""
    values = {k: v.value if isinstance(v, Enum) else v for k, v in options.items()}
    values.update(tasks=[values["tasks"]], include_paths=values.pop("include_path") or [],
                  baselines=_baselines(values["baselines"]), resampler_lr=values["resampler_lr"] or None,
                  command=shlex.join(["spatialbench", *sys.argv[1:]]))
    return RunConfig(**values)


def execute(config: RunConfig) -> None:
    """Run `config`, print its summary, and exit as the README says: 1 when a task failed, 130 on Ctrl-C."""
    from .run.report import Reporter, log_progress, quiet_libraries
    from .run.runner import Runner

    quiet_libraries()
    log_progress(err)
    runner = None
    try:
        reporter = Reporter(err)
        runner = Runner(config, reporter)
        result = runner.run()
    except SpatialbenchError as e:
        _fail(e)
    except KeyboardInterrupt:
        if runner is None:
            raise typer.Exit(130) from None
        cells = runner.cells
        err.print(f"\n[yellow]interrupted.[/yellow] Finished tasks are in {runner.results_path}; "
                  f"{cells.fitted + cells.reused} finished probe fits are kept under {cells.root}. "
                  "Run the same command again to resume: finished work is skipped.")
        raise typer.Exit(130) from None
    if not runner.accelerator.is_main_process:
        return
    reporter.summary(result, str(runner.results_path))
    cells = runner.cells
    others = cells.planned - cells.fitted - cells.reused
    err.print(f"probe fits: {cells.fitted} fitted" + (f", {cells.reused} reused from {cells.root}" if cells.reused
                                                      else "") + (f", {others} by other processes" if others > 0 else ""))
    failed = [t.name for t in result.tasks.values() if t.status == "failed"]
    if failed:
        err.print(f"[red]{len(failed)} task(s) failed:[/red] {', '.join(failed)} (reasons in the results JSON)")
        raise typer.Exit(1)


@app.command()
@run_options
def run(**options) -> None:
    """Extract visual prompts once, train and score probes per task and seed, write a results JSON."""
    try:
        config = run_config(options)
    except SpatialbenchError as e:
        _fail(e)
    execute(config)


@app.command()
@run_options
def plan(as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False, **options) -> None:
    """What `run` with these options would cost, per task and in total (images, prompts, cache bytes, probe
    fits, peak RAM), from the card and the annotations alone: nothing is downloaded, extracted or trained."""
    import json

    from .registry import resolve_card
    from .run.plan import estimate, run_tasks, table
    from .run.report import quiet_libraries

    quiet_libraries()
    try:
        config = run_config(options)
        result = estimate(config, run_tasks(config)[0], resolve_card(config.model))
    except SpatialbenchError as e:
        _fail(e)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(table(result))


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="where the demo's results go")] = Path("results/demo"),
    seeds: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """The embedded testbed: a small BLIP-2 pretrained here (once, about 4 minutes) on small copies of the grid and
    relation tasks, frozen and joint, between the blind floor and the oracle ceiling. Offline, CPU, minutes."""
    from .run import demo as shipped

    execute(shipped.demo_config(output, seeds, shlex.join(["spatialbench", *sys.argv[1:]])))
    err.print(shipped.DEMO_READING.format(tasks=shipped.DEMO_TASK_DIR), highlight=False)


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="results JSON of model A (its samples_*.jsonl beside it)")],
    b: Annotated[Path, typer.Argument(help="results JSON of model B")],
    condition: Annotated[str, typer.Option(help="which scores to pair: frozen, joint, or a baseline")] = "frozen",
    output: Annotated[Optional[Path], typer.Option("--out", help="also write the comparison as JSON here")] = None,
) -> None:
    """Model vs model: A - B on every task both scored, paired item by item (bootstrap over images)."""
    from .results.compare import compare as compare_runs
    from .run.report import comparison_table

    try:
        result = compare_runs(a, b, condition)
    except SpatialbenchError as e:
        _fail(e)
    if result.tasks:
        out.print(comparison_table(result))
    for name, why in result.skipped.items():
        out.print(f"skipped {escape(name)}: {escape(why)}", highlight=False)
    if output:
        result.write(output)
        out.print(f"comparison: {output}")
    if not result.tasks:
        err.print("[red]no task could be compared[/red] (reasons above)")
        raise typer.Exit(1)


@app.command("check-adapter")
def check_adapter(
    model: Annotated[str, typer.Argument(help="model card name or a card's YAML path (a tiny card: it loads the full model)")],
    device: Annotated[Device, typer.Option(help="where to run the checks")] = Device.cpu,
    cache_dir: Annotated[Optional[Path], typer.Option(help="where tiny checkpoints are built")] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="allow a card with trust_remote_code")] = False,
) -> None:
    """Conformance: the adapter's prompt is exactly what the model feeds its LLM, and behaves as declared."""
    from .conformance.checks import run_checks
    from .registry import resolve_card
    from .run.devices import resolve_device
    from .run.report import log_progress, quiet_libraries

    quiet_libraries()
    log_progress(err)
    try:
        card = resolve_card(model)
        checks = run_checks(card, device=resolve_device(device.value), cache_dir=cache_dir,
                            trust_remote_code=trust_remote_code)
    except SpatialbenchError as e:
        _fail(e)
    table = Table("check", "result", "detail", title=f"{card.name} ({card.family})")
    colour = {"pass": "green", "fail": "red", "n/a": "yellow"}
    for c in checks:
        table.add_row(escape(c.name), f"[{colour[c.status]}]{c.status}[/]", escape(c.detail))
    out.print(table)
    failed = sum(c.status == "fail" for c in checks)
    if failed:
        err.print(f"[red]{failed} check(s) failed[/red]")
        raise typer.Exit(1)
    out.print(f"[green]conformant[/green]: {sum(c.status == 'pass' for c in checks)} passed, "
              f"{sum(c.status == 'n/a' for c in checks)} not applicable")


class Listing(str, Enum):
    tasks = "tasks"
    models = "models"
    groups = "groups"


@app.command()
def download(
    model: Annotated[str, typer.Argument(help="model card name or a card's YAML path (its checkpoint: a Hub repo id)")],
    dry_run: Annotated[bool, typer.Option(help="fetch only the metadata; list the weight files a run needs")] = False,
) -> None:
    """Fetch a Hub checkpoint's metadata and only the weight files extraction reads, so runs work offline after."""
    from .adapters.download import fetch, plan_download
    from .registry import resolve_card

    try:
        plan = plan_download(resolve_card(model))
        table = Table("weight file", "size", "needed", title=f"{plan.repo} @ {plan.commit}")
        for name, size in [*plan.needed.items(), *plan.not_needed.items()]:
            table.add_row(name, _size(size), "yes" if name in plan.needed else "no")
        out.print(table)
        total = plan.total_bytes
        share = f" of {_size(total)} ({plan.needed_bytes / total:.0%})" if total else " (repo total unknown offline)"
        out.print(f"{len(plan.needed)} of {len(plan.needed) + len(plan.not_needed)} weight files, "
                  f"{_size(plan.needed_bytes)}{share}")
        if plan.revision != plan.commit:
            out.print(f"pin it: revision: {plan.commit}  (the card has '{plan.revision}')")
        if not dry_run:
            fetch(plan, progress=lambda name: err.print(f"fetching {name}", highlight=False))
            out.print("[green]done[/green]: runs of this card now work with HF_HUB_OFFLINE=1")
    except SpatialbenchError as e:
        _fail(e)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return next(f"{n / 1024 ** i:.1f} {unit}" for i, unit in reversed(list(enumerate(("B", "KiB", "MiB", "GiB", "TiB"))))
                if n >= 1024 ** i or i == 0)


@app.command("ls")
def ls(
    what: Annotated[Listing, typer.Argument(help="tasks, models or groups")],
    include_path: Annotated[Optional[list[Path]], typer.Option(help="extra task YAML directories or files")] = None,
) -> None:
    """List the registered tasks, model cards or task groups."""
    from .adapters.families import installed
    from .adapters.loading import WEIGHTS, weights_kind
    from .registry import ModelRegistry, TaskRegistry

    try:
        if what is Listing.models:
            reg = ModelRegistry()
            table = Table("model", "family", "weights", "checkpoint", box=box.SIMPLE_HEAD, pad_edge=False)
            table.columns[0].no_wrap = table.columns[2].no_wrap = True
            table.columns[3].overflow = "fold"  # a repo id wraps; it is never cut
            known = installed()
            kinds = set()
            for name in reg.names():
                card = reg.get(name)
                family = card.family if card.family in known else f"{card.family} [red](not installed)[/red]"
                kinds.add(kind := weights_kind(card.checkpoint, card.revision))
                table.add_row(name, family, kind, card.checkpoint)
            table.caption = "\n".join(f"{k}: {WEIGHTS[k]}" for k in WEIGHTS if k in kinds)
            table.caption_justify = "left"
        elif what is Listing.groups:
            reg = TaskRegistry(include_path or [])
            table = Table("group", "tasks", box=box.SIMPLE_HEAD, pad_edge=False)
            for group, names in reg.groups().items():
                table.add_row(group, ", ".join(names))
        else:
            reg = TaskRegistry(include_path or [])
            table = Table("task", "kind", "target", "version", "groups", box=box.SIMPLE_HEAD, pad_edge=False)
            for column in table.columns[:4]:  # names and kinds whole; the groups list wraps
                column.no_wrap = True
            for name in reg.names():
                t = reg.get(name)
                table.add_row(name, t.kind, t.target, str(t.version), ", ".join(t.groups))
    except SpatialbenchError as e:
        _fail(e)
    out.print(table)
    for error in reg.errors:  # a file that failed to load is missing from the table: say which and why
        err.print(f"[yellow]left out:[/yellow] {error}")


@app.command()
def validate(
    files: Annotated[Optional[list[Path]], typer.Argument(help="task YAMLs, model cards or directories of them "
                                                          "[default: all built-in]")] = None,
) -> None:
    """Check task YAMLs and model cards; every problem is reported as file: field: what was wrong."""
    from .run.validate import validate as check

    found = check(files or [])
    for problem in found.problems:
        err.print(f"[red]✗[/red] {problem}", highlight=False)
    if found.problems:
        raise typer.Exit(1)
    for path, card in found.unpinned:
        err.print(f"[yellow]![/yellow] {path}: revision: '{card.revision}' is a branch or tag of {card.checkpoint}: a "
                  "result cannot be reproduced once the repo changes; fix: pin the commit `spatialbench download "
                  f"{card.name} --dry-run` prints", highlight=False)
    out.print(f"[green]✓[/green] {found.checked} file(s) valid")


from .leaderboard.commands import app as leaderboard_app  # the sub-app only reads results files

app.add_typer(leaderboard_app, name="leaderboard")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
