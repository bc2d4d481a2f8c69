import warnings

import numpy as np
import pytest

from spatialbench.stats.metrics import (
    METRICS,
    accuracy,
    box_iou,
    chance_level,
    cluster_bootstrap_ci,
    denormalise,
    macro_f1,
    mean_std,
    per_item,
)

# --- point metrics ------------------------------------------------------------


def test_accuracy_hand_case():
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 0])) == 0.5
    assert accuracy(np.array([3]), np.array([3])) == 1.0


def test_accuracy_rejects_length_mismatch():
    with pytest.raises(ValueError):
        accuracy(np.array([0, 1]), np.array([0]))


def test_macro_f1_uneven_three_classes():
    target = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    # class 0: tp2 fp0 fn1 -> 4/5; class 1: tp1 fp1 fn1 -> 1/2; class 2: tp1 fp1 fn0 -> 2/3
    assert macro_f1(pred, target) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    assert macro_f1(pred, target) == pytest.approx(59 / 90)


def test_macro_f1_class_only_in_predictions_counts_as_zero():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 3])
    # class 0 -> 1, class 1: tp1 fn1 -> 2/3, class 3 (predicted only) -> 0
    assert macro_f1(pred, target) == pytest.approx(5 / 9)
    # Classes 2 and 4 never occur, so declaring 5 classes must not change the mean.
    assert macro_f1(pred, target, n_classes=5) == pytest.approx(5 / 9)
    with pytest.raises(ValueError):
        macro_f1(pred, target, n_classes=3)


def test_macro_f1_perfect_and_all_wrong():
    y = np.array([2, 0, 1, 1])
    assert macro_f1(y, y) == 1.0
    assert macro_f1(np.array([1, 1]), np.array([0, 0])) == 0.0


def test_box_iou_cases():
    pred = np.array([
        [0, 0, 2, 2],   # identical
        [0, 0, 1, 1],   # disjoint
        [0, 0, 2, 2],   # shifted by half: inter 2, union 6
        [0, 0, 2, 2],   # zero-area target inside
        [1, 1, 1, 1],   # both zero-area and identical
        [2, 2, 0, 0],   # inverted box
    ], dtype=float)
    target = np.array([
        [0, 0, 2, 2],
        [5, 5, 6, 6],
        [1, 0, 3, 2],
        [1, 1, 1, 3],
        [1, 1, 1, 1],
        [0, 0, 2, 2],
    ], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iou = box_iou(pred, target)
    assert not np.isnan(iou).any()
    np.testing.assert_allclose(iou, [1.0, 0.0, 1 / 3, 0.0, 0.0, 0.0])


def test_box_iou_touching_edges_is_zero_and_symmetric():
    a = np.array([[0, 0, 1, 1], [0, 0, 4, 2]], dtype=float)
    b = np.array([[1, 0, 2, 1], [1, 1, 3, 5]], dtype=float)
    # second row: inter 2*1 = 2, union 8 + 8 - 2 = 14
    np.testing.assert_allclose(box_iou(a, b), [0.0, 2 / 14])
    np.testing.assert_allclose(box_iou(b, a), box_iou(a, b))


def test_denormalise():
    boxes = np.array([[0.1, 0.2, 0.5, 1.0], [0.0, 0.0, 1.0, 0.5]])
    sizes = np.array([[200, 100], [640, 480]])
    np.testing.assert_allclose(denormalise(boxes, sizes), [[20, 20, 100, 100], [0, 0, 640, 240]])


def test_acc_iou50_threshold_is_inclusive():
    target = np.array([[0, 0, 2, 2]] * 3, dtype=float)
    pred = np.array([
        [0, 0, 1, 2],      # IoU exactly 0.5
        [0, 0, 0.99, 2],   # just below
        [0, 0, 2, 2],      # 1
    ])
    np.testing.assert_array_equal(per_item("acc_iou50", pred, target), [1.0, 0.0, 1.0])
    assert METRICS["acc_iou50"](pred, target) == pytest.approx(2 / 3)
    assert METRICS["mean_iou"](pred, target) == pytest.approx((0.5 + 0.495 + 1.0) / 3)


def test_registry_and_per_item_agree():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    assert set(METRICS) == {"accuracy", "macro_f1", "acc_iou50", "mean_iou"}
    assert METRICS["accuracy"](p, y) == pytest.approx(per_item("accuracy", p, y).mean())
    np.testing.assert_array_equal(per_item("accuracy", p, y), (p == y).astype(float))
    boxes = rng.uniform(0, 1, (50, 4))
    pb = np.sort(boxes.reshape(50, 2, 2), axis=1).reshape(50, 4)
    tb = np.clip(pb + rng.normal(0, 0.1, (50, 4)), 0, 1)
    assert METRICS["mean_iou"](pb, tb) == pytest.approx(per_item("mean_iou", pb, tb).mean())
    for name in ("accuracy", "macro_f1"):
        assert 0.0 <= METRICS[name](p, y) <= 1.0
    with pytest.raises(KeyError):
        per_item("macro_f1", p, y)


def test_mean_std():
    assert mean_std([0.7]) == (0.7, 0.0)
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0)
    assert s == pytest.approx(1.0)  # ddof=1; ddof=0 would give 0.816


# --- clustered bootstrap ------------------------------------------------------


def _independent(n):
    return np.arange(n)


def test_bootstrap_all_correct_is_one():
    y = np.arange(100) % 3
    assert cluster_bootstrap_ci("accuracy", [y, y], y, np.arange(100) // 4) == (1.0, 1.0)


def test_bootstrap_single_cluster_and_seed_is_degenerate_at_point():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    pred = np.where(rng.random(60) < 0.6, y, (y + 1) % 3)
    one = np.zeros(60, dtype=int)
    for name in ("accuracy", "macro_f1"):  # fast path and explicit loop
        point = METRICS[name](pred, y)
        lo, hi = cluster_bootstrap_ci(name, [pred, pred], y, one, n_boot=50)
        assert lo == pytest.approx(point) and hi == pytest.approx(point)


def test_macro_f1_bootstrap_from_summed_counts_gives_the_replicates_rescoring_gives():
    """The counted path (each replicate sums the drawn images' confusion margins) against the generic one
    (macro_f1 recomputed on each replicate's items): same draws, same replicates, on labels that are negative,
    sparse, and missing from the targets or from a seed's predictions."""
    rng = np.random.default_rng(4)
    y = rng.choice([-2, 0, 5, 9], 120)
    preds = [np.where(rng.random(120) < 0.5, y, rng.choice([-2, 0, 5, 7], 120)) for _ in range(3)]
    preds[2][preds[2] == 7] = 0  # one seed never predicts 7
    clusters = np.arange(120) // 4
    for n_boot, seed in ((200, 0), (50, 3)):
        counted = cluster_bootstrap_ci("macro_f1", preds, y, clusters, n_boot=n_boot, seed=seed)
        rescored = cluster_bootstrap_ci(lambda p, t: macro_f1(p, t), preds, y, clusters, n_boot=n_boot, seed=seed)
        assert counted == pytest.approx(rescored, abs=1e-12)
        assert counted[0] < counted[1]
    from spatialbench.stats.paired import paired_bootstrap

    other = [np.roll(p, 7) for p in preds[:2]]
    counted = paired_bootstrap("macro_f1", preds, other, y, clusters, n_boot=200, seed=1)
    rescored = paired_bootstrap(lambda p, t: macro_f1(p, t), preds, other, y, clusters, n_boot=200, seed=1)
    assert counted.ci95 == pytest.approx(rescored.ci95, abs=1e-12) and counted.p_value == rescored.p_value


def test_bootstrap_reads_seeds_a_ci_widens_when_seeds_disagree():
    # Two conditions with the same seed-averaged predictions item by item, over the same images: in one the
    # seeds agree (each 0.6), in the other they disagree (0.2, 0.6, 1.0). Only a bootstrap that draws seeds
    # can tell them apart.
    n, image = 300, np.arange(300) // 3
    y = np.zeros(n, dtype=int)
    rng = np.random.default_rng(1)

    def hits(share):
        return np.where(rng.permutation(n) < share * n, 0, 1)

    agree = [hits(0.6) for _ in range(3)]
    disagree = [hits(0.2), hits(0.6), hits(1.0)]
    for name in ("accuracy", "macro_f1"):
        lo_a, hi_a = cluster_bootstrap_ci(name, agree, y, image, n_boot=300)
        lo_d, hi_d = cluster_bootstrap_ci(name, disagree, y, image, n_boot=300)
        assert hi_d - lo_d > 3 * (hi_a - lo_a)
        assert lo_d < 0.45 and hi_d > 0.75  # the seeds' spread, not the items'
    # One image, one item per seed: the interval is the seeds' range.
    lo, hi = cluster_bootstrap_ci("accuracy", [np.array([0]), np.array([1])], np.array([0]), np.array([0]))
    assert (lo, hi) == (0.0, 1.0)


def test_bootstrap_clustering_widens_interval():
    # 10 images x 50 items; an image's items are all right or all wrong.
    y = np.zeros(500, dtype=int)
    image = np.repeat(np.arange(10), 50)
    pred = np.where(image % 2 == 0, 0, 1)
    lo_c, hi_c = cluster_bootstrap_ci("accuracy", [pred], y, image)
    lo_i, hi_i = cluster_bootstrap_ci("accuracy", [pred], y, _independent(500))
    # Expected widths: ~2*1.96*sqrt(.25/10) = 0.62 versus ~2*1.96*sqrt(.25/500) = 0.088.
    assert hi_c - lo_c > 0.45
    assert hi_i - lo_i < 0.12
    assert hi_c - lo_c > 4 * (hi_i - lo_i)


def test_bootstrap_matches_normal_approximation():
    y = np.zeros(400, dtype=int)
    pred = np.tile([0, 1], 200)  # accuracy 0.5
    lo, hi = cluster_bootstrap_ci("accuracy", [pred], y, _independent(400), n_boot=4000)
    half = 1.96 * np.sqrt(0.25 / 400)  # 0.049
    assert lo == pytest.approx(0.5 - half, abs=0.01)
    assert hi == pytest.approx(0.5 + half, abs=0.01)


def test_bootstrap_weights_items_not_clusters():
    # Cluster A: 1 correct item; cluster B: 3 wrong items. Drawing {A, B} gives
    # 1/4 of items right (a mean of cluster means would give 1/2). That draw has
    # probability 1/2, so the central 10% interval sits on 0.25.
    y = np.zeros(4, dtype=int)
    pred = np.array([0, 1, 1, 1])
    clusters = np.array([7, 3, 3, 3])
    lo, hi = cluster_bootstrap_ci("accuracy", [pred], y, clusters, level=0.1)
    assert (lo, hi) == (pytest.approx(0.25), pytest.approx(0.25))


def test_bootstrap_fast_path_equals_explicit_loop():
    rng = np.random.default_rng(3)
    n = 300
    clusters = rng.integers(0, 40, n)
    y = rng.integers(0, 3, n)
    preds = [np.where(rng.random(n) < 0.7, y, rng.integers(0, 3, n)) for _ in range(3)]
    fast = cluster_bootstrap_ci("accuracy", preds, y, clusters, n_boot=200, seed=5)
    loop = cluster_bootstrap_ci(accuracy, preds, y, clusters, n_boot=200, seed=5)
    np.testing.assert_allclose(fast, loop)

    boxes = rng.uniform(0, 50, (n, 2))
    tb = np.hstack([boxes, boxes + rng.uniform(5, 20, (n, 2))])
    pbs = [tb + rng.normal(0, 3, tb.shape) for _ in range(2)]
    for name in ("mean_iou", "acc_iou50"):
        fast = cluster_bootstrap_ci(name, pbs, tb, clusters, n_boot=200, seed=5)
        loop = cluster_bootstrap_ci(METRICS[name], pbs, tb, clusters, n_boot=200, seed=5)
        np.testing.assert_allclose(fast, loop)


def test_bootstrap_deterministic_and_contains_point():
    rng = np.random.default_rng(4)
    n = 600
    clusters = rng.integers(0, 120, n)
    y = rng.integers(0, 4, n)
    preds = [np.where(rng.random(n) < 0.6, y, rng.integers(0, 4, n)) for _ in range(3)]
    for name, n_boot in (("accuracy", 1000), ("macro_f1", 200)):
        a = cluster_bootstrap_ci(name, preds, y, clusters, n_boot=n_boot, seed=11)
        b = cluster_bootstrap_ci(name, preds, y, clusters, n_boot=n_boot, seed=11)
        c = cluster_bootstrap_ci(name, preds, y, clusters, n_boot=n_boot, seed=12)
        assert a == b
        assert a != c
        point = np.mean([METRICS[name](p, y) for p in preds])
        assert a[0] < point < a[1]
        assert a[1] - a[0] < 0.2


def test_bootstrap_rejects_bad_input():
    y = np.zeros(5, dtype=int)
    with pytest.raises(ValueError):
        cluster_bootstrap_ci("accuracy", [], y, np.arange(5))
    with pytest.raises(ValueError):
        cluster_bootstrap_ci("accuracy", [y[:4]], y, np.arange(5))
    with pytest.raises(ValueError):
        cluster_bootstrap_ci("accuracy", [y], y, np.arange(4))


# --- chance level -------------------------------------------------------------


def test_chance_level_majority_class():
    train = np.array([0, 1, 1, 2, 1])  # majority 1
    test = np.array([1, 1, 0, 2])
    assert chance_level("accuracy", train, test) == pytest.approx(0.5)
    # constant 1: class 0 -> 0, class 1: tp2 fp2 -> 2/3, class 2 -> 0
    assert chance_level("macro_f1", train, test) == pytest.approx(2 / 9)


def test_chance_level_tie_goes_to_smallest_label():
    assert chance_level("accuracy", np.array([2, 2, 1, 1]), np.array([1, 2])) == 0.5
    assert chance_level("accuracy", np.array([2, 2, 1, 1]), np.array([1, 1])) == 1.0


def test_chance_level_mean_box():
    train = np.array([[0.0, 0.0, 0.4, 0.4], [0.2, 0.2, 0.6, 0.6]])  # mean (.1, .1, .5, .5)
    test = np.array([[0.1, 0.1, 0.5, 0.5], [0.3, 0.1, 0.7, 0.5]])
    # second item: inter .2 * .4 = .08, union .16 + .16 - .08 = .24 -> 1/3
    assert chance_level("mean_iou", train, test) == pytest.approx((1 + 1 / 3) / 2)
    assert chance_level("acc_iou50", train, test) == pytest.approx(0.5)
    sizes = np.array([[640, 480], [100, 300]])
    assert chance_level("mean_iou", train, test, sizes) == pytest.approx((1 + 1 / 3) / 2)
    with pytest.raises(KeyError):
        chance_level("f2", train, test)
