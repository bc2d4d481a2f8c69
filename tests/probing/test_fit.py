"""Sanity oracles for the probing machinery: features that encode the answer, and shuffled labels."""

import math

import numpy as np
import pytest
from accelerate import Accelerator

from spatialbench.probing.fit import fit
from spatialbench.specs import ProbeSpec
from spatialbench.stats import metrics
from tests.helpers.probe_inputs import K, N, box_inputs, class_inputs

def _spec(arch: str, **kw) -> ProbeSpec:
    options = dict(architecture=arch, width=32, depth=1, heads=2, lr=3e-3, epochs=40, patience=8)
    return ProbeSpec(**{**options, **kw})


@pytest.mark.parametrize("arch", ["linear", "mlp", "attentive"])
def test_probe_reads_features_that_encode_the_class(arch):
    inputs = class_inputs(encode=True)
    result = fit(inputs, _spec(arch), seed=0, headline="accuracy", accelerator=Accelerator(cpu=True))
    assert metrics.accuracy(result.test_pred, inputs.splits["test"].target.numpy()) >= 0.95


def test_attention_probe_with_text_queries_reads_the_class():
    inputs = class_inputs(encode=True, implicit=True)
    result = fit(inputs, _spec("attentive"), seed=0, headline="accuracy", accelerator=Accelerator(cpu=True))
    assert metrics.accuracy(result.test_pred, inputs.splits["test"].target.numpy()) >= 0.95


@pytest.mark.parametrize("arch", ["linear", "mlp", "attentive"])
def test_box_probe_reads_features_that_encode_the_box(arch):
    inputs = box_inputs()
    result = fit(inputs, _spec(arch, epochs=80, patience=5), seed=0, headline="acc_iou50",
                 accelerator=Accelerator(cpu=True))
    test = inputs.splits["test"]
    assert metrics.METRICS["acc_iou50"](result.test_pred, test.target.numpy()) >= 0.95


@pytest.mark.parametrize("arch", ["linear", "mlp", "attentive"])
def test_probe_on_shuffled_labels_stays_at_chance(arch):
    inputs = class_inputs(encode=False)
    result = fit(inputs, _spec(arch), seed=0, headline="accuracy", accelerator=Accelerator(cpu=True))
    acc = metrics.accuracy(result.test_pred, inputs.splits["test"].target.numpy())
    noise = 3 * np.sqrt(0.25 * 0.75 / N["test"])
    assert abs(acc - 1 / K) <= noise + 0.02


def test_same_seed_gives_identical_predictions():
    inputs = class_inputs(encode=True)
    a = fit(inputs, _spec("mlp", epochs=3), seed=5, headline="accuracy", accelerator=Accelerator(cpu=True))
    b = fit(inputs, _spec("mlp", epochs=3), seed=5, headline="accuracy", accelerator=Accelerator(cpu=True))
    assert np.array_equal(a.test_pred, b.test_pred) and a.history == b.history


def test_early_stopping_keeps_the_best_validation_epoch():
    inputs = class_inputs(encode=False)
    result = fit(inputs, _spec("mlp", epochs=30, patience=2), seed=0, headline="accuracy",
                 accelerator=Accelerator(cpu=True))
    assert result.epochs_run < 30
    assert result.val_score == max(result.history)
    assert result.history[result.best_epoch - 1] == result.val_score


def test_lr_follows_linear_warmup_then_cosine_per_step():
    inputs = class_inputs(encode=True)
    seen = []
    spec = _spec("attentive", epochs=4, patience=10, warmup=0.25, lr=[2e-3])
    fit(inputs, spec, 0, "accuracy", Accelerator(cpu=True), on_step=lambda lrs: seen.append(lrs))
    steps = 4 * math.ceil(N["train"] / spec.batch_size)  # 40; the first 10 warm up
    expected = [2e-3 * (s + 1) / 10 if s < 10 else 2e-3 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 30))
                for s in range(steps)]
    assert [lrs[0] for lrs in seen] == pytest.approx(expected)
    assert all(len(set(lrs)) == 1 for lrs in seen)  # decayed and non-decayed groups share the schedule
    assert max(expected) == expected[9] == expected[10] == 2e-3  # the end of warmup is the start of the cosine
    assert all(a > b for a, b in zip(expected[10:], expected[11:])) and expected[-1] < 2e-3 * 0.01


def test_the_grid_point_is_the_one_given_and_selection_reads_validation_only():
    from spatialbench.probing.conditions import select
    from spatialbench.probing.fit import FitResult

    inputs = class_inputs(encode=True)
    result = fit(inputs, _spec("linear", epochs=2), 0, "accuracy", Accelerator(cpu=True), lr=7e-4)
    assert result.lr == 7e-4 and np.isfinite(result.val_loss)

    def made(val, val_loss, test_right):
        return FitResult(0, np.full(3, test_right), 1, 1, val, 0.0, val_loss=val_loss)

    better_on_test = made(0.60, 0.5, 1)
    better_on_validation = made(0.70, 0.9, 0)
    assert select([better_on_test, better_on_validation]) is better_on_validation
    tie = made(0.70, 0.4, 0)
    assert select([better_on_validation, tie]) is tie  # equal validation metric: the lower validation loss
