"""One task's cells: a diverging seed is reported and left out; the other seeds and tasks go on."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from spatialbench.probing import group
from spatialbench.probing.fit import fit
from spatialbench.run.runner import Runner
from spatialbench.specs import ProbeSpec, RunConfig
from tests.helpers.probe_inputs import class_inputs


def test_a_nan_loss_stops_the_fit_with_a_clear_error():
    inputs = class_inputs(encode=True)
    features = inputs.features.rows.clone()
    features[inputs.splits["train"].image[:5]] = float("nan")
    inputs = inputs.with_features(features)
    with pytest.raises(FloatingPointError, match=r"seed 3: loss became nan at epoch 1; lower the lr"):
        fit(inputs, ProbeSpec(architecture="linear", epochs=2), 3, "accuracy", Accelerator(cpu=True))


def test_a_diverging_seed_is_left_out_and_the_others_go_on(small_tasks, tmp_path, monkeypatch):
    real_group = group.fit_group

    def diverging(members, *args, **kw):
        """Seed 1's fits read real NaN features (a stack of their own, as members share features): their loss
        diverges in the real training loop, and the run must carry on without them."""
        nan = [i for i, m in enumerate(members) if m.seed == 1]
        rest = [i for i in range(len(members)) if i not in nan]
        out = dict(zip(rest, real_group([members[i] for i in rest], *args, **kw)))
        if nan:
            broken = members[nan[0]].inputs
            broken = broken.with_features(torch.full(broken.features.shape, float("nan")))
            out.update(zip(nan, real_group([replace(members[i], inputs=broken) for i in nan], *args, **kw)))
        return [out[i] for i in range(len(members))]

    monkeypatch.setattr(group, "fit_group", diverging)
    config = RunConfig(model="blip2-tiny", tasks=["small_grid,small_vsr"], seeds=3, output=tmp_path / "out",
                       include_paths=[small_tasks], cache_dir=tmp_path / "cache", device="cpu", baselines=["blind"],
                       control=False)
    result = Runner(config).run()
    for task in result.tasks.values():
        assert task.status == "ok", task.error
        for name, cond in task.conditions.items():
            assert list(cond.failed_seeds) == [1] and "loss became nan" in cond.failed_seeds[1]
            assert [s.seed for s in cond.seeds] == [0, 2]
            m = cond.metrics[task.headline]
            assert len(m.per_seed) == 2 and m.mean == pytest.approx(np.mean(m.per_seed))
