"""Fuzzing the two files users hand-edit or exchange: task YAML and results JSON.

Every input, however broken, must end as a valid object or as the project's own SpatialbenchError (with
ValidationErrors, its subclass), naming the file, in one screen; never another exception. The inputs:
arbitrary text, YAML-ish text, arbitrary JSON-like values, and mutations of real files (a shipped task file,
a complete results file): keys dropped, renamed, retyped or added, text cut short or spliced.
`@example`s pin the crashes this fuzzing found (each was a traceback before its fix).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spatialbench.errors import SpatialbenchError
from spatialbench.registry import ModelRegistry, builtin_dir, load_spec
from spatialbench.results import (
    ConditionResult,
    ExtractionStats,
    GroupScore,
    MetricSummary,
    Paired,
    RunResult,
    SeedRun,
    TaskResult,
    read_results,
)
from spatialbench.specs import ProbeSpec, TaskSpec
from spatialbench.yamlio import read_yaml

FUZZ = settings(max_examples=200, deadline=None, database=None)  # no example database left in the checkout
MAX_LINES = 25

SHIPPED = sorted(builtin_dir("tasks").glob("*.yaml"))
SHIPPED_DOCS = [read_yaml(p) for p in SHIPPED]

# --- strategies -----------------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["synthetic", "vsr", "refer", "coco", "relation", "vsr", "grounding", "box", "class",
                              "grid", "train", "validation", "test", "accuracy", "mean_iou", "attention", "_base.yaml",
                              "{data_dir}/x", "{coco_root}", "{nope}", "2020-13-45", ".inf", "~", "0x1F"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=10)
TASK_KEYS = ["name", "kind", "description", "version", "groups", "tags", "dataset", "splits", "target", "probe",
             "metrics", "include", "source", "seed", "image_size", "sizes", "min_objects", "max_objects", "grid",
             "zero_shot", "relation_margin", "variant", "annotations", "images", "dataset", "split_by", "hub_id",
             "instances", "min_area", "margin", "architecture", "width", "depth", "heads", "lr", "epochs", "train"]
task_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.sampled_from(TASK_KEYS) | st.text(max_size=8), inner, max_size=5),
                         max_leaves=10)
YAML_BITS = ["name: t\n", "kind: relation\n", "kind: vsr\n", "dataset:\n", "  source: synthetic\n", "  sizes: ",
             "{train: 1, validation: 1, test: 1}", "include: _base.yaml\n", "include: fuzz.yaml\n", "probe: ",
             "{epochs: 2}", "\t", " ", "  ", "\n", "-", "- ", ":", ": ", "? ", "{", "}", "[", "]", ",", "&a ", "*a",
             "<<: ", "!!int ", "!!float ", "!!binary ", "!!set ", "!!python/object:os.system ", "!custom ", "'",
             '"', "#", "|\n", ">\n", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! x\n", "2001-02-30", "1e400",
             "9" * 5000, ".nan", "~", "\x00", "\ufeff", "\x85", "\\t"]
TAGS = ["", "", "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!str ", "!!null ", "!!set ",
        "!!omap ", "!!pairs ", "!!python/tuple ", "!local "]
VALUES = st.sampled_from(["1", "x", "2001-02-30", "2020-13-45", "2001-12-14t21:59:43.10-99:00", "0x_", "0b2",
                          "1_000", "1e400", "[a, b]", "{a: 1}", "*a", "&a 1", ".nan", "~", "'q'", '"\\t"', "|",
                          "[[a]]", "{? [x]: 1}"]) | st.text(max_size=5)
yaml_lines = st.lists(st.tuples(st.sampled_from(["", "", "  ", "\t", "- ", "? ", "  - "]),
                                st.sampled_from([*TASK_KEYS, "<<", "[a]", "{b: 1}", "1", "2001-01-01"]),
                                st.sampled_from([": ", ":", " "]), st.sampled_from(TAGS), VALUES).map("".join),
                      max_size=12).map("\n".join)
yaml_ish = st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=6), max_size=40).map("".join) | yaml_lines


@st.composite
def mutated(draw, doc):
    """`doc` after 1-4 structural mutations at random places: drop, rename, retype, add or nest a key."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 4))):
        node, key = doc, None
        while True:  # walk down to a random entry of a random container
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(keys)) if keys else None
            if key is not None and isinstance(node[key], (dict, list)) and node[key] and draw(st.booleans()):
                node = node[key]
                continue
            break
        op = draw(st.sampled_from(["drop", "rename", "retype", "add", "nest"]))
        if op == "add" or key is None:
            if isinstance(node, dict):
                node[draw(st.sampled_from(TASK_KEYS) | st.text(max_size=8))] = draw(json_values)
            else:
                node.append(draw(json_values))
        elif op == "drop":
            del node[key]
        elif op == "rename" and isinstance(node, dict):
            node[draw(st.sampled_from(TASK_KEYS) | st.text(max_size=8))] = node.pop(key)
        elif op == "nest":
            node[key] = {"value": node[key]} if draw(st.booleans()) else [node[key]]
        else:
            node[key] = draw(json_values)
    return doc


@st.composite
def spliced(draw, text: str):
    """`text` cut short, or with a few characters replaced or inserted at random places."""
    if draw(st.booleans()):
        return text[:draw(st.integers(0, len(text)))]
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        bit = draw(st.sampled_from(YAML_BITS[:60]) | st.text(max_size=3))
        text = text[:at] + bit + text[at + draw(st.integers(0, 2)):]
    return text


# --- task YAML ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yaml_dir(tmp_path_factory) -> Path:
    """Where fuzz.yaml is written, beside the shipped bases, so that includes resolve as they do in tasks/."""
    folder = tmp_path_factory.mktemp("fuzz-yaml")
    for base in builtin_dir("tasks").glob("_*.yaml"):
        (folder / base.name).write_text(base.read_text())
    (folder / "_base.yaml").write_text((builtin_dir("tasks") / "_synthetic_scenes.yaml").read_text())
    return folder


def load_task(folder: Path, text: str | bytes) -> TaskSpec | None:
    """load_spec as the registry calls it: a TaskSpec, or None after a well-formed SpatialbenchError."""
    path = folder / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        spec = load_spec(path, TaskSpec)
    except SpatialbenchError as e:
        _check_message(e, path)
        return None
    assert isinstance(spec, TaskSpec)
    return spec


def _check_message(e: SpatialbenchError, path: Path) -> None:
    text = str(e)
    assert text.strip()
    assert len(text.splitlines()) <= MAX_LINES, text
    assert path.name in text or "_base.yaml" in text or "_vsr.yaml" in text or "_refer.yaml" in text \
        or "_synthetic_scenes.yaml" in text, text  # names the file (or the base it includes)


@FUZZ
@given(st.text(max_size=200))
@example("? [a]\n: 1\n")  # unhashable key: TypeError
@example("name: t\nseen: 2020-13-45\n")  # impossible date: ValueError
@example("a: !!float abc\n")  # ValueError
@example("a: " + "[" * 600 + "]" * 600)  # RecursionError
@example("include: " + "a" * 300 + "\n")  # OSError (name too long)
@example("a: 1" + "0" * 5000 + "\n")  # int past the digit limit: ValueError
def test_any_text_loads_or_fails_cleanly(yaml_dir, text):
    load_task(yaml_dir, text)


@FUZZ
@given(yaml_ish)
def test_yaml_ish_text_loads_or_fails_cleanly(yaml_dir, text):
    load_task(yaml_dir, text)


@FUZZ
@given(st.binary(max_size=200))
@example(b"\xff\xfename: t\n")
def test_any_bytes_load_or_fail_cleanly(yaml_dir, raw):
    load_task(yaml_dir, raw)


@FUZZ
@given(st.dictionaries(st.sampled_from(TASK_KEYS) | st.text(max_size=8), task_like, max_size=6))
def test_any_mapping_dumped_to_yaml_loads_or_fails_cleanly(yaml_dir, doc):
    load_task(yaml_dir, yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.data())
def test_mutations_of_shipped_task_files_load_or_fail_cleanly(yaml_dir, data):
    doc = data.draw(st.sampled_from(SHIPPED_DOCS))
    doc = data.draw(mutated(doc))
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    if data.draw(st.booleans()):
        text = data.draw(spliced(text))
    load_task(yaml_dir, text)


@pytest.mark.parametrize("path", [p for p in SHIPPED if not p.name.startswith("_")], ids=lambda p: p.name)
def test_unmutated_shipped_task_files_load_through_the_same_route(yaml_dir, path):
    """The other side of the fuzzing: the route the fuzzers use accepts every real task."""
    assert load_task(yaml_dir, path.read_text()).name == path.stem


# --- results JSON ---------------------------------------------------------------------------------------------


def _summary(values: list[float]) -> MetricSummary:
    mean = sum(values) / len(values)
    return MetricSummary(mean=mean, std=0.01, ci95=(mean - 0.05, mean + 0.05), per_seed=values)


def valid_result() -> RunResult:
    """A complete results file: an ok task with every optional part, and a failed task."""
    metrics = {"accuracy": _summary([0.8, 0.7]), "macro_f1": _summary([0.75, 0.65])}
    paired = Paired(a="joint", b="frozen", metric="accuracy", diff=0.1, ci95=(0.02, 0.18), p_value=0.01)
    seeds = [SeedRun(seed=s, best_epoch=3, epochs_run=5, validation=0.7, seconds=1.5) for s in (0, 1)]
    groups = {"relation": {"left of": GroupScore(n=5, mean=0.8), "above": GroupScore(n=4, mean=0.6)}}
    ok = TaskResult(
        name="synth_relation", kind="relation", version=1, status="ok", target="class", headline="accuracy",
        dataset_fingerprint="0123456789abcdef", n={"train": 10, "validation": 4, "test": 6},
        n_images={"train": 5, "validation": 2, "test": 3}, metrics=metrics, chance={"accuracy": 0.25},
        by_group=groups, probe=ProbeSpec(), seeds=seeds, timings={"load": 0.1, "train": 2.0},
        predictions_file="samples_synth_relation.jsonl",
        conditions={"frozen": ConditionResult(role="regime", metrics=metrics, by_group=groups, seeds=seeds,
                                              control=_summary([0.3, 0.35]), selectivity=paired),
                    "blind": ConditionResult(role="baseline", metrics=metrics)},
        comparisons={"joint_vs_frozen": paired})
    failed = TaskResult(name="vsr_random", kind="vsr", version=1, status="failed", error="no examples")
    return RunResult(model=ModelRegistry().get("blip2-tiny"), checkpoint="blip2|local:abc", point="projected",
                     visual_prompt_shape=(8, 48), seeds=[0, 1], regimes=["frozen", "joint"], baselines=["blind"],
                     resampler_lr=1e-3, extraction=ExtractionStats(images=8, prompts=8, extracted=8),
                     tasks={"synth_relation": ok, "vsr_random": failed})


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-results")


VALID = valid_result()
VALID_DOC = json.loads(VALID.model_dump_json())


def load_results(folder: Path, raw: str | bytes) -> RunResult | None:
    path = folder / "results.json"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    try:
        result = read_results(path)
    except SpatialbenchError as e:
        text = str(e)
        assert len(text.splitlines()) <= MAX_LINES, text
        assert str(path) in text, text
        return None
    assert isinstance(result, RunResult)
    return result


def test_a_valid_results_file_round_trips(results_dir):
    VALID.write(results_dir / "results.json")
    assert read_results(results_dir / "results.json") == VALID


@FUZZ
@given(json_values)
@example([[[[[]]]]])
def test_any_json_value_reads_or_fails_cleanly(results_dir, value):
    load_results(results_dir, json.dumps(value))


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300))
@example(b"\xff\xfe{}")  # not UTF-8: UnicodeDecodeError
@example("[" * 100000 + "]" * 100000)  # RecursionError
@example('{"seeds": [1' + "0" * 5000 + "]}")  # int past the digit limit: ValueError
def test_any_bytes_read_or_fail_cleanly(results_dir, raw):
    load_results(results_dir, raw)


@FUZZ
@given(st.data())
def test_mutations_of_a_real_results_file_read_or_fail_cleanly(results_dir, data):
    doc = data.draw(mutated(VALID_DOC))
    text = json.dumps(doc, indent=2)
    if data.draw(st.booleans()):
        text = data.draw(spliced(text))
    load_results(results_dir, text)
