"""The learning-curve benchmark's statistics (raybench.bench.curve_summary) on hand-made scores."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from raybench.bench.curve_summary import (auroc_rows, format_pairs, paired_interval, paired_rows,
                                          validation_chosen)

LABELS = np.array([0, 0, 0, 1, 1])


def test_auroc_rows_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = np.tile([0, 0, 1, 1, 0, 1], (4, 1))
    scores = rng.integers(0, 3, size=labels.shape).astype(float)  # many ties
    expected = [roc_auc_score(l, s) for l, s in zip(labels, scores)]
    np.testing.assert_allclose(auroc_rows(labels, scores), expected)


def test_paired_interval_hand_computed_difference():
    # a ranks both anomalies above every normal: 1.0. b: anomaly 0.5 beats 0.1 and 0.4, loses to 0.6;
    # anomaly 0.2 beats 0.1 only -> 3 of 6 pairs = 0.5. Difference 0.5.
    a = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    b = np.array([0.1, 0.4, 0.6, 0.5, 0.2])
    diff, low, high = paired_interval(LABELS, [a], [b], n=0)
    assert diff == pytest.approx(0.5) and low is None and high is None


def test_paired_interval_of_a_scorer_with_itself_is_zero_and_tied():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 20)
    scores = rng.normal(size=40) + labels
    diff, low, high = paired_interval(labels, [scores], [scores], n=200)
    assert (diff, low, high) == (0.0, 0.0, 0.0)


def test_paired_interval_excludes_zero_for_a_clearly_better_scorer():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 40)
    good = labels * 3.0 + rng.normal(size=80)
    noise = rng.normal(size=80)
    diff, low, high = paired_interval(labels, [good, good + 0.01], [noise, noise[::-1]], n=500)
    assert 0 < low <= diff <= high
    assert "≈" not in format_pairs([{"coreset_ratio": 0.01, "recipe": "r", "epochs": 2,
                                      "cutswap-cutpaste": (diff, low, high)}])


def rows_for(epoch_scores: dict, seed=0, key="0.01"):
    """Learning-curve rows: patchcore at epoch 0, cutswap/cutpaste at the other epochs."""
    rows = [{"method": "patchcore", "recipe": "-", "epochs": 0, "seed": seed,
             "results": {key: {"scores": list(epoch_scores[0]), "image_auroc": 0.0}}}]
    for method in ("cutswap", "cutpaste"):
        for epochs, scores in epoch_scores.items():
            if epochs:
                rows.append({"method": method, "recipe": "preserve", "epochs": epochs, "seed": seed,
                             "results": {key: {"scores": list(scores), "image_auroc": 0.0}}})
    return rows


def test_paired_rows_pairs_the_same_seeds_and_marks_ties():
    perfect = np.array([0.0, 0.1, 0.2, 0.9, 1.0])
    rows = rows_for({0: perfect, 4: perfect})
    (entry,) = paired_rows(rows, LABELS, [0.01], n=100)
    assert entry["epochs"] == 4 and entry["cutswap-untuned"] == (0.0, 0.0, 0.0)
    assert "+0.000 [+0.000, +0.000] ≈" in format_pairs([entry])


def test_validation_chosen_keeps_the_untuned_trunk_when_tuning_hurts_on_validation():
    labels = np.repeat([0, 1], 10)
    untuned = labels + np.linspace(0, 0.5, 20)    # separates perfectly
    worse = -untuned                               # ranks everything backwards
    chosen, held = validation_chosen(rows_for({0: untuned, 2: worse}), labels, [0.01], val_share=0.5)
    tuned = [r for r in chosen if r["method"] == "cutswap"]
    assert tuned and all(r["results"]["0.01"]["chosen_epoch"] == 0 for r in tuned)
    assert held.sum() == 10 and all(r["results"]["0.01"]["image_auroc"] == 1.0 for r in tuned)
