"""Which leaderboard rows are statistically tied with the best on test: a paired comparison of
the rows of one category on the same test images, from each chosen run's `predictions.json`.

The definition (docs/uncertainty.md): within a category, among the rows whose chosen runs scored
the identical set of test images, the reference is the row with the highest TEST image AUROC. A
row is `tied_with_best` when the paired bootstrap 95 % interval of AUROC(reference) - AUROC(row)
holds 0 (the reference row itself: True). This only describes test: the category's winner is still
the row validation ranks first, and nothing here feeds back into any choice. A row whose run kept
no predictions (logged before they existed) or scored other images has no verdict (None)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from raybench.evaluation.uncertainty import auroc_ci, paired_auroc_difference, tied
from raybench.tracking.store import client, tracking_uri

PREDICTIONS_FILE = "predictions.json"  # written by sweep.trial, logged by sweep.run_logger


def run_test_predictions(run_id: str, uri: str | None = None) -> dict | None:
    """path -> (label, score) of a run's test images, or None when the run has no predictions.json."""
    c = client(uri)
    if PREDICTIONS_FILE not in {a.path for a in c.list_artifacts(run_id)}:
        return None
    import mlflow.artifacts
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small file per row
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PREDICTIONS_FILE, dst_path=tmp,
                                                   tracking_uri=tracking_uri(uri))
        test = json.loads(Path(path).read_text())["test"]
    return {p: (label, score) for p, label, score in zip(test["paths"], test["labels"], test["scores"])}


def _usable(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def row_runs(row) -> tuple:
    """The runs whose test images make a row's TEST figure: a cross-fitted row has one per fold
    (`run_ids`, its figure the mean of the folds' AUROCs); otherwise the chosen run alone."""
    return tuple(getattr(row, "run_ids", ()) or ()) or (row.run_id,)


def _row_images(row, predictions: dict) -> dict | None:
    """path -> (label, score, group) over the row's runs (group: the fold whose model scored it)."""
    runs, folds = row_runs(row), tuple(getattr(row, "folds", ()) or ())
    out = {}
    for i, run_id in enumerate(runs):
        pred = predictions.get(run_id)
        if pred is None:
            return None
        group = folds[i] if len(folds) == len(runs) else str(i)
        out.update({p: (label, score, group) for p, (label, score) in pred.items()})
    return out


def mark_ties(rows, uri: str | None = None, predictions: dict | None = None) -> None:
    """Set each row's `tied_with_best` and `vs_best_ci_low/high` (the paired interval of the
    reference's AUROC minus this row's) in place; a row of several runs (cross-fitted folds) gets
    its test interval from their pooled predictions here (stratified by fold and label; no pixel
    interval). `predictions`: run_id -> run_test_predictions(...), read from the store when not given."""
    if predictions is None:
        predictions = {run_id: run_test_predictions(run_id, uri) for r in rows for run_id in row_runs(r)}
    images = {r.run_id: _row_images(r, predictions) for r in rows}
    groups: dict[tuple, list] = {}
    for row in rows:
        mine = images[row.run_id]
        if mine is None or not _usable(row.image_auroc):
            continue  # no verdict: the row keeps None
        if len(row_runs(row)) > 1:
            order = sorted(mine)
            row.test_image_auroc_ci_low, row.test_image_auroc_ci_high = auroc_ci(
                [mine[p][0] for p in order], [mine[p][1] for p in order], groups=[mine[p][2] for p in order])
            row.test_pixel_auroc_ci_low = row.test_pixel_auroc_ci_high = math.nan
        groups.setdefault((row.dataset, row.category, frozenset(mine)), []).append(row)
    for (_, _, paths), members in groups.items():
        best = max(members, key=lambda r: r.image_auroc)
        order = sorted(paths)
        ref = images[best.run_id]
        labels, folds = [ref[p][0] for p in order], [ref[p][2] for p in order]
        for row in members:
            mine = images[row.run_id]
            if [mine[p][0] for p in order] != labels or [mine[p][2] for p in order] != folds:
                raise ValueError(f"{row.category}: runs {best.run_id} and {row.run_id} label or fold the same "
                                 f"test images differently")
            if row is best:
                row.tied_with_best, row.vs_best_ci_low, row.vs_best_ci_high = True, 0.0, 0.0
                continue
            _, low, high = paired_auroc_difference(labels, [ref[p][1] for p in order], [mine[p][1] for p in order],
                                                   groups=folds)
            row.tied_with_best, row.vs_best_ci_low, row.vs_best_ci_high = tied(low, high), low, high
