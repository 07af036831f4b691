"""The leaderboard: the one ranking rule (validation decides; test never ranks), the run each
row chooses, the winners per category, and the table that prints them.

Everything that asks "which run?" — the leaderboard, `raybench.best_model`, the registry's
`champion`, the winner tags, the final seeds and the report — asks `rank_key` and `chosen_run`."""
from __future__ import annotations

import math
from dataclasses import dataclass

from raybench.tracking.store import raybench_experiments, client, search_runs

RANK_BY = ("val_image_auroc", "val_pixel_auroc")


def rank_key(metrics: dict) -> tuple:
    """The one ranking rule: validation image AUROC, then validation pixel AUROC breaks ties; a
    missing or NaN figure ranks last. Higher is better."""
    out = []
    for name in RANK_BY:
        value = metrics.get(name)
        out.append(value if isinstance(value, (int, float)) and not math.isnan(value) else -math.inf)
    return tuple(out)


def finished_runs(uri: str | None = None, dataset: str | None = None, category: str | None = None,
                  method: str | None = None, experiment: str | None = None, include_final: bool = False) -> list:
    """FINISHED runs scored on validation, best first: validation image AUROC, then validation
    pixel AUROC breaks ties. Test metrics never rank (runs from before validation existed are left out).
    `--final-seeds` retrainings (tag final=yes) only report the chosen configuration's spread: they
    are left out unless `include_final`, so best_model and the registry load the run the leaderboard chose."""
    c = client(uri)
    if experiment:
        exp = c.get_experiment_by_name(experiment)
        exps = [exp] if exp else []
    else:
        exps = raybench_experiments(c, dataset)
    if not exps:
        return []
    tags = {k: v for k, v in (("category", category), ("method", method)) if v}
    runs = search_runs(c, [e.experiment_id for e in exps], tags, status="FINISHED")
    runs = [r for r in runs if RANK_BY[0] in r.data.metrics
            and (include_final or r.data.tags.get("final") != "yes")]
    return sorted(runs, key=lambda r: rank_key(r.data.metrics), reverse=True)


def chosen_run(uri: str | None, dataset: str | None, category: str, method: str | None = None,
               experiment: str | None = None):
    """The run `raybench.best_model(category, dataset, method)` loads and the registry registers:
    the best by `rank_key` among FINISHED search runs that kept a checkpoint; None if there is none."""
    runs = [r for r in finished_runs(uri, dataset, category, method, experiment=experiment)
            if r.data.tags.get("checkpoint") == "yes"]
    return runs[0] if runs else None


@dataclass
class LeaderboardRow:
    dataset: str
    category: str
    method: str
    variant: str  # e.g. siamese-unet's real / synthetic anomalies: separate rows
    val_image_auroc: float  # what chose the run
    val_pixel_auroc: float
    image_auroc: float  # the chosen run's test figures
    pixel_auroc: float
    aupro: float
    n_runs: int  # search runs of the group (finals not counted)
    run_id: str
    run_name: str = ""
    sweep_id: str = ""
    budget: str = ""
    weights: str = ""
    image_size: str = ""
    eval_resolution: str = ""
    n_test: int = 0
    # --final-seeds: the chosen configuration retrained with new seeds, test mean / std over them
    final_n: int = 0
    final_image_auroc_mean: float = math.nan
    final_image_auroc_std: float = math.nan
    final_pixel_auroc_mean: float = math.nan
    final_pixel_auroc_std: float = math.nan


def latest_sweep_id(runs) -> str | None:
    runs = [r for r in runs if r.data.tags.get("sweep_id")]
    return max(runs, key=lambda r: r.info.start_time or 0).data.tags["sweep_id"] if runs else None


def _group_key(run) -> tuple:
    """Runs compared in one row: same data, method, variant, budget, weights, size and test split."""
    t, p = run.data.tags, run.data.params
    return (t.get("dataset", "?"), t.get("category", "?"), t.get("method", "?"), t.get("variant", ""),
            t.get("budget", ""), p.get("weights", ""), p.get("image_size", ""), t.get("test_split_hash", ""))


def _mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def method_label(row) -> str:
    """The method as the leaderboard prints it: a variant (siamese-unet real / synthetic) is its own row."""
    return f"{row.method} ({row.variant})" if getattr(row, "variant", "") else row.method


def winners(rows) -> dict:
    """(dataset, category) -> the row `best_model` would load: the best by `rank_key` over methods."""
    best = {}
    for row in rows:
        k = (row.dataset, row.category)
        key = rank_key({"val_image_auroc": row.val_image_auroc, "val_pixel_auroc": row.val_pixel_auroc})
        if k not in best or key > best[k][0]:
            best[k] = (key, row)
    return {k: row for k, (_, row) in best.items()}


def leaderboard(uri: str | None = None, dataset: str | None = None, experiment: str | None = None,
                sweep_id: str | None = None, all_sweeps: bool = False) -> list[LeaderboardRow]:
    """Per (dataset, category, method, variant) and comparable setting: the run with the best
    validation image AUROC among FINISHED runs that kept a checkpoint (the run `best_model` would
    load), with its test figures. One sweep by default (`sweep_id`, else the latest); every sweep
    with `all_sweeps`. Runs tagged `final` (--final-seeds) never compete: they give the mean and
    std of test over the retrained chosen configuration."""
    runs = finished_runs(uri, dataset, experiment=experiment, include_final=True)  # best first
    if not all_sweeps:
        sweep_id = sweep_id or latest_sweep_id(runs)
        runs = [r for r in runs if r.data.tags.get("sweep_id") == sweep_id]
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    rows = []
    for key, members in groups.items():
        search = [r for r in members if r.data.tags.get("final") != "yes"]
        finals = [r for r in members if r.data.tags.get("final") == "yes"]
        if not search:
            continue
        with_model = [r for r in search if r.data.tags.get("checkpoint") == "yes"]
        best = (with_model or search)[0]
        m, t, p = best.data.metrics, best.data.tags, best.data.params
        img = _mean_std([r.data.metrics.get("image_auroc", math.nan) for r in finals])
        pix = _mean_std([r.data.metrics.get("pixel_auroc", math.nan) for r in finals])
        eval_res = m.get("eval_resolution")
        rows.append(LeaderboardRow(
            *key[:4], m.get("val_image_auroc", math.nan), m.get("val_pixel_auroc", math.nan),
            m.get("image_auroc", math.nan), m.get("pixel_auroc", math.nan), m.get("aupro", math.nan),
            len(search), best.info.run_id, best.info.run_name or "", t.get("sweep_id", ""), t.get("budget", ""),
            p.get("weights", ""), p.get("image_size", ""), "" if eval_res is None else f"{eval_res:g}",
            int(m.get("n_test_scored", 0)), len(finals), *img, *pix))
    return sorted(rows, key=lambda r: (r.dataset, r.category, -r.val_image_auroc))


def _f(x: float, width: int) -> str:
    return f"{'-':>{width}}" if math.isnan(x) else f"{x:>{width}.4f}"


def format_leaderboard(rows: list[LeaderboardRow], wide: bool = False) -> str:
    """Validation (what ranked) beside the chosen run's test figures, labelled; the final seeds'
    test mean +- std where the sweep ran them. Without `wide`: 100 columns (tracking.compact)."""
    if not wide:
        from raybench.tracking.compact import format_compact
        return format_compact(rows, winners(rows))
    if not rows:
        return "(no finished runs)"
    head = (f"{'dataset':<10} {'category':<14} {'method':<24} {'VAL img':>7} {'VAL pix':>7} | "
            f"{'TEST img':>8} {'TEST pix':>8} {'AUPRO':>6} | {'TEST img, final seeds':>21} | "
            f"{'runs':>4} {'budget':<7} {'weights':<8} {'size/eval':>9} {'n_test':>6}  run")
    lines = ["ranked by VAL (validation split); TEST = the chosen run on the untouched test split", head,
             "-" * len(head)]
    for r in rows:
        method = f"{r.method} ({r.variant})" if r.variant else r.method
        final = f"{r.final_image_auroc_mean:.4f} ± {r.final_image_auroc_std:.4f} (n={r.final_n})" if r.final_n else "-"
        weights = r.weights if len(r.weights) <= 8 else "…" + r.weights[-7:]
        lines.append(f"{r.dataset:<10} {r.category:<14} {method:<24} {_f(r.val_image_auroc, 7)} "
                     f"{_f(r.val_pixel_auroc, 7)} | {_f(r.image_auroc, 8)} {_f(r.pixel_auroc, 8)} "
                     f"{_f(r.aupro, 6)} | {final:>21} | {r.n_runs:>4} {r.budget:<7} {weights:<8} "
                     f"{r.image_size + '/' + r.eval_resolution:>9} {r.n_test:>6}  {r.run_name}")
    return "\n".join(lines)


