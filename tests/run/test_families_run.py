"""`run --tasks synthetic --limit 24` works for every family's tiny card and for the vision_patches baseline."""

import pytest

from spatialbench.registry import TaskRegistry
from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig

TINY_CARDS = ["blip2-tiny", "instructblip-tiny", "idefics-tiny", "idefics2-tiny", "kosmos2-tiny", "llava-tiny",
              "generic-blip2-tiny"]


@pytest.mark.parametrize("card, point", [*[(c, None) for c in TINY_CARDS], ("blip2-tiny", "vision_patches")])
def test_every_family_runs_the_synthetic_group(card, point, tmp_path):
    config = RunConfig(model=card, tasks=["synthetic"], seeds=1, limit=24, output=tmp_path, device="cpu", point=point,
                       baselines=[], control=False)
    result = Runner(config).run()
    assert sorted(result.tasks) == sorted(t.name for t in TaskRegistry().resolve("synthetic"))
    failed = {n: t.error for n, t in result.tasks.items() if t.status != "ok"}
    assert not failed
    assert result.point == (point or result.model.point)
    assert result.geometry == ("pad_to_square" if card == "llava-tiny" else "processor")  # the mapping used, recorded
    assert result.extraction.extracted == result.extraction.prompts > 0
