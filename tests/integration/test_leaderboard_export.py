"""`raybench leaderboard --format json|csv|table` on a real sqlite MLflow store: each chosen run's
bootstrap interval, the paired comparison with the category's best test figure (from the runs'
predictions.json artifacts), the final seeds' mean / std, strict JSON."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from raybench import cli, tracking
from raybench.evaluation.uncertainty import auroc_ci, paired_auroc_difference

N_POS, N_NEG = 30, 40
KEYS = {"dataset", "category", "method", "variant", "run_id", "val_image_auroc", "test_image_auroc",
        "test_image_auroc_ci", "default_test_image_auroc", "oracle_test_image_auroc", "tied_with_best", "n_val",
        "n_test", "val_mode", "complete", "seeds_mean", "seeds_std"}


def _log(uri, method, scores, labels, val=0.9, final=False, with_predictions=True, category="disc"):
    """A FINISHED run as the sweep's run logger leaves it: tags, test metrics with their interval,
    predictions.json (paths, labels, scores of the test images)."""
    c = tracking.client(uri)
    exp = tracking.ensure_experiment(uri, tracking.experiment_name("demo"))
    run_id = c.create_run(exp, tags={"dataset": "demo", "category": category, "method": method, "sweep_id": "s1",
                                     "budget": "smoke", "test_split_hash": "h", "checkpoint": "yes",
                                     **({"final": "yes"} if final else {})}).info.run_id
    low, high = auroc_ci(labels, scores)
    for name, value in (("val_image_auroc", val), ("val_pixel_auroc", 0.5), ("image_auroc", roc_auc_score(labels, scores)),
                        ("image_auroc_ci_low", low), ("image_auroc_ci_high", high), ("n_test_scored", len(labels))):
        c.log_metric(run_id, name, float(value))
    if with_predictions:
        paths = [f"test/{'bad' if y else 'good'}/{i:03d}.png" for i, y in enumerate(labels)]
        c.log_text(run_id, json.dumps({"test": {"paths": paths, "labels": [int(v) for v in labels],
                                                "scores": [float(v) for v in scores]}}), "predictions.json")
    c.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture
def store(tracking_uri):
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(N_POS), np.zeros(N_NEG)].astype(int)
    strong = rng.normal(size=labels.size) + 2.0 * labels
    close = strong + rng.normal(size=labels.size) * 0.15  # the same images, nearly the same scores
    weak = rng.normal(size=labels.size) + 0.3 * labels
    ids = {"patchcore": _log(tracking_uri, "patchcore", strong, labels, val=0.8),
           "rd": _log(tracking_uri, "rd", close, labels, val=0.95),  # validation's winner
           "cutpaste": _log(tracking_uri, "cutpaste", weak, labels, val=0.7),
           "cutswap": _log(tracking_uri, "cutswap", weak, labels, val=0.6, with_predictions=False)}
    for seed in range(2):  # final seeds of rd's chosen configuration
        _log(tracking_uri, "rd", close + rng.normal(size=labels.size) * 0.5, labels, final=True)
    return tracking_uri, ids, labels, strong, close, weak


def _json(uri, capsys):
    assert cli.main(["leaderboard", "demo", "--format", "json", "--tracking-uri", uri]) == 0
    return {r["method"]: r for r in json.loads(capsys.readouterr().out)}


def test_json_rows_carry_intervals_ties_and_seeds(store, capsys):
    uri, ids, labels, strong, close, weak = store
    rows = _json(uri, capsys)
    assert set(rows) == {"patchcore", "rd", "cutpaste", "cutswap"}
    for row in rows.values():
        assert KEYS <= set(row)
        low, high = row["test_image_auroc_ci"]
        assert low < row["test_image_auroc"] < high and high - low > 0.01
        assert row["n_test"] == N_POS + N_NEG and row["run_id"] == ids[row["method"]]
        assert row["default_test_image_auroc"] is None  # the protocol's fields: null until rows carry them
    best, tie, weak_row = rows["patchcore"], rows["rd"], rows["cutpaste"]
    assert best["test_image_auroc"] == pytest.approx(roc_auc_score(labels, strong))
    assert best["tied_with_best"] is True and best["test_image_auroc_best_minus_this_ci"] == [0.0, 0.0]
    # rd: the same images, nearly the same scores -> tied; its interval is the paired one, recomputed here
    _, low, high = paired_auroc_difference(labels, strong, close)
    assert tie["tied_with_best"] is True and tie["test_image_auroc_best_minus_this_ci"] == [
        pytest.approx(low), pytest.approx(high)] and low < 0 < high
    assert weak_row["tied_with_best"] is False and weak_row["test_image_auroc_best_minus_this_ci"][0] > 0
    assert rows["cutswap"]["tied_with_best"] is None  # no predictions.json: no verdict, never a guess
    assert tie["seeds_mean"] is not None and tie["seeds_std"] > 0 and tie["seeds_n"] == 2
    assert best["seeds_mean"] is None and best["seeds_std"] is None
    assert best["test_pixel_auroc_ci"] == [None, None]  # NaN -> null


def test_csv_and_table_show_the_same_rows(store, capsys):
    uri, ids, *_ = store
    assert cli.main(["leaderboard", "demo", "--format", "csv", "--tracking-uri", uri]) == 0
    lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {line["method"] for line in lines} == {"patchcore", "rd", "cutpaste", "cutswap"}
    rd = next(line for line in lines if line["method"] == "rd")
    assert float(rd["test_image_auroc_ci_low"]) < float(rd["test_image_auroc"]) < float(rd["test_image_auroc_ci_high"])
    assert rd["tied_with_best"] == "True" and rd["default_test_image_auroc"] == ""
    assert cli.main(["leaderboard", "demo", "--tracking-uri", uri]) == 0
    table = capsys.readouterr().out.splitlines()
    by_method = {m: next(line for line in table if f" {m} " in line) for m in ("patchcore", "rd", "cutpaste")}
    assert "≈" in by_method["rd"] and "≈" in by_method["patchcore"] and "≈" not in by_method["cutpaste"]
    assert "[0." in by_method["rd"]


def test_rows_on_other_images_are_not_compared(tracking_uri):
    labels = np.r_[np.ones(5), np.zeros(5)].astype(int)
    scores = np.linspace(0, 1, 10)
    _log(tracking_uri, "patchcore", scores, labels, category="disc")
    _log(tracking_uri, "patchcore", scores[::-1], labels, category="weave")  # another category: its own best
    rows = tracking.leaderboard(tracking_uri, "demo")
    assert [r.tied_with_best for r in rows] == [True, True]
    assert all(not math.isnan(r.test_image_auroc_ci_low) for r in rows)
