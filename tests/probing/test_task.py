"""One task's cells: a diverging seed is reported and left out; the other seeds and tasks go on."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from spatialbench.probing import conditions
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
    real_fit = conditions.fit

    def diverging(inputs, spec, seed, *args, **kw):
        if seed == 1:  # real NaN features for this seed only: its loss diverges in the real fit
            inputs = inputs.with_features(torch.full(inputs.features.shape, float("nan")))
        return real_fit(inputs, spec, seed, *args, **kw)

    monkeypatch.setattr(conditions, "fit", diverging)
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
