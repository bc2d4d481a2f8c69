"""The built page in a real headless Chromium, opened over file://: rows, sorting, filters, detail, inert payloads.

Needs /usr/bin/chromium (Debian's package) and Playwright; without them these tests fail, saying how to
install them. Playwright drives the system browser: nothing is downloaded.
"""

import json
import os
import shutil
from pathlib import Path

import pytest

from spatialbench.leaderboard.build import build, write_site

from .helpers import FIXTURES, MODELS, TASKS, chromium_executable, fixture_data, write

PAYLOAD = "<img src=x onerror=alert(1)>"
SCRIPT_PAYLOAD = "</script><script>alert(2)</script>"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    paths = []
    for model in MODELS:
        paths.append(root / "results" / model / "results.json")
        paths[-1].parent.mkdir(parents=True)
        shutil.copyfile(FIXTURES / f"{model}.json", paths[-1])
    data, _ = build(paths, root / "out", [TASKS])
    return root / "out" / "index.html", data


class Page:
    """One page load, with every console error, uncaught exception and dialog recorded."""

    def __init__(self, browser, index):
        self.errors, self.dialogs = [], []
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.goto(index.as_uri())
        self.page.wait_for_selector("#board tbody[data-complete]", state="attached")

    def rows(self) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.page.eval_on_selector_all(
            "#board tbody tr[data-row]", "trs => trs.map(tr => [tr.querySelector('.model').firstChild.textContent,"
                               " tr.querySelector('.condition').textContent])")]

    def headers(self) -> list[str]:
        return self.page.eval_on_selector_all("#board thead th", "ths => ths.map(th => th.dataset.key)")

    def column(self, key: str) -> list[str]:
        index = self.headers().index(key)
        return self.page.eval_on_selector_all(
            "#board tbody tr[data-row]", f"trs => trs.map(tr => tr.children[{index}].firstChild.textContent)")

    def cell(self, label: tuple[str, str], key: str):
        return self.page.locator("#board tbody tr[data-row]").nth(self.rows().index(label)).locator("td").nth(
            self.headers().index(key))


@pytest.fixture
def page(browser, site):
    p = Page(browser, site[0])
    yield p
    p.page.close()


def _label(data, row):
    return data["models"][row["model"]]["name"], row["condition"]


def _expected_order(data, task, descending=True):
    """Models, then baselines (every fixture row has every task); within each, rows by the task's mean (missing
    last either way), ties by model name then condition, as the page does."""
    rank = {c: i for i, c in enumerate(data["conditions"])}

    def tie(r):
        return data["models"][r["model"]]["name"], rank[r["condition"]]

    order = []
    for role in ("regime", "baseline"):
        rows = [r for r in data["rows"] if r["role"] == role]
        scored = sorted((r for r in rows if task in r["cells"]), key=tie)
        scored.sort(key=lambda r: r["cells"][task]["mean"], reverse=descending)  # stable: ties keep name order
        order += scored + sorted((r for r in rows if task not in r["cells"]), key=tie)
    return [_label(data, r) for r in order]


def test_the_page_renders_every_row_with_no_console_errors(page, site, tmp_path):
    _, data = site
    assert sorted(page.rows()) == sorted(_label(data, r) for r in data["rows"]) and len(page.rows()) == 8
    assert [k for k in page.headers() if k.startswith("task:")] == ["task:tiny_grid", "task:tiny_relation",
                                                                    "task:tiny_vsr"]
    assert page.page.text_content("#count") == "8 of 8 rows"
    assert "chance" in page.page.text_content('th[data-key="task:tiny_vsr"]')
    # the gap column: mean over tasks, and per task its diff with CI and p-value in the tooltip
    gap = data["models"][0]["gap"]["tiny_relation"]
    title = page.cell(("blip2-tiny", "joint"), "gap").get_attribute("title")
    assert f"tiny_relation: joint − frozen {gap['diff']:+.3f} [{gap['lo']:.3f}, {gap['hi']:.3f}]" in title
    # the recovered column: the mean over shown tasks of (x - blind) / (oracle - blind), per task in the tooltip
    row = next(r for r in data["rows"] if _label(data, r) == ("blip2-tiny", "frozen"))
    shares = row["recovered"]
    assert shares and "blind" not in shares and "oracle" not in shares
    cell = page.cell(("blip2-tiny", "frozen"), "recovered")
    assert page.column("recovered")[page.rows().index(("blip2-tiny", "frozen"))] == \
        f"{sum(v['value'] for v in shares.values()) / len(shares):.3f}"
    task, share = next(iter(shares.items()))
    assert f"{task}: recovered {share['value']:.3f} [{share['lo']:.3f}, {share['hi']:.3f}]" in cell.get_attribute("title")
    shot = tmp_path / "leaderboard.png"
    page.page.screenshot(path=str(shot), full_page=True)
    print(f"\nscreenshot of the test page: {shot}")  # shown with -s or -rP; pytest keeps tmp_path afterwards
    assert shot.stat().st_size > 10_000
    if os.environ.get("SPATIALBENCH_TEST_ARTIFACTS"):  # CI: a folder it uploads
        artifacts = Path(os.environ["SPATIALBENCH_TEST_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, artifacts / shot.name)
    assert page.errors == [] and page.dialogs == []


def test_clicking_a_header_sorts_and_clicking_again_reverses(page, site):
    _, data = site
    page.page.click('th[data-key="task:tiny_vsr"]')
    assert page.rows() == _expected_order(data, "tiny_vsr", descending=True)
    assert page.page.get_attribute('th[data-key="task:tiny_vsr"]', "aria-sort") == "descending"
    page.page.click('th[data-key="task:tiny_vsr"]')
    assert page.rows() == _expected_order(data, "tiny_vsr", descending=False)
    page.page.click('th[data-key="model"]')  # by name, models first, then baselines (all blip2's here)
    names = [m for m, _ in page.rows()]
    assert names[:5] == sorted(names[:5]) and names[0] == "blip2-tiny" and names[5:] == ["blip2-tiny"] * 3


def test_filters_and_search_leave_the_matching_rows(page, site):
    _, data = site
    everything = {_label(data, r) for r in data["rows"]}
    page.page.select_option("#family", "kosmos2")
    assert set(page.rows()) == {r for r in everything if r[0] == "kosmos2-tiny"} and len(page.rows()) == 2
    page.page.select_option("#family", "")
    page.page.select_option("#condition", "joint")
    assert set(page.rows()) == {("blip2-tiny", "joint"), ("kosmos2-tiny", "joint")}
    page.page.select_option("#condition", "")
    page.page.select_option("#group", "implicit")
    assert [k for k in page.headers() if k.startswith("task:")] == ["task:tiny_vsr"]
    assert set(page.rows()) == everything
    page.page.select_option("#group", "")
    page.page.fill("#search", "idef")
    assert page.rows() == [("idefics2-tiny", "frozen")]
    page.page.fill("#search", "blip2 blind")  # every word must match
    assert page.rows() == [("blip2-tiny", "blind")]
    page.page.fill("#search", "")
    assert len(page.rows()) == 8 and page.page.text_content("#count") == "8 of 8 rows"
    assert page.errors == []


def test_the_chance_normalised_toggle(page, site):
    _, data = site
    first = page.rows()[0]
    row = next(r for r in data["rows"] if _label(data, r) == first)
    cell = row["cells"]["tiny_relation"]
    raw = page.column("task:tiny_relation")[0]
    page.page.check("#normalise")
    normalised = (cell["mean"] - cell["chance"]) / (1 - cell["chance"])
    assert raw == f"{cell['mean']:.3f}"
    # rows may re-sort by the normalised average: find the same row again
    at = page.rows().index(first)
    assert page.column("task:tiny_relation")[at] == f"{normalised:.3f}"
    assert "chance 0" in page.page.text_content('th[data-key="task:tiny_relation"]')


def test_a_row_opens_the_models_detail_with_an_svg_chart(page):
    at = page.rows().index(("blip2-tiny", "joint"))
    page.page.click(f"#board tbody tr[data-row] >> nth={at}")
    detail = page.page.locator("#detail")
    assert detail.is_visible() and detail.locator("h2").text_content() == "blip2-tiny"
    assert detail.locator("svg.chart rect.bar-frozen").count() == 3
    assert detail.locator("svg.chart rect.bar-joint").count() == 3
    per_task = detail.locator("table").first.locator("tbody tr")
    assert per_task.count() == 3 and "tiny_grid" in per_task.first.text_content()
    assert detail.locator("details").count() == 3  # a per-group breakdown per task
    relation = detail.locator("details", has_text="tiny_relation")
    relation.locator("summary").click()
    assert "relation" in relation.locator("h4").all_text_contents()
    values = relation.locator("h4:text-is('relation') + table tbody tr td:first-child").all_text_contents()
    raw = fixture_data("blip2-tiny")["tasks"]["tiny_relation"]["conditions"]["joint"]["by_group"]["relation"]
    assert values == sorted(raw)
    shares = detail.locator("h3:text-is('Recovered: share of the blind-to-oracle headroom [95% CI]') + table")
    assert shares.locator("thead th").all_text_contents() == ["task", "frozen", "joint", "vision_patches"]
    assert shares.locator("tbody tr").count() == 3
    detail.locator("button.close").click()
    assert not detail.is_visible()
    assert page.errors == []


def test_strings_from_results_files_stay_inert(browser, tmp_path):
    paths = []
    for model in MODELS:
        data = fixture_data(model)
        if model == "kosmos2-tiny":  # fields a results file may fill freely: all pass validation
            data["model"]["family"] = PAYLOAD
            data["model"]["description"] = SCRIPT_PAYLOAD
            data["command"] = PAYLOAD
            groups = data["tasks"]["tiny_relation"]["conditions"]["frozen"]["by_group"]["relation"]
            groups[PAYLOAD] = groups.pop(next(iter(groups)))
        if model == "idefics2-tiny":  # a failed task's error message is shown too
            task = data["tasks"]["tiny_vsr"]
            data["tasks"]["tiny_vsr"] = {"name": "tiny_vsr", "kind": task["kind"], "version": task["version"],
                                         "status": "failed", "error": PAYLOAD}
        paths.append(write(tmp_path / "results" / model / "results.json", data))
    build(paths, tmp_path / "out", [TASKS])
    data = json.loads((tmp_path / "out" / "data.json").read_text())
    # A card's name must match [A-Za-z0-9_.-]+, so a payload name cannot pass validation; put it straight into
    # the page's data to test the page itself.
    kosmos = next(i for i, m in enumerate(data["models"]) if m["family"] == PAYLOAD)
    data["models"][kosmos]["name"] = PAYLOAD
    data["models"][0]["name"] = SCRIPT_PAYLOAD
    index = write_site(data, tmp_path / "out")
    p = Page(browser, index)
    try:
        shown = [m for m, _ in p.rows()]
        assert shown.count(PAYLOAD) == 2 and SCRIPT_PAYLOAD in shown  # literally, as text
        assert PAYLOAD in p.page.eval_on_selector_all("#family option", "os => os.map(o => o.textContent)")
        at = p.rows().index((PAYLOAD, "frozen"))
        p.page.click(f"#board tbody tr[data-row] >> nth={at}")
        for summary in p.page.locator("#detail details summary").all():
            summary.click()
        assert p.page.locator("#detail h2").text_content() == PAYLOAD
        assert PAYLOAD in p.page.locator("#detail").text_content()
        assert SCRIPT_PAYLOAD in p.page.locator("#detail").text_content()
        failed = p.page.locator("#board td.failed")
        assert failed.count() == 1 and failed.text_content() == "failed" and failed.get_attribute("title") == PAYLOAD
        assert p.page.evaluate("document.querySelectorAll('img').length") == 0
        assert p.page.evaluate("document.scripts.length") == 4  # data, detail, plots, app.js, and no more
        assert p.dialogs == [] and p.errors == []
    finally:
        p.page.close()


def test_the_detail_view_draws_the_headline_by_layer_across_the_reference_levels(page, site):
    _, data = site
    curves = next(m for m in data["models"] if m["name"] == "blip2-tiny")["layers"]
    raw = fixture_data("blip2-tiny")
    assert set(curves) == set(raw["tasks"]) and raw["layers"] == ["vision.1", "vision.2", "resampler.1", "resampler.2"]
    assert all(r["condition"] not in raw["layers"] for r in data["rows"])  # layers are not rows of the board
    page.page.click(f"#board tbody tr[data-row] >> nth={page.rows().index(('blip2-tiny', 'frozen'))}")
    detail = page.page.locator("#detail")
    charts = detail.locator("svg.chart.layers")
    assert charts.count() == 3  # one per task
    chart = detail.locator("figure", has_text="tiny_relation").locator("svg.chart.layers")
    assert chart.locator("text").all_text_contents()[-4:] == raw["layers"]  # x labels, in forward order
    tips = chart.locator("circle.layer-point title").all_text_contents()
    task = raw["tasks"]["tiny_relation"]
    for tip, name in zip(tips, raw["layers"], strict=True):
        m = task["conditions"][name]["metrics"][task["headline"]]
        assert tip.startswith(f"{name}: {m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]")
    step = task["comparisons"]["resampler.1_vs_vision.2"]
    assert f"change from the layer before {step['diff']:+.3f}" in tips[2] and "change" not in tips[0]
    # the points sit at their means: a higher mean is drawn higher (smaller y)
    ys = [float(c.get_attribute("cy")) for c in chart.locator("circle.layer-point").all()]
    means = [task["conditions"][n]["metrics"][task["headline"]]["mean"] for n in raw["layers"]]
    assert all((ys[i] < ys[j]) == (means[i] > means[j]) for i in range(4) for j in range(4) if means[i] != means[j])
    for level in ("blind", "vision_patches", "oracle"):
        assert chart.locator(f"line.level-{level}").count() == 1
        mean = task["conditions"][level]["metrics"][task["headline"]]["mean"]
        assert f"{level} {mean:.3f}" in chart.locator("text.level-label").all_text_contents()
    assert page.page.evaluate(TEXT_OUTSIDE) == []  # no layer name or level label is cut
    detail.locator("button.close").click()
    page.page.click(f"#board tbody tr[data-row] >> nth={page.rows().index(('kosmos2-tiny', 'frozen'))}")
    assert detail.locator("svg.chart.layers").count() == 0  # a run without --layers has no curve
    assert page.errors == []


def test_a_missing_chromium_fails_with_how_to_install_it(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium_executable(tmp_path / "chromium")


def _site(browser, tmp_path, edit=None, data_edit=None, width=1400):
    """A page built from the fixtures, each results file edited by edit(model, data) and then the page's data
    by data_edit(data); returns the loaded Page and its data."""
    paths = []
    for model in MODELS:
        data = fixture_data(model)
        if edit:
            edit(model, data)
        paths.append(write(tmp_path / "results" / model / "results.json", data))
    data, _ = build(paths, tmp_path / "out", [TASKS])
    if data_edit:
        data_edit(data)
        write_site(data, tmp_path / "out")
    p = Page(browser, tmp_path / "out" / "index.html")
    p.page.set_viewport_size({"width": width, "height": 900})
    return p, data


def _sections(page):
    return page.page.eval_on_selector_all("#board tbody tr", "trs => trs.map(tr => tr.dataset.section || "
                                                            "'heading: ' + tr.textContent)")


def test_models_rank_over_shared_tasks_apart_from_rows_missing_some_and_from_baselines(browser, tmp_path):
    def drop_vsr(model, data):
        if model == "kosmos2-tiny":
            del data["tasks"]["tiny_vsr"]

    def top_oracle(data):  # an oracle above every model, as real ones are
        for row in data["rows"]:
            if row["condition"] == "oracle":
                for cell in row["cells"].values():
                    cell.update(mean=0.99, lo=0.99, hi=0.99)
    page, data = _site(browser, tmp_path, edit=drop_vsr, data_edit=top_oracle)
    try:
        rows, sections = page.rows(), _sections(page)
        assert [s for s in sections if not s.startswith("heading")] == \
            ["ranked"] * 3 + ["partial"] * 2 + ["baselines"] * 3
        assert "ranked apart" in sections[3] and sections[6].startswith("heading: Baselines")
        assert set(rows[:3]) == {("blip2-tiny", "frozen"), ("blip2-tiny", "joint"), ("idefics2-tiny", "frozen")}
        assert set(rows[3:5]) == {("kosmos2-tiny", "frozen"), ("kosmos2-tiny", "joint")}
        assert page.column("rank") == ["1", "2", "3", "1", "2", "–", "–", "–"]
        badge = page.cell(("kosmos2-tiny", "joint"), "model").locator(".badge")
        assert badge.text_content() == "2/3 tasks"
        # the oracle outscores every model, yet is listed after them, unranked, with no win rate
        averages = {label: float(v) for label, v in zip(rows, page.column("average"))}
        assert averages[("blip2-tiny", "oracle")] == max(averages.values())
        assert page.cell(("blip2-tiny", "oracle"), "win").text_content() == "–"
        # reversing the sort reverses within each section, never across them
        page.page.click('th[data-key="average"]')
        assert [s for s in _sections(page) if not s.startswith("heading")] == \
            ["ranked"] * 3 + ["partial"] * 2 + ["baselines"] * 3
        ranked = [averages[r] for r in page.rows()[:3]]
        assert ranked == sorted(ranked)
        # a task group the partial rows do have: every model is ranked together again
        page.page.select_option("#group", "explicit")
        assert "partial" not in _sections(page)
        assert page.errors == []
    finally:
        page.page.close()


def _more_tasks(n):
    """Copies of tiny_grid under other, long names: a board with many task columns."""
    def edit(data):
        grid = next(t for t in data["tasks"] if t["name"] == "tiny_grid")
        for k in range(n):
            name = f"synth_grid_copy_number_{k}"
            data["tasks"].append({**grid, "name": name})
            for row in data["rows"]:
                for part in ("cells", "recovered", "selectivity", "control", "by_group"):
                    if "tiny_grid" in row.get(part, {}):
                        row[part][name] = row[part]["tiny_grid"]
            for model in data["models"]:
                if "tiny_grid" in model["gap"]:
                    model["gap"][name] = model["gap"]["tiny_grid"]
    return edit


def test_at_1280_px_the_summary_columns_show_however_many_tasks(browser, tmp_path):
    page, _ = _site(browser, tmp_path, data_edit=_more_tasks(8), width=1280)
    try:
        scroll = page.page.eval_on_selector(".scroll", "s => [s.scrollWidth, s.clientWidth, s.scrollLeft]")
        assert scroll[0] > scroll[1] and scroll[2] == 0  # the task columns do overflow: the test means something
        for key in ("average", "win", "recovered", "gap", "sel"):
            box = page.page.locator(f'th[data-key="{key}"]').bounding_box()
            assert 0 <= box["x"] and box["x"] + box["width"] <= 1280, key
        assert page.errors == []
    finally:
        page.page.close()


TEXT_OUTSIDE = """() => [...document.querySelectorAll('svg')].flatMap(s => {
  const b = s.getBoundingClientRect();
  return [...s.querySelectorAll('text')].filter(t => { const r = t.getBoundingClientRect();
    return r.left < b.left - 0.5 || r.right > b.right + 0.5 || r.top < b.top - 0.5 || r.bottom > b.bottom + 0.5;
  }).map(t => t.textContent);
})"""


def test_no_chart_label_is_cut_even_for_long_task_names(browser, tmp_path):
    page, _ = _site(browser, tmp_path, data_edit=_more_tasks(2))
    try:
        page.page.click(f"#board tbody tr[data-row] >> nth={page.rows().index(('blip2-tiny', 'joint'))}")
        labels = page.page.locator("#detail svg.chart text").all_text_contents()
        assert "synth_grid_copy_number_1" in labels
        assert page.page.evaluate(TEXT_OUTSIDE) == []  # the detail chart's, and the plots'
        assert page.page.locator("#plots svg").count() == 2
    finally:
        page.page.close()


def _mean_over(row, tasks):
    return sum(row["cells"][t]["mean"] for t in tasks) / len(tasks)


def test_the_plots_show_frozen_against_joint_per_model_and_recovered_per_task(page, site):
    _, data = site
    plots = page.page.locator("#plots")
    assert plots.is_visible()
    points = plots.locator("svg.scatter circle.point")
    assert points.count() == 2  # blip2 and kosmos2 have both regimes; idefics2 only frozen
    tips = points.locator("title").all_text_contents()
    blip2 = {r["condition"]: r for r in data["rows"] if data["models"][r["model"]]["name"] == "blip2-tiny"}
    tasks = sorted(blip2["frozen"]["cells"])
    assert (f"blip2-tiny: frozen {_mean_over(blip2['frozen'], tasks):.3f}, "
            f"joint {_mean_over(blip2['joint'], tasks):.3f} (mean over 3 tasks)") in tips
    assert sorted(plots.locator("svg.scatter text.label").all_text_contents()) == ["blip2-tiny", "kosmos2-tiny"]
    # recovered: one dot per (model regime, task) that has a share; only blip2 ran blind and oracle
    dots = plots.locator("svg.strips circle.point")
    shares = [(c, t, v) for c, r in blip2.items() if r["role"] == "regime" for t, v in r["recovered"].items()]
    assert dots.count() == len(shares) > 0
    c, t, v = shares[0]
    assert f"blip2-tiny {c} on {t}: recovered {v['value']:.3f}" in " ".join(dots.locator("title").all_text_contents())
    # the plots follow the table's filters and numbers
    page.page.select_option("#family", "kosmos2")
    assert points.count() == 1 and plots.locator("svg.strips").count() == 0
    page.page.select_option("#family", "")
    page.page.check("#normalise")
    frozen = blip2["frozen"]["cells"]
    normalised = sum((frozen[t]["mean"] - frozen[t]["chance"]) / (1 - frozen[t]["chance"]) for t in tasks) / 3
    assert any(tip.startswith(f"blip2-tiny: frozen {normalised:.3f}") for tip in points.locator("title").all_text_contents())
    assert page.errors == []
