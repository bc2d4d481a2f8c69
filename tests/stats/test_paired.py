import math

import numpy as np
import pytest

from spatialbench.stats.codelength import MdlResult, default_blocks, online_codelength
from spatialbench.stats.control import control_boxes, control_targets
from spatialbench.stats.metrics import cluster_bootstrap_ci
from spatialbench.stats.paired import (
    PairedResult,
    SelectivityResult,
    paired_bootstrap,
    paired_from_scores,
    selectivity,
)


def _preds_from_hits(hits, target, n_classes=2):
    """Class predictions that are right exactly where hits is True."""
    return np.where(hits, target, (target + 1) % n_classes)


# --- paired bootstrap -----------------------------------------------------------


def test_identical_systems():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    pred = rng.integers(0, 3, 120)
    res = paired_bootstrap("accuracy", [pred, pred], [pred.copy()], y, np.arange(120) // 4, n_boot=500)
    assert isinstance(res, PairedResult)
    assert res.diff == 0.0
    assert res.ci95 == pytest.approx((0.0, 0.0), abs=1e-12)
    assert res.p_value == 1.0


def test_identical_systems_whose_seeds_disagree_are_not_certainly_equal():
    # Each system's seeds are independent trainings, drawn on their own: two conditions with the same
    # three disagreeing seeds have a zero difference whose CI holds the seeds' spread, and p = 1.
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    preds = [rng.integers(0, 3, 120) for _ in range(3)]
    res = paired_bootstrap("accuracy", preds, [p.copy() for p in preds], y, np.arange(120) // 4, n_boot=500)
    assert res.diff == 0.0 and res.p_value == 1.0
    assert res.ci95[0] < -0.02 and res.ci95[1] > 0.02


def test_always_right_vs_always_wrong():
    y = np.arange(60) % 3
    res = paired_bootstrap("accuracy", [y, y], [(y + 1) % 3], y, np.arange(60) // 3, n_boot=999)
    assert (res.diff, res.a, res.b) == (1.0, 1.0, 0.0)
    assert res.ci95 == (1.0, 1.0)
    assert res.p_value == pytest.approx(1 / 1000)


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_uses_the_same_draws_as_cluster_bootstrap_ci(metric):
    # Against an always-wrong B (score 0 on any resample, for both metrics), the
    # difference replicates are A's own replicates, so the CI must be A's CI from
    # metrics with the same seed: both the fast and the rescoring path share its draws.
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    clusters = np.arange(90) // 5
    preds_a = [np.where(rng.random(90) < 0.7, y, rng.integers(0, 3, 90)) for _ in range(2)]
    res = paired_bootstrap(metric, preds_a, [y + 3], y, clusters, n_boot=300, seed=7)
    assert res.b == 0.0
    assert res.ci95 == cluster_bootstrap_ci(metric, preds_a, y, clusters, n_boot=300, seed=7)


def test_macro_f1_path_hand_point_estimate():
    y = np.array([0, 0, 0, 1, 1, 2])
    pa = np.array([0, 0, 1, 1, 2, 2])  # macro F1 59/90 (see test_metrics)
    res = paired_bootstrap("macro_f1", [pa], [y], y, np.arange(6), n_boot=50)
    assert res.diff == pytest.approx(59 / 90 - 1.0)


def _correlated_pair(n=400, seed=3):
    # Items vary a lot in difficulty (A right on ~60 %), and B equals A except that
    # it misses 20 items A gets: a small, consistent 0.05 advantage for A.
    rng = np.random.default_rng(seed)
    hits_a = rng.random(n) < 0.6
    hits_b = hits_a.copy()
    hits_b[rng.choice(np.flatnonzero(hits_a), 20, replace=False)] = False
    return hits_a.astype(float), hits_b.astype(float)


def test_pairing_narrows_the_ci():
    a, b = _correlated_pair()
    n, clusters = len(a), np.arange(len(a))
    res = paired_from_scores(a, b, clusters, n_boot=2000)
    assert res.diff == pytest.approx(0.05)
    assert res.ci95[0] > 0  # paired: significant
    assert res.p_value < 0.01

    # Unpaired: each system's own CI overlaps the other's.
    y = np.zeros(n, dtype=int)
    lo_a, hi_a = cluster_bootstrap_ci("accuracy", [_preds_from_hits(a > 0, y)], y, clusters)
    lo_b, hi_b = cluster_bootstrap_ci("accuracy", [_preds_from_hits(b > 0, y)], y, clusters)
    assert lo_a < hi_b and lo_b < hi_a

    # Independent resampling of the two systems gives a CI at least twice as wide.
    rng = np.random.default_rng(0)
    idx_a, idx_b = rng.integers(0, n, (2, 2000, n))
    indep = np.quantile(a[idx_a].mean(1) - b[idx_b].mean(1), [0.025, 0.975])
    assert indep[0] < 0 < indep[1]
    assert (indep[1] - indep[0]) > 2 * (res.ci95[1] - res.ci95[0])


def test_clusters_widen_the_paired_ci():
    # 40 images x 10 items; the A-B difference is set per image (image effect).
    rng = np.random.default_rng(4)
    image = np.repeat(np.arange(40), 10)
    a = rng.random(400)
    b = a - np.repeat(rng.normal(0.05, 0.2, 40), 10)
    clustered = paired_from_scores(a, b, image)
    flat = paired_from_scores(a, b, np.arange(400))
    assert clustered.diff == flat.diff
    assert np.ptp(clustered.ci95) > 2 * np.ptp(flat.ci95)


def test_p_value_under_null_and_effect():
    rng = np.random.default_rng(5)
    clusters = np.arange(300) // 3
    a, b = rng.random(300), rng.random(300)  # exchangeable noise
    null = paired_from_scores(a, b, clusters)
    assert null.p_value > 0.05
    assert null.ci95[0] < 0 < null.ci95[1]
    effect = paired_from_scores(a + 0.2, b, clusters)
    assert effect.p_value < 0.01
    assert effect.p_value >= 1 / 2001


def test_swapping_systems_mirrors_the_result():
    # The test is two-sided: B vs A gives the negated difference and CI, same p.
    rng = np.random.default_rng(9)
    a, b = rng.random(200), rng.random(200) + 0.06
    clusters = np.arange(200) // 2
    ab, ba = paired_from_scores(a, b, clusters), paired_from_scores(b, a, clusters)
    assert ba.diff == pytest.approx(-ab.diff)
    assert ba.ci95 == pytest.approx((-ab.ci95[1], -ab.ci95[0]))
    assert ba.p_value == ab.p_value
    assert 0.001 < ab.p_value < 0.5  # a moderate effect, so a one-sided count would differ


def test_p_value_roughly_calibrated_under_null():
    # Over many null data sets, p < 0.05 should happen about 5 % of the time.
    rng = np.random.default_rng(6)
    clusters = np.arange(100) // 2
    ps = [paired_from_scores(rng.random(100), rng.random(100), clusters, n_boot=400, seed=s).p_value
          for s in range(200)]
    assert 0.01 <= np.mean(np.array(ps) < 0.05) <= 0.12


def test_deterministic_given_seed():
    # Continuous scores, so two different draws cannot land on the same quantiles.
    rng = np.random.default_rng(8)
    a, b = rng.random(400), rng.random(400)
    clusters = np.arange(400) // 4
    assert paired_from_scores(a, b, clusters, seed=3) == paired_from_scores(a, b, clusters, seed=3)
    assert paired_from_scores(a, b, clusters, seed=3).ci95 != paired_from_scores(a, b, clusters, seed=4).ci95


def test_rejects_misaligned_inputs():
    with pytest.raises(ValueError):
        paired_from_scores(np.ones(5), np.ones(4), np.arange(5))
    with pytest.raises(ValueError):
        paired_bootstrap("accuracy", [np.zeros(5)], [np.zeros(5)], np.zeros(5), np.arange(4))
    with pytest.raises(ValueError):
        paired_bootstrap("accuracy", [], [np.zeros(5)], np.zeros(5), np.arange(5))


# --- selectivity ----------------------------------------------------------------


def test_selectivity_hand_case():
    n = 100
    clusters = np.arange(n) // 5
    task_y = np.arange(n) % 4
    control_y = control_targets(np.arange(n) % 10, task_y, 4, seed=0)
    rng = np.random.default_rng(7)
    task_hits = np.zeros(n, bool)
    task_hits[rng.choice(n, 90, replace=False)] = True
    control_hits = np.zeros(n, bool)
    control_hits[rng.choice(n, 30, replace=False)] = True
    res = selectivity([_preds_from_hits(task_hits, task_y, 4)], [_preds_from_hits(control_hits, control_y, 4)],
                      task_y, control_y, clusters, "accuracy")
    assert isinstance(res, SelectivityResult)
    assert (res.task, res.control) == pytest.approx((0.9, 0.3))
    assert res.selectivity == pytest.approx(0.6)
    assert res.ci95[0] < 0.6 < res.ci95[1]


# --- control tasks --------------------------------------------------------------


def test_control_targets_permute_the_true_class_per_category():
    cats = np.array([3, 7, 3, 11, 7, 3, 3])
    true = np.array([0, 1, 1, 2, 1, 0, 4])
    t = control_targets(cats, true, 5, seed=1)
    # The same (category, class) always maps to the same control class; within a category the map is a
    # bijection, so two different classes never collide.
    assert t[0] == t[5] and t[1] == t[4]
    assert len({t[0], t[2], t[6]}) == 3
    np.testing.assert_array_equal(t, control_targets(cats, true, 5, seed=1))
    # Order and set of items do not matter: a "test split" in another order agrees.
    perm = np.array([4, 3, 0])
    np.testing.assert_array_equal(control_targets(cats[perm], true[perm], 5, seed=1), t[perm])
    perm3 = np.random.default_rng([1, 3]).permutation(5)
    np.testing.assert_array_equal(control_targets(np.full(5, 3), np.arange(5), 5, seed=1), perm3)


def test_control_targets_seeds_differ_and_keep_the_class_balance():
    cats = np.repeat(np.arange(1000), 5)
    true = np.tile(np.arange(5), 1000)
    t0, t1 = control_targets(cats, true, 5, seed=0), control_targets(cats, true, 5, seed=1)
    assert np.mean(t0 != t1) > 0.7  # independent permutations disagree 80 % of the time
    # Each category's 5 items cover all 5 classes, so balance is exact, not just likely.
    np.testing.assert_array_equal(np.bincount(t0, minlength=5), [1000] * 5)


def test_control_boxes_are_one_symmetry_of_the_square_per_category():
    rng = np.random.default_rng(0)
    n = 400
    cats = np.arange(n) % 40
    xy = rng.uniform(0, 0.6, size=(n, 2))
    wh = rng.uniform(0.05, 0.4, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    out = control_boxes(cats, boxes, seed=2)
    x0, y0, x1, y1 = out.T
    assert ((0 <= x0) & (x0 < x1) & (x1 <= 1) & (0 <= y0) & (y0 < y1) & (y1 <= 1)).all()
    # Sizes survive up to a transpose: {w, h} is kept per box.
    np.testing.assert_allclose(np.sort(out[:, 2:] - out[:, :2], 1), np.sort(wh, 1))
    # One symmetry per category: the centre moves by the same map for every box of a category.
    centres = lambda b: (b[:, :2] + b[:, 2:]) / 2
    for c in range(40):
        rows = cats == c
        src, dst = centres(boxes[rows]) - 0.5, centres(out[rows]) - 0.5
        m, *_ = np.linalg.lstsq(src, dst, rcond=None)
        np.testing.assert_allclose(src @ m, dst, atol=1e-9)
        assert set(np.round(np.abs(m).ravel(), 9)) <= {0.0, 1.0}
    np.testing.assert_array_equal(control_boxes(cats[::-1], boxes[::-1], seed=2), out[::-1])
    assert not np.allclose(control_boxes(cats, boxes, seed=3), out)


def test_control_box_symmetries_by_hand():
    box = np.array([[0.1, 0.2, 0.3, 0.6]])
    seen = {tuple(np.round(control_boxes(np.array([c]), box, seed=0)[0], 9)) for c in range(200)}
    expected = {(0.1, 0.2, 0.3, 0.6), (0.7, 0.2, 0.9, 0.6), (0.1, 0.4, 0.3, 0.8), (0.7, 0.4, 0.9, 0.8),
                (0.2, 0.1, 0.6, 0.3), (0.2, 0.7, 0.6, 0.9), (0.4, 0.1, 0.8, 0.3), (0.4, 0.7, 0.8, 0.9)}
    assert seen == expected


def test_control_rejects_bad_input():
    with pytest.raises(ValueError):
        control_targets(np.array([0, -1]), np.array([0, 0]), 3, seed=0)
    with pytest.raises(ValueError):
        control_targets(np.array([0, 1]), np.array([0, 3]), 3, seed=0)
    with pytest.raises(ValueError):
        control_boxes(np.array([0.5]), np.zeros((1, 4)), seed=0)
    with pytest.raises(ValueError):
        control_boxes(np.array([0]), np.zeros((2, 4)), seed=0)


# --- MDL ------------------------------------------------------------------------


def test_online_codelength_hand_case():
    # First block: 10 items, K = 4 -> 20 bits; then blocks of 10 and 20 items
    # costing 15 and 10 bits. N = 40 -> uniform 80 bits.
    res = online_codelength([10, 20], [15.0, 10.0], first_block_size=10, n_classes=4)
    assert isinstance(res, MdlResult)
    assert res.codelength_bits == pytest.approx(45.0)
    assert res.uniform_bits == pytest.approx(80.0)
    assert res.compression == pytest.approx(80 / 45)


def test_online_codelength_perfect_and_uniform_probes():
    ends = default_blocks(1000)
    first, sizes = ends[0], list(np.diff(ends))
    perfect = online_codelength(sizes, [0.0] * len(sizes), first, n_classes=7)
    assert perfect.codelength_bits == pytest.approx(first * math.log2(7))
    assert perfect.compression == pytest.approx(1000 / first)
    uniform = online_codelength(sizes, [s * math.log2(7) for s in sizes], first, n_classes=7)
    assert uniform.compression == pytest.approx(1.0)
    with pytest.raises(ValueError):
        online_codelength([10], [1.0, 2.0], 5, 3)


def test_default_blocks():
    assert default_blocks(1000) == [1, 2, 4, 8, 16, 32, 62, 125, 250, 500, 1000]
    assert default_blocks(10) == [1, 2, 5, 10]
    assert default_blocks(100) == [1, 3, 6, 12, 25, 50, 100]  # ends are floored
    assert default_blocks(1) == [1]
    for n in (7, 333, 12345):
        ends = default_blocks(n)
        assert ends[0] >= 1 and ends[-1] == n
        assert (np.diff(ends) > 0).all()


def test_recovered_is_the_share_of_the_floor_to_ceiling_headroom_with_a_paired_ci():
    from spatialbench.stats.paired import recovered_from_scores

    clusters = np.repeat(np.arange(50), 2)
    floor = np.full(100, 0.5)
    ceiling = np.ones(100)
    score = np.tile([1.0, 0.5], 50)  # half the items at the ceiling, half at the floor: 0.75 = 50% of the way
    value, (lo, hi) = recovered_from_scores(score, floor, ceiling, clusters)
    assert value == pytest.approx(0.5)
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)  # each image holds one of each: no spread
    noisy = np.random.default_rng(0).random(100)
    value, (lo, hi) = recovered_from_scores(noisy, floor * 0, ceiling, clusters)
    assert value == pytest.approx(noisy.mean()) and lo < value < hi
    assert recovered_from_scores(score, ceiling, floor, clusters) is None  # a ceiling below the floor: undefined
    with pytest.raises(ValueError):
        recovered_from_scores(score, floor[:10], ceiling, clusters)
