"""`run` works for every family's tiny card, and for the vision_patches baseline, on a small task of every kind
(the shipped synthetic tasks themselves run in tests/run/test_runner.py)."""

import pytest

from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig
from tests.helpers import SMALL_TASKS, write_small_tasks

TINY_CARDS = ["blip2-tiny", "instructblip-tiny", "idefics-tiny", "idefics2-tiny", "kosmos2-tiny", "llava-tiny",
              "generic-blip2-tiny"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_small_tasks(tmp_path_factory.mktemp("families") / "tasks")


@pytest.mark.parametrize("card, point", [*[(c, None) for c in TINY_CARDS], ("blip2-tiny", "vision_patches")])
def test_every_family_runs_a_task_of_every_kind(card, point, small, tmp_path):
    config = RunConfig(model=card, tasks=["small"], seeds=1, output=tmp_path, device="cpu", point=point,
                       baselines=[], control=False, include_paths=[small], workers=0)
    result = Runner(config).run()
    assert sorted(result.tasks) == sorted(SMALL_TASKS)
    assert {t.kind for t in result.tasks.values()} == {"region_localization", "relation", "vsr", "grounding"}
    failed = {n: t.error for n, t in result.tasks.items() if t.status != "ok"}
    assert not failed
    assert result.point == (point or result.model.point)
    assert result.geometry == ("pad_to_square" if card == "llava-tiny" else "processor")  # the mapping used, recorded
    ex = result.extraction  # the session's cache may hold these prompts already (another test's run)
    assert ex.extracted + ex.reused == ex.prompts > 0 and ex.failed == 0
