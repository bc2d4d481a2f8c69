"""Fits trained as one stack give each member the fit it gets alone: its selected lr, its test score."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from spatialbench.probing import conditions
from spatialbench.probing.fit import fit, score
from spatialbench.probing.group import Member, fit_group
from spatialbench.specs import ProbeSpec
from tests.helpers.probe_inputs import box_inputs, class_inputs

CPU = Accelerator(cpu=True)


def _spec(**kw) -> ProbeSpec:
    # Few epochs at small lrs: two fits that differ by float rounding (a batched matmul's, 1e-7) drift apart
    # over a long chaotic training (measured: 0.013 of acc_iou50 after 12 epochs at lr 3e-3).
    return ProbeSpec(**{**dict(architecture="attentive", width=16, depth=1, heads=2, readouts=2, lr=[3e-4, 1e-3],
                               epochs=6, patience=3), **kw})


@pytest.mark.parametrize("case", ["explicit", "implicit", "box", "linear"])
def test_each_member_of_a_stack_selects_the_lr_and_scores_as_when_fitted_alone(case):
    inputs = box_inputs() if case == "box" else class_inputs(encode=True, implicit=case == "implicit")
    headline = "acc_iou50" if case == "box" else "accuracy"
    spec = _spec(architecture="linear") if case == "linear" else _spec()
    members = [Member(inputs, seed, lr) for seed in (0, 1) for lr in spec.lr]
    stacked = fit_group(members, spec, headline, CPU)
    alone = [fit(m.inputs, spec, m.seed, headline, CPU, lr=m.lr) for m in members]
    test = inputs.splits["test"]
    for a, b in zip(stacked, alone):
        assert (a.seed, a.lr) == (b.seed, b.lr)
        assert a.best_epoch == b.best_epoch and a.epochs_run == b.epochs_run
        assert a.history == pytest.approx(b.history, abs=0.002)
        assert abs(score(headline, a.test_pred, test, inputs.box) - score(headline, b.test_pred, test, inputs.box)) \
            <= 0.002
    for seed in (0, 1):
        pick = lambda fits: conditions.select([f for f in fits if f.seed == seed]).lr  # noqa: E731
        assert pick(stacked) == pick(alone)


def test_a_member_that_stops_early_leaves_and_the_others_train_on():
    inputs = class_inputs(encode=False)  # shuffled labels: validation never improves for long
    spec = _spec(lr=[1e-3], epochs=30, patience=2)
    seen: dict[int, list[int]] = {}
    out = fit_group([Member(inputs, s, 1e-3) for s in range(3)], spec, "accuracy", CPU,
                    on_epoch=lambda m, epoch, val: seen.setdefault(m, []).append(epoch))
    for m, result in enumerate(out):
        assert result.epochs_run < 30 and seen[m] == list(range(1, result.epochs_run + 1))
        assert result.history[result.best_epoch - 1] == result.val_score == max(result.history)
    assert len({r.epochs_run for r in out}) > 1  # they stopped at different epochs, each on its own


def test_a_member_whose_loss_diverges_is_reported_and_the_others_finish():
    inputs = box_inputs()
    train = inputs.splits["train"]
    broken = train.target.clone()
    broken[:64] = float("nan")  # this member's own targets (a control task's, say): only its loss is NaN
    bad = inputs.with_splits({**inputs.splits, "train": replace(train, target=broken)})
    spec = _spec(lr=[1e-3], epochs=3)
    good, failed, other = fit_group([Member(inputs, 0, 1e-3), Member(bad, 2, 1e-3), Member(inputs, 1, 1e-3)],
                                    spec, "acc_iou50", CPU)
    assert isinstance(failed, FloatingPointError) and "seed 2: loss became nan at epoch 1" in str(failed)
    alone = fit(inputs, spec, 1, "acc_iou50", CPU, lr=1e-3)
    assert other.epochs_run == alone.epochs_run == 3
    assert np.abs(other.test_pred - alone.test_pred).max() < 1e-3
    assert good.seed == 0 and torch.isfinite(torch.tensor(good.history)).all()


def test_texts_are_right_aligned_and_a_resident_table_gives_what_the_per_batch_embedding_gives():
    from spatialbench.probing.fit import Texts

    words = {"a": 1.0, "b": 2.0, "c": 3.0}

    def embed(texts):  # a left-padding tokenizer's output: padding first, then the text's tokens
        length = max(len(t.split()) for t in texts)
        emb, mask = torch.zeros(len(texts), length, 2), torch.zeros(len(texts), length, dtype=torch.long)
        for i, t in enumerate(texts):
            tokens = t.split()
            for j, w in enumerate(tokens):
                emb[i, length - len(tokens) + j] = words[w]
                mask[i, length - len(tokens) + j] = 1
        return emb, mask

    texts = Texts.embedded(embed, ["a b c", "b", "c a"])
    emb, mask = texts(torch.tensor([1, 2]))
    assert mask.tolist() == [[1, 0], [1, 1]]  # each text's tokens first
    assert emb[:, :, 0].tolist() == [[2.0, 0.0], [3.0, 1.0]]
    table = texts.resident(budget=2**20, chunk=2)
    assert table is not texts and texts.resident(budget=2**20) is table  # made once
    texts.release()  # a process moving to another task's fits lets it go; the next stack makes it again
    assert texts.resident(budget=2**20) is not table
    for rows in ([1, 2], [0, 1], [2]):
        a, b = texts(torch.tensor(rows)), table(torch.tensor(rows))
        assert torch.equal(a[1], b[1]) and torch.equal(a[0][a[1].bool()], b[0][b[1].bool()])
    assert Texts.embedded(embed, ["a b c"]).resident(budget=8).embed is not None  # over the budget: per batch


def test_resident_features_are_what_a_batch_reads():
    from spatialbench.probing.visual import standardised

    rows = torch.randn(10, 3, 4).to(torch.bfloat16)
    visual = standardised(rows, torch.arange(6), map=lambda x: x.float() * 2, shape=(10, 3, 4))
    held = visual.resident()
    index = torch.tensor([4, 0, 9])
    assert torch.equal(held.batch(index), visual.batch(index))
    assert visual.resident(budget=10) is visual  # over the budget: read per batch
