"""Bootstrap intervals and the paired comparison against hand-computed values and an independent
plain-loop bootstrap (numpy's own resampling, sklearn's AUROC)."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from raybench.evaluation.uncertainty import (auroc_ci, binned_auroc, paired_auroc_difference, pixel_auroc_ci,
                                             pixel_histograms, stratified_counts, tied)


def _data(seed=1, n_pos=30, n_neg=40, shift=1.0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(int)
    return labels, rng.normal(size=labels.size) + shift * labels, rng


def _pairs_auroc(labels, scores):
    """AUROC as the share of (anomalous, normal) pairs ordered right, ties half: written out."""
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def _loop_bootstrap(labels, stat, n=2000, seed=123):
    """Stratified percentile bootstrap written out: resample each class's indices, AUROC by pairs."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    values = []
    for _ in range(n):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        values.append(stat(idx))
    return np.quantile(values, [0.025, 0.975])


def test_interval_matches_a_plain_loop_bootstrap_and_holds_its_point():
    labels, scores, _ = _data()
    point = roc_auc_score(labels, scores)
    low, high = auroc_ci(labels, scores, n_resamples=2000, seed=0)
    ref = _loop_bootstrap(labels, lambda i: _pairs_auroc(labels[i], scores[i]))
    assert low < point < high and high - low > 0.05
    assert (low, high) == (pytest.approx(ref[0], abs=0.02), pytest.approx(ref[1], abs=0.02))
    assert auroc_ci(labels, scores, seed=0) == auroc_ci(labels, scores, seed=0)  # seeded
    assert auroc_ci(labels, scores, seed=0) != auroc_ci(labels, scores, seed=1)


def test_hand_computed_degenerate_intervals():
    # one anomalous image, all scores tied: every resample gives AUROC 0.5 (ties count half)
    assert auroc_ci([1, 0, 0], [0.3, 0.3, 0.3]) == (pytest.approx(0.5), pytest.approx(0.5))
    # perfect separation: every resample separates perfectly too -> [1, 1]
    assert auroc_ci([1, 1, 0, 0, 0], [0.9, 0.8, 0.1, 0.2, 0.3]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="both"):
        auroc_ci([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="1,000"):
        auroc_ci([1, 0], [0.2, 0.1], n_resamples=100)


def test_stratified_counts_keep_each_class_size():
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    counts = stratified_counts(labels, 500, np.random.default_rng(0))
    assert counts.shape == (500, 7)
    assert (counts[:, labels == 1].sum(1) == 4).all() and (counts[:, labels == 0].sum(1) == 3).all()
    assert counts[:, labels == 1].std() > 0  # really resampled


def test_paired_difference_of_a_scorer_with_itself_is_exactly_zero():
    labels, scores, _ = _data()
    assert paired_auroc_difference(labels, scores, scores) == (0.0, 0.0, 0.0)
    assert tied(0.0, 0.0) and tied(-0.01, 0.02) and not tied(0.01, 0.05)


def test_paired_difference_matches_a_plain_loop_and_is_narrower_than_unpaired():
    labels, a, rng = _data(seed=2, n_pos=40, n_neg=60)
    b = a + rng.normal(size=a.size) * 0.4  # the same images, a noisier scorer
    diff, low, high = paired_auroc_difference(labels, a, b, seed=0)
    assert diff == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    ref = _loop_bootstrap(labels, lambda i: _pairs_auroc(labels[i], a[i]) - _pairs_auroc(labels[i], b[i]))
    assert (low, high) == (pytest.approx(ref[0], abs=0.015), pytest.approx(ref[1], abs=0.015))
    # pairing removes the images' shared difficulty: far narrower than the two intervals apart
    (la, ha), (lb, hb) = auroc_ci(labels, a), auroc_ci(labels, b)
    assert high - low < 0.6 * float(np.hypot(ha - la, hb - lb))


def test_paired_difference_separates_a_clearly_better_scorer():
    labels, a, rng = _data(seed=3, n_pos=40, n_neg=60, shift=2.0)
    worse = a * 0.2 + rng.normal(size=a.size)  # much weaker signal on the same images
    diff, low, high = paired_auroc_difference(labels, a, worse)
    assert diff > 0.1 and low > 0 and not tied(low, high)


def test_binned_auroc_hand_computed():
    # bins in order 0 < 1 < 2; positives in bins 1 and 2, negatives in bins 0 and 1:
    # bin-1 positive beats the bin-0 negative (1) and ties the bin-1 one (0.5); bin-2 beats both (2)
    assert binned_auroc(np.array([0, 1, 1]), np.array([1, 1, 0])) == pytest.approx(3.5 / 4)


def test_pixel_histograms_reproduce_the_exact_pixel_auroc_on_few_values():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 8, 8)) < 0.2
    maps = rng.integers(0, 5, (6, 8, 8)) + masks * 1  # 6 distinct values: the bins hold each one
    pos, neg = pixel_histograms(masks, maps, bins=64)
    assert pos.sum() == masks.sum() and neg.sum() == (~masks).sum()
    assert binned_auroc(pos.sum(0), neg.sum(0)) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))


def test_pixel_interval_holds_the_exact_pixel_auroc():
    labels, _, rng = _data(n_pos=20, n_neg=20)
    masks = (rng.random((40, 16, 16)) < 0.1) & (labels[:, None, None] == 1)
    maps = rng.normal(size=masks.shape) + masks
    low, high = pixel_auroc_ci(labels, masks, maps, seed=0)
    assert low < roc_auc_score(masks.ravel(), maps.ravel()) < high and high - low > 0.005
    assert pixel_auroc_ci(labels, masks, maps, seed=0) == (low, high)
    no_defect = pixel_auroc_ci(labels, np.zeros_like(masks), maps)
    assert np.isnan(no_defect).all()


def test_groups_average_their_aurocs_and_resample_apart():
    # two folds, each scored by its own model: the figure is the mean of the folds' AUROCs
    labels, scores, rng = _data(seed=4, n_pos=30, n_neg=40)
    groups = rng.permutation(np.r_[np.zeros(35), np.ones(35)]).astype(int)
    scores = scores + 3.0 * groups  # the second fold's model scores everything higher
    per_fold = [roc_auc_score(labels[groups == g], scores[groups == g]) for g in (0, 1)]
    low, high = auroc_ci(labels, scores, groups=groups, seed=0)
    assert low < np.mean(per_fold) < high
    rng2 = np.random.default_rng(7)
    strata = [np.flatnonzero((labels == y) & (groups == g)) for g in (0, 1) for y in (1, 0)]
    values = []
    for _ in range(2000):
        idx = [rng2.choice(s, s.size) for s in strata]
        values.append(np.mean([_pairs_auroc(labels[np.r_[idx[i], idx[i + 1]]], scores[np.r_[idx[i], idx[i + 1]]])
                               for i in (0, 2)]))
    ref = np.quantile(values, [0.025, 0.975])
    assert (low, high) == (pytest.approx(ref[0], abs=0.02), pytest.approx(ref[1], abs=0.02))
    diff, _, _ = paired_auroc_difference(labels, scores, scores[::-1], groups=groups)
    assert diff == pytest.approx(np.mean(per_fold) - np.mean(
        [roc_auc_score(labels[groups == g], scores[::-1][groups == g]) for g in (0, 1)]))
    with pytest.raises(ValueError, match="every group"):
        auroc_ci(labels, scores, groups=np.where(labels == 1, 0, 1))
