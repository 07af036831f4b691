"""The leaderboard for scripts: rows as plain dicts, JSON (a list of rows; NaN is null) and CSV
(one column per value; an interval as its _low / _high columns).

`raybench leaderboard DATASET --format json|csv`. Keys (docs/uncertainty.md explains the figures):
what ranked (`val_*`), the chosen run's test figures with their 95 % bootstrap intervals,
`tied_with_best`, the final seeds' `seeds_mean` / `seeds_std` (null where none ran), and the
protocol's fields (`default_test_image_auroc`, `oracle_test_image_auroc`, `n_val`, `val_mode`,
`complete`, `tie_broken_by`): null where the rows do not carry them."""
from __future__ import annotations

import csv
import io
import json
import math

# what a row may carry from the validation protocol; absent from older rows: null
PROTOCOL_FIELDS = ("default_test_image_auroc", "oracle_test_image_auroc", "n_val", "val_mode", "complete",
                   "tie_broken_by")


def _clean(value):
    """JSON-safe: NaN and infinities become None, numpy scalars plain Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def row_dict(row) -> dict:
    """One leaderboard row as the JSON / CSV exports give it."""
    seeds = bool(getattr(row, "final_n", 0))
    out = {
        "dataset": row.dataset, "category": row.category, "method": row.method, "variant": row.variant,
        "run_id": row.run_id, "run_name": row.run_name, "sweep_id": row.sweep_id,
        "val_image_auroc": row.val_image_auroc, "val_pixel_auroc": row.val_pixel_auroc,
        "test_image_auroc": row.image_auroc,
        "test_image_auroc_ci": [row.test_image_auroc_ci_low, row.test_image_auroc_ci_high],
        "test_pixel_auroc": row.pixel_auroc,
        "test_pixel_auroc_ci": [row.test_pixel_auroc_ci_low, row.test_pixel_auroc_ci_high],
        "test_aupro": row.aupro,
        "tied_with_best": row.tied_with_best,
        "test_image_auroc_best_minus_this_ci": [row.vs_best_ci_low, row.vs_best_ci_high],
        "n_test": row.n_test, "n_runs": row.n_runs,
        "seeds_n": row.final_n,
        "seeds_mean": row.final_image_auroc_mean if seeds else None,
        "seeds_std": row.final_image_auroc_std if seeds else None,
        "seeds_pixel_mean": row.final_pixel_auroc_mean if seeds else None,
        "seeds_pixel_std": row.final_pixel_auroc_std if seeds else None,
        "budget": row.budget, "weights": row.weights, "image_size": row.image_size,
        "eval_resolution": row.eval_resolution,
    }
    out.update({name: getattr(row, name, None) for name in PROTOCOL_FIELDS})
    return {k: _clean(v) for k, v in out.items()}


def to_json(rows) -> str:
    """A list of row dicts; strict JSON (no NaN)."""
    return json.dumps([row_dict(r) for r in rows], indent=2, allow_nan=False)


def to_csv(rows) -> str:
    """One line per row; an interval [low, high] as two columns <name>_low, <name>_high; null empty."""
    flat = []
    for r in rows:
        line = {}
        for key, value in row_dict(r).items():
            if isinstance(value, list):
                line[f"{key}_low"], line[f"{key}_high"] = value
            else:
                line[key] = value
        flat.append(line)
    buffer = io.StringIO()
    if flat:
        writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
    return buffer.getvalue()
