"""Results -> rows and columns: one row per (model, condition), columns from the results, win shares."""

import pytest

from spatialbench.errors import SpatialbenchError
from spatialbench.leaderboard.table import OTHER_GROUP, Source, build_data, normalise
from spatialbench.leaderboard.validate import Validator
from spatialbench.results import RunResult

from .helpers import MODELS, TASKS, fixture_data


def _sources(*models, edit=None) -> list[Source]:
    out = []
    for m in models:
        data = fixture_data(m)
        if edit:
            edit(m, data)
        out.append(Source(f"{m}.json", RunResult.model_validate(data)))
    return out


@pytest.fixture(scope="module")
def known():
    return Validator([TASKS]).known_tasks()


def test_one_row_per_model_and_condition_with_columns_from_the_results(known):
    data = build_data(_sources(*MODELS), known)
    rows = {(data["models"][r["model"]]["name"], r["condition"]) for r in data["rows"]}
    expected = set()
    for m in MODELS:
        result = fixture_data(m)
        expected |= {(m, c) for c in [*result["regimes"], *result["baselines"]]}
    assert rows == expected and len(data["rows"]) == len(expected)
    assert [t["name"] for t in data["tasks"]] == ["tiny_grid", "tiny_relation", "tiny_vsr"]
    assert data["families"] == ["blip2", "idefics2", "kosmos2"]
    assert data["conditions"] == ["frozen", "joint", "oracle", "vision_patches", "blind"]
    grid = next(t for t in data["tasks"] if t["name"] == "tiny_grid")
    assert grid["groups"] == ["tiny", "explicit"] and grid["headline"] == "accuracy" and grid["version"] == 1


def test_cells_hold_the_headline_with_its_ci_chance_gap_and_selectivity(known):
    data = build_data(_sources("blip2-tiny"), known)
    raw = fixture_data("blip2-tiny")["tasks"]["tiny_relation"]
    joint = next(r for r in data["rows"] if r["condition"] == "joint")
    cell = joint["cells"]["tiny_relation"]
    summary = raw["conditions"]["joint"]["metrics"]["accuracy"]
    assert cell["mean"] == pytest.approx(summary["mean"], abs=1e-6)
    assert (cell["lo"], cell["hi"]) == pytest.approx(tuple(summary["ci95"]), abs=1e-6)
    assert cell["chance"] == pytest.approx(raw["chance"]["accuracy"], abs=1e-6)
    gap = data["models"][0]["gap"]["tiny_relation"]
    assert gap["diff"] == pytest.approx(raw["comparisons"]["joint_vs_frozen"]["diff"], abs=1e-6)
    assert joint["selectivity"]["tiny_relation"]["diff"] == pytest.approx(
        raw["conditions"]["joint"]["selectivity"]["diff"], abs=1e-6)
    assert "tiny_vsr" not in joint["selectivity"]  # implicit tasks have no control task
    assert joint["by_group"]["tiny_relation"]["relation"]  # the per-relation breakdown travels with the row
    blind = next(r for r in data["rows"] if r["condition"] == "blind")
    assert blind["role"] == "baseline" and blind["gap_mean"] is None


def _with_scores(scores: dict[str, float]):
    """Edit each fixture so its frozen tiny_vsr accuracy is the given score (CI and per_seed kept consistent)."""
    def edit(model, data):
        task = data["tasks"]["tiny_vsr"]
        for cond in task["conditions"].values():
            metric = cond["metrics"]["accuracy"]
            metric.update(mean=scores[model], ci95=[scores[model], scores[model]], per_seed=[scores[model]] * 2)
        task["metrics"] = task["conditions"]["frozen"]["metrics"]
    return edit


def test_win_share_is_the_fraction_of_other_model_rows_beaten_with_ties_counting_half(known):
    scores = {"blip2-tiny": 0.9, "kosmos2-tiny": 0.5, "idefics2-tiny": 0.5}
    data = build_data(_sources(*MODELS, edit=_with_scores(scores)), known)
    wins = {(data["models"][r["model"]]["name"], r["condition"]): r["cells"]["tiny_vsr"]["win"] for r in data["rows"]}
    # five model rows score 0.9 (blip2: frozen, joint) or 0.5 (kosmos2 x2, idefics2 x1); blip2's blind and
    # oracle baselines score 0.9 too, but neither win nor lose against models
    assert wins[("blip2-tiny", "frozen")] == pytest.approx((3 + 0.5 * 1) / 4)
    assert wins[("kosmos2-tiny", "joint")] == pytest.approx((0 + 0.5 * 2) / 4, abs=1e-6)  # stored to 6 decimals
    assert wins[("idefics2-tiny", "frozen")] == pytest.approx(1 / 4, abs=1e-6)
    assert wins[("blip2-tiny", "oracle")] is None and wins[("blip2-tiny", "blind")] is None


def test_files_of_one_model_merge_and_a_task_given_twice_is_refused(known):
    def split(part):
        def edit(model, data):
            keep = {"tiny_grid"} if part == 0 else {"tiny_relation", "tiny_vsr"}
            data["tasks"] = {k: v for k, v in data["tasks"].items() if k in keep}
        return edit

    merged = build_data(_sources("blip2-tiny", edit=split(0)) + _sources("blip2-tiny", edit=split(1)), known)
    assert len(merged["models"]) == 1 and len(merged["rows"]) == 5
    assert set(merged["rows"][0]["cells"]) == {"tiny_grid", "tiny_relation", "tiny_vsr"}
    with pytest.raises(SpatialbenchError, match="tasks.tiny_grid.*also in blip2-tiny.json"):
        build_data(_sources("blip2-tiny", "blip2-tiny"), known)


def test_schema_v1_metrics_are_the_frozen_regime_and_unknown_groups_are_other():
    def to_v1(model, data):
        data["schema_version"] = 1
        data["regimes"], data["baselines"] = ["frozen"], []
        for task in data["tasks"].values():
            task["conditions"], task["comparisons"] = {}, {}
    data = build_data(_sources("kosmos2-tiny", edit=to_v1), known={})
    assert [r["condition"] for r in data["rows"]] == ["frozen"]
    raw = fixture_data("kosmos2-tiny")["tasks"]["tiny_grid"]["metrics"]["accuracy"]["mean"]
    assert data["rows"][0]["cells"]["tiny_grid"]["mean"] == pytest.approx(raw, abs=1e-6)
    assert all(t["groups"] == [OTHER_GROUP] for t in data["tasks"]) and data["groups"] == [OTHER_GROUP]


def test_chance_normalisation():
    assert normalise(0.625, 0.25) == pytest.approx(0.5)
    assert normalise(0.25, 0.25) == 0.0 and normalise(1.0, 0.4) == pytest.approx(1.0)
    assert normalise(0.5, 1.0) is None and normalise(None, 0.2) is None


def test_a_failed_task_is_kept_with_its_reason_and_scores_nothing(known):
    def fail(model, data):
        if model == "idefics2-tiny":
            task = data["tasks"]["tiny_vsr"]
            data["tasks"]["tiny_vsr"] = {"name": "tiny_vsr", "kind": task["kind"], "version": task["version"],
                                         "status": "failed", "error": "images missing"}
    data = build_data(_sources(*MODELS, edit=fail), known)
    idefics = next(i for i, m in enumerate(data["models"]) if m["name"] == "idefics2-tiny")
    assert data["models"][idefics]["failed"] == {"tiny_vsr": "images missing"}
    [row] = [r for r in data["rows"] if r["model"] == idefics]
    assert "tiny_vsr" not in row["cells"] and set(row["cells"]) == {"tiny_grid", "tiny_relation"}
    assert row["average"] == pytest.approx(sum(c["mean"] for c in row["cells"].values()) / 2, abs=1e-6)


def test_a_layer_runs_curve_belongs_to_the_model_in_forward_order_and_its_layers_are_not_rows(known):
    def shuffle(model, data):  # conditions in any order in the file: the curve still runs in forward order
        for task in data["tasks"].values():
            task["conditions"] = dict(reversed(list(task["conditions"].items())))

    data = build_data(_sources("blip2-tiny", "kosmos2-tiny", edit=shuffle), known)
    raw = fixture_data("blip2-tiny")
    blip2, kosmos2 = data["models"]
    assert kosmos2["layers"] == {} and set(blip2["layers"]) == set(raw["tasks"])
    assert not {r["condition"] for r in data["rows"]} & set(raw["layers"])
    task = raw["tasks"]["tiny_grid"]
    curve = blip2["layers"]["tiny_grid"]
    assert curve["headline"] == "accuracy" and [p["name"] for p in curve["layers"]] == raw["layers"]
    for before, point in zip([None, *curve["layers"]], curve["layers"]):
        assert point["mean"] == pytest.approx(task["conditions"][point["name"]]["metrics"]["accuracy"]["mean"], abs=1e-6)
        if before is None:
            assert point["step"] is None
        else:
            step = task["comparisons"][f"{point['name']}_vs_{before['name']}"]
            assert point["step"]["diff"] == pytest.approx(step["diff"], abs=1e-6)
    assert curve["levels"] == pytest.approx({name: task["conditions"][name]["metrics"]["accuracy"]["mean"]
                                             for name in ("blind", "vision_patches", "oracle")}, abs=1e-6)
