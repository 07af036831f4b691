"""tracking.comparison.mark_ties on hand-made rows and predictions (no store): the reference is
the best TEST figure on the same images, a cross-fitted row pools its folds' runs."""
import math

import numpy as np
import pytest

from raybench.evaluation.uncertainty import auroc_ci, paired_auroc_difference
from raybench.tracking import LeaderboardRow
from raybench.tracking.comparison import mark_ties


def _row(method, run_id, auroc, category="disc", val=0.9):
    return LeaderboardRow("demo", category, method, "", val, 0.5, auroc, 0.5, 0.3, 3, run_id)


def _pred(paths, labels, scores):
    return {p: (int(y), float(s)) for p, y, s in zip(paths, labels, scores)}


def test_cross_fitted_rows_pool_their_folds_and_pair_per_fold():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(20), np.zeros(20)].astype(int)
    folds = np.tile(["a", "b"], 20)
    paths = [f"test/{i:03d}.png" for i in range(40)]
    good = rng.normal(size=40) + 2 * labels + 5 * (folds == "b")  # fold b's model scores on another scale
    bad = rng.normal(size=40) + 0.2 * labels
    rows, predictions = [], {}
    for method, scores in (("patchcore", good), ("rd", bad)):
        per_fold = [float(np.mean([(scores[(labels == 1) & (folds == f)][:, None]
                                    > scores[(labels == 0) & (folds == f)][None]).mean()])) for f in ("a", "b")]
        row = _row(method, f"{method}-a", float(np.mean(per_fold)))
        row.run_ids, row.folds = (f"{method}-a", f"{method}-b"), ("a", "b")  # the protocol's fields
        rows.append(row)
        for f in ("a", "b"):  # the run chosen on fold f is tested on the other fold's images
            test = folds != f
            predictions[f"{method}-{f}"] = _pred(np.array(paths)[test], labels[test], scores[test])
    mark_ties(rows, predictions=predictions)
    best, other = rows
    order = sorted(paths)
    index = [paths.index(p) for p in order]
    group = ["b" if folds[i] == "a" else "a" for i in index]  # tested by the run chosen on the other fold
    assert (best.test_image_auroc_ci_low, best.test_image_auroc_ci_high) == pytest.approx(
        auroc_ci(labels[index], good[index], groups=group))
    assert best.test_image_auroc_ci_low < best.image_auroc < best.test_image_auroc_ci_high
    assert best.tied_with_best is True and other.tied_with_best is False
    _, low, high = paired_auroc_difference(labels[index], good[index], bad[index], groups=group)
    assert (other.vs_best_ci_low, other.vs_best_ci_high) == pytest.approx((low, high)) and low > 0
    assert math.isnan(best.test_pixel_auroc_ci_low)  # no pixel interval for pooled folds


def test_rows_without_predictions_or_on_other_images_get_no_verdict_from_others():
    labels = np.r_[np.ones(5), np.zeros(5)]
    rows = [_row("patchcore", "p", 0.9), _row("rd", "r", 0.8), _row("cutpaste", "c", 0.7)]
    predictions = {"p": _pred([f"x{i}" for i in range(10)], labels, np.arange(10)),
                   "r": _pred([f"y{i}" for i in range(10)], labels, np.arange(10)),  # other images
                   "c": None}
    mark_ties(rows, predictions=predictions)
    assert [r.tied_with_best for r in rows] == [True, True, None]  # each set of images has its own best
    predictions["r"] = {("x" + k[1:]): v for k, v in predictions["r"].items()}
    predictions["r"]["x0"] = (0, predictions["r"]["x0"][1])  # the same path, another label: an error
    with pytest.raises(ValueError, match="differently"):
        mark_ties(rows, predictions=predictions)
