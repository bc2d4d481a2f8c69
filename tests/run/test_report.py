"""The end-of-run table's formatting."""

import pytest
from rich.console import Console

from spatialbench.run.report import Reporter, p_text, p_value
from spatialbench.results import read_results
from tests.leaderboard.helpers import FIXTURES


def test_a_p_value_below_the_bootstrap_resolution_is_shown_as_a_bound():
    assert p_text(1 / 2001) == "p<0.001"
    assert p_text(0.001) == "p=0.001"
    assert p_text(0.157) == "p=0.157"
    assert p_value(1 / 2001) == "<0.001" and p_value(0.5) == "0.500"


@pytest.mark.parametrize("width", [80, 120])
def test_every_number_of_the_run_table_is_shown_whole_at_any_width(width):
    result = read_results(FIXTURES / "blip2-tiny.json")  # both regimes, 3 baselines, control tasks, layers
    console = Console(width=width, record=True)
    Reporter(console).summary(result, "results.json")
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    for task in result.tasks.values():
        for cond in task.conditions.values():
            m = cond.metrics[task.headline]
            assert f"{m.mean:.3f}±{m.std:.3f}" in text and f"[{m.ci95[0]:.3f},{m.ci95[1]:.3f}]" in text
            if cond.recovered and cond.role != "layer":  # a layer's share is in the file; its table has no room
                r = cond.recovered
                assert f"{r.value:.2f} [{r.ci95[0]:.2f},{r.ci95[1]:.2f}]" in text
        for c in task.comparisons.values():
            assert f"{c.diff:+.3f}" in text and f"[{c.ci95[0]:+.3f},{c.ci95[1]:+.3f}]" in text
    assert "recovered = (score - blind) / (oracle - blind)" in text
