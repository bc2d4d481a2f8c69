import numpy as np
import pytest

from spatialbench.stats.bootstrap import Resampling, holm


def test_holm_matches_a_hand_computed_case():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> 0.06 (running maximum).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2]
    assert holm([]) == []


def test_replicates_weight_items_draw_images_and_pick_seeds():
    clusters = np.array([0, 0, 1])
    r = Resampling(clusters, n_boot=400, seed=0)
    assert r.counts.sum(axis=1).tolist() == [2.0] * 400  # two images drawn per replicate
    one_seed = r.means(np.array([1.0, 1.0, 0.0]))
    # Image 0 holds two items: drawing {0, 1} gives 2/3, {0, 0} 1, {1, 1} 0.
    assert set(np.round(one_seed, 6)) <= {0.0, round(2 / 3, 6), 1.0}
    two_seeds = r.means(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert set(np.round(two_seeds, 6)) == {0.0, 0.5, 1.0}  # only the seeds vary
    with pytest.raises(ValueError):
        r.means(np.ones(4))
