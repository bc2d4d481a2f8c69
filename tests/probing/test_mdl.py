"""Online-code MDL end to end: features that encode the labels compress them; shuffled labels do not."""

import math

import pytest
from accelerate import Accelerator

from spatialbench.probing.mdl import online_code
from spatialbench.specs import ProbeSpec
from spatialbench.stats import codelength
from tests.helpers.probe_inputs import box_inputs, class_inputs

SPEC = ProbeSpec(architecture="linear", lr=0.01, epochs=15, patience=4)


def test_online_code_compresses_labels_the_features_encode():
    inputs = class_inputs(encode=True)
    r = online_code(inputs, SPEC, "accuracy", 0, Accelerator(cpu=True))
    n = len(inputs.splits["train"])
    assert r.uniform_bits == pytest.approx(n * math.log2(4))
    assert r.compression > 2.5  # most blocks are sent almost for free (measured: 2.93)


def test_online_code_of_shuffled_labels_costs_about_the_uniform_code():
    inputs = class_inputs(encode=False)
    r = online_code(inputs, SPEC, "accuracy", 0, Accelerator(cpu=True))
    assert 0.8 < r.compression < 1.1  # nothing to learn: no better than uniform, a little worse from overfitting


def test_online_code_sums_the_block_bits(monkeypatch):
    """The codelength is the first block's uniform bits plus each later block's cross-entropy in bits."""
    inputs = class_inputs(encode=True)
    seen = []
    from spatialbench.probing import mdl

    real_fit = mdl.fit

    def recording(sub, *args, **kw):
        result = real_fit(sub, *args, **kw)
        seen.append((len(sub.splits["train"]), len(sub.splits["test"]), result.test_loss))
        return result

    monkeypatch.setattr(mdl, "fit", recording)
    r = online_code(inputs, SPEC, "accuracy", 0, Accelerator(cpu=True))
    ends = codelength.default_blocks(len(inputs.splits["train"]))
    assert [(a, b - a) for a, b in zip(ends, ends[1:])] == [(t, s) for t, s, _ in seen]
    expected = ends[0] * 2.0 + sum(s * loss / math.log(2) for _, s, loss in seen)
    assert r.codelength_bits == pytest.approx(expected)


def test_box_tasks_have_no_online_code():
    with pytest.raises(ValueError, match="class targets"):
        online_code(box_inputs(), SPEC, "acc_iou50", 0, Accelerator(cpu=True))
