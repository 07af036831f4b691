"""Metrics against hand-computed values."""
import numpy as np
import pytest

from raybench.evaluation.metrics import (aupro, f1_max, f1_max_threshold, image_auroc, pixel_auroc,
                              threshold_for_false_alarm_rate)


def test_image_auroc_counts_ordered_pairs():
    # anomalous {0.8, 0.4}, normal {0.1, 0.5}: pairs (a>n): 0.8>0.1, 0.8>0.5, 0.4>0.1 -> 3 of 4
    assert image_auroc([1, 1, 0, 0], [0.8, 0.4, 0.1, 0.5]) == pytest.approx(0.75)


def test_image_auroc_ties_count_half():
    assert image_auroc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)


def test_image_auroc_needs_both_classes():
    with pytest.raises(ValueError):
        image_auroc([0, 0], [0.1, 0.2])


def test_pixel_auroc_flattens_maps():
    masks = np.array([[[1, 0], [0, 0]]])
    maps = np.array([[[0.9, 0.2], [0.95, 0.1]]])
    # one positive (0.9) vs negatives 0.2, 0.95, 0.1 -> beats 2 of 3
    assert pixel_auroc(masks, maps) == pytest.approx(2 / 3)


def test_f1_max_hand_computed():
    # threshold 0.4 -> predict {0.9, 0.8(normal), 0.4}: tp=2, fp=1, fn=0 -> P=2/3, R=1, F1=0.8
    # threshold 0.9 -> tp=1, fp=0, fn=1 -> F1=2/3; best is 0.8
    assert f1_max([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1]) == pytest.approx(0.8)
    f1, threshold = f1_max_threshold([1, 0, 1, 0], [0.9, 0.8, 0.4, 0.1])
    # the best cut flags score >= 0.4; it lies midway to the next lower score, (0.4 + 0.1) / 2
    assert (f1, threshold) == (pytest.approx(0.8), pytest.approx(0.25))
    # perfect separation: midway between the highest normal and the lowest anomalous score
    assert f1_max_threshold([0, 1], [0.2, 0.7])[1] == pytest.approx(0.45)
    # nothing below the lowest flagged score: the cut sits just under it, still flagging it
    f1, cut = f1_max_threshold([1, 1, 0], [0.5, 0.5, 0.5])
    assert cut < 0.5 and cut == pytest.approx(0.5, rel=1e-5)
    assert np.isnan(f1_max_threshold([0, 0], [0.2, 0.7])[1])


def test_threshold_for_false_alarm_rate_hand_computed():
    scores = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    cut = threshold_for_false_alarm_rate(scores, 0.25)  # one of four may be flagged: 0.4, not 0.3
    assert 0.3 < cut <= 0.4 and (scores >= cut).sum() == 1
    assert (scores >= threshold_for_false_alarm_rate(scores, 0.0)).sum() == 0  # above the maximum
    tied = np.array([0.5, 0.5, 0.5, 0.1], np.float32)  # ties: flag none rather than three of four
    assert (tied >= threshold_for_false_alarm_rate(tied, 0.25)).sum() == 0
    with pytest.raises(ValueError, match="rate"):
        threshold_for_false_alarm_rate(scores, 1.0)


def test_aupro_perfect_and_inverted_maps():
    mask = np.zeros((1, 20, 20), np.uint8)
    mask[0, 5:10, 5:10] = 1
    assert aupro(mask, mask.astype(float)) == pytest.approx(1.0)
    assert aupro(mask, 1.0 - mask) == pytest.approx(0.0, abs=1e-6)


def test_aupro_averages_regions_not_pixels():
    # two regions: a large one fully detected, a small one missed -> PRO = 0.5 at low FPR,
    # whereas pixel recall would be 100/104
    mask = np.zeros((1, 30, 30), np.uint8)
    mask[0, 0:10, 0:10] = 1
    mask[0, 20:22, 20:22] = 1
    amap = np.zeros((1, 30, 30))
    amap[0, 0:10, 0:10] = 1.0
    assert aupro(mask, amap) == pytest.approx(0.5, abs=0.02)
