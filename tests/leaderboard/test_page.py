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
            "#board tbody tr", "trs => trs.map(tr => [tr.querySelector('.model').firstChild.textContent,"
                               " tr.querySelector('.condition').textContent])")]

    def headers(self) -> list[str]:
        return self.page.eval_on_selector_all("#board thead th", "ths => ths.map(th => th.dataset.key)")

    def column(self, key: str) -> list[str]:
        index = self.headers().index(key)
        return self.page.eval_on_selector_all(
            "#board tbody tr", f"trs => trs.map(tr => tr.children[{index}].firstChild.textContent)")


@pytest.fixture
def page(browser, site):
    p = Page(browser, site[0])
    yield p
    p.page.close()


def _label(data, row):
    return data["models"][row["model"]]["name"], row["condition"]


def _expected_order(data, task, descending=True):
    """Rows by the task's mean (missing last either way), ties by model name then condition, as the page does."""
    rank = {c: i for i, c in enumerate(data["conditions"])}

    def tie(r):
        return data["models"][r["model"]]["name"], rank[r["condition"]]

    scored = [r for r in data["rows"] if task in r["cells"]]
    scored.sort(key=tie)
    scored.sort(key=lambda r: r["cells"][task]["mean"], reverse=descending)  # stable: ties keep the name order
    missing = sorted((r for r in data["rows"] if task not in r["cells"]), key=tie)
    return [_label(data, r) for r in scored + missing]


def test_the_page_renders_every_row_with_no_console_errors(page, site, tmp_path):
    _, data = site
    assert sorted(page.rows()) == sorted(_label(data, r) for r in data["rows"]) and len(page.rows()) == 7
    assert [k for k in page.headers() if k.startswith("task:")] == ["task:tiny_grid", "task:tiny_relation",
                                                                    "task:tiny_vsr"]
    assert page.page.text_content("#count") == "7 of 7 rows"
    assert "chance" in page.page.text_content('th[data-key="task:tiny_vsr"]')
    # the gap column: mean over tasks, and per task its diff with CI and p-value in the tooltip
    gap = data["models"][0]["gap"]["tiny_relation"]
    at = page.rows().index(("blip2-tiny", "joint"))
    title = page.page.locator("#board tbody tr").nth(at).locator("td").nth(-2).get_attribute("title")
    assert f"tiny_relation: joint − frozen {gap['diff']:+.3f} [{gap['lo']:.3f}, {gap['hi']:.3f}]" in title
    # the recovered column: the mean over shown tasks of (x - blind) / (oracle - blind), per task in the tooltip
    row = next(r for r in data["rows"] if _label(data, r) == ("blip2-tiny", "frozen"))
    shares = row["recovered"]
    assert shares and "blind" not in shares and "oracle" not in shares
    cell = page.page.locator("#board tbody tr").nth(page.rows().index(("blip2-tiny", "frozen"))).locator("td").nth(-3)
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
    page.page.click('th[data-key="model"]')
    names = [m for m, _ in page.rows()]
    assert names == sorted(names) and names[0] == "blip2-tiny"


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
    assert len(page.rows()) == 7 and page.page.text_content("#count") == "7 of 7 rows"
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
    page.page.click(f"#board tbody tr >> nth={at}")
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
    assert shares.locator("thead th").all_text_contents() == ["task", "frozen", "joint"]
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
        p.page.click(f"#board tbody tr >> nth={at}")
        for summary in p.page.locator("#detail details summary").all():
            summary.click()
        assert p.page.locator("#detail h2").text_content() == PAYLOAD
        assert PAYLOAD in p.page.locator("#detail").text_content()
        assert SCRIPT_PAYLOAD in p.page.locator("#detail").text_content()
        failed = p.page.locator("#board td.failed")
        assert failed.count() == 1 and failed.text_content() == "failed" and failed.get_attribute("title") == PAYLOAD
        assert p.page.evaluate("document.querySelectorAll('img').length") == 0
        assert p.page.evaluate("document.scripts.length") == 3  # data.js, detail.js, app.js, and no more
        assert p.dialogs == [] and p.errors == []
    finally:
        p.page.close()


def test_a_missing_chromium_fails_with_how_to_install_it(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        chromium_executable(tmp_path / "chromium")
