"""The leaderboard: the one ranking rule (validation decides; test never ranks), the run each
row chooses, the winners per category, and the table that prints them.

Everything that asks "which run?" — the leaderboard, `raybench.best_model`, the registry's
`champion`, the winner tags, the final seeds and the report — asks `rank_key` and `chosen_run`."""
from __future__ import annotations

import math
from dataclasses import dataclass

from raybench.tracking.comparison import mark_ties
from raybench.tracking.compact import format_compact, tie_line
from raybench.tracking.store import raybench_experiments, client, search_runs
from raybench.tracking.sweeps import is_complete, latest_sweep_id, pick_sweeps  # noqa: F401 (latest_sweep_id: API)

RANK_BY = ("val_image_auroc", "val_pixel_auroc")
# The one validation criterion: Optuna's objective and ASHA's metric (sweep.category_search.METRIC,
# logged as `val_objective`) and the ranking rule of every "which run?" (rank_key), so search and
# selection agree. Image AUROC dominates; a small weight of pixel AUROC keeps the objective from
# going flat at 1.000 and breaks ties in image AUROC (docs/protocol.md, "Ties").
OBJECTIVE = "val_objective"
PIXEL_WEIGHT = 0.01
TIE_BREAKER = "val_pixel_auroc"  # what breaks a tie in val_image_auroc (then: the earliest run)
_TIED = 1e-9


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else math.nan


def objective(metrics: dict) -> float:
    """val_image_auroc + PIXEL_WEIGHT * val_pixel_auroc (a category without masks: + 0); NaN when
    validation image AUROC is missing. More than 0.01 of image AUROC outweighs any pixel difference."""
    image, pixel = _number(metrics.get(RANK_BY[0])), _number(metrics.get(RANK_BY[1]))
    return image + PIXEL_WEIGHT * (0.0 if math.isnan(pixel) else pixel)


def rank_key(metrics: dict) -> tuple:
    """The one ranking rule: `objective` (validation image AUROC, pixel AUROC at a small weight);
    a missing or NaN figure ranks last. Higher is better."""
    value = objective(metrics)
    return (-math.inf if math.isnan(value) else value,)


def tie_report(ranked_metrics: list[dict]) -> tuple[int, str]:
    """(how many runs share the best val_image_auroc, what broke the tie): "" (no tie),
    TIE_BREAKER, or "earliest run" (pixel AUROC tied too). `ranked_metrics`: best first by rank_key."""
    if not ranked_metrics:
        return 0, ""
    best = _number(ranked_metrics[0].get(RANK_BY[0]))
    tied = [m for m in ranked_metrics if abs(_number(m.get(RANK_BY[0])) - best) <= _TIED]
    if len(tied) < 2:
        return len(tied), ""
    pixels = [_number(m.get(RANK_BY[1])) for m in tied]
    broke = not math.isnan(pixels[0]) and all(math.isnan(p) or pixels[0] - p > _TIED for p in pixels[1:])
    return len(tied), TIE_BREAKER if broke else "earliest run"


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
    """THE chosen run, the one definition: the row `leaderboard` shows for the category (its latest
    complete sweep holding that category, and method if given; comparable runs only), the best of
    those rows by `rank_key` (`winners`). What `raybench.best_model` loads, the registry's `champion`
    and the `winner` tag. None when no FINISHED search run kept a checkpoint."""
    rows = [r for r in leaderboard(uri, dataset, experiment, category=category, method=method) if r.category == category]
    if not rows:
        return None
    best = max(winners(rows).values(), key=_row_key)
    return client(uri).get_run(best.run_id)


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
    # the chosen run's 95 % bootstrap intervals over test images (evaluation.uncertainty)
    test_image_auroc_ci_low: float = math.nan
    test_image_auroc_ci_high: float = math.nan
    test_pixel_auroc_ci_low: float = math.nan
    test_pixel_auroc_ci_high: float = math.nan
    # paired with the category's best TEST image AUROC on the same images (tracking.comparison);
    # None: no verdict (no per-image predictions, or other images)
    tied_with_best: bool | None = None
    vs_best_ci_low: float = math.nan  # interval of AUROC(best) - AUROC(this row)
    vs_best_ci_high: float = math.nan


    # the protocol (docs/protocol.md): what tuning bought, what selecting on test would print,
    # how much data each side had, whether the sweep completed and how a tie on validation was broken
    default_test_image_auroc: float = math.nan  # the method's default configuration (first trial)
    oracle_test_image_auroc: float = math.nan  # the best test figure any trial reached: selecting on test
    n_val: int = 0  # validation images the deployed choice was made on
    val_mode: str = ""
    complete: bool = True
    tie_broken_by: str = ""  # "" (no tie), TIE_BREAKER or "earliest run"
    val_tied: int = 1  # runs sharing the best validation image AUROC (crossfit: the larger fold)
    select: str = "category"  # per-category tuning, or one configuration for the dataset
    run_ids: tuple = ()  # the chosen run of each fold (crossfit: a, b), run_id among them
    folds: tuple = ()  # their folds ("" outside crossfit)
    trial_ids: tuple = ()  # their Tune trial ids (the final seeds retrain these configurations)
    official_test: bool = False  # TEST covers the whole official test split (comparable with papers)


def _group_key(run) -> tuple:
    """Runs compared in one row: same data, method, variant, budget, weights, size, protocol and
    test images (crossfit: both folds together), and the same selection (per category / dataset)."""
    t, p = run.data.tags, run.data.params
    return (t.get("dataset", "?"), t.get("category", "?"), t.get("method", "?"), t.get("variant", ""),
            t.get("budget", ""), p.get("weights", ""), p.get("image_size", ""), p.get("val_mode", ""),
            t.get("split_group") or t.get("test_split_hash", ""), t.get("select", "category"))


def _fold(run) -> str:
    return run.data.params.get("fold", "")


def _official_test(params: dict, folds: int) -> bool:
    """Whether a row's TEST covers the whole official test split: crossfit with both folds reported,
    or synthetic validation, and no few-shot pool set aside (docs/protocol.md)."""
    mode, pool = params.get("val_mode", ""), params.get("few_shot_pool", "")
    return pool == "0" and (mode == "synthetic" or (mode == "crossfit" and folds == 2))


def _order(runs) -> list:
    """Best first by rank_key; among equals, the run that started first."""
    return sorted(runs, key=lambda r: (rank_key(r.data.metrics), -(r.info.start_time or 0)), reverse=True)


def _row_key(row) -> tuple:
    return rank_key({"val_image_auroc": row.val_image_auroc, "val_pixel_auroc": row.val_pixel_auroc})


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
        if k not in best or _row_key(row) > _row_key(best[k]):
            best[k] = row
    return best


def _finite_mean(values) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _dataset_choices(runs) -> dict:
    """--select dataset: (group key less category, sweep, fold) -> the config_id whose runs kept a
    checkpoint in every category of that group and have the best mean `objective` over them."""
    table: dict[tuple, dict] = {}
    for r in runs:
        if r.data.tags.get("select") != "dataset" or r.data.tags.get("final") == "yes":
            continue
        k = _group_key(r)
        family = (k[0], *k[2:], r.data.tags.get("sweep_id", ""), _fold(r))
        cell = table.setdefault(family, {"categories": set(), "configs": {}})
        cell["categories"].add(k[1])
        if r.data.tags.get("checkpoint") == "yes":
            cell["configs"].setdefault(r.data.tags.get("config_id", ""), {})[k[1]] = r
    choices = {}
    for family, cell in table.items():
        full = {cid: members for cid, members in cell["configs"].items() if set(members) == cell["categories"]}
        if full:
            choices[family] = max(full, key=lambda cid: (_finite_mean(
                [objective(m.data.metrics) for m in full[cid].values()]),
                -min(m.info.start_time or 0 for m in full[cid].values())))
    return choices


def _fold_choice(runs, choices: dict) -> tuple:
    """(chosen run or None, default run or None, oracle test figure, ties, what broke them) of one fold."""
    ranked = _order([r for r in runs if r.data.tags.get("checkpoint") == "yes"])
    if ranked and ranked[0].data.tags.get("select") == "dataset":
        r0 = ranked[0]
        family = (_group_key(r0)[0], *_group_key(r0)[2:], r0.data.tags.get("sweep_id", ""), _fold(r0))
        ranked = [r for r in ranked if r.data.tags.get("config_id") == choices.get(family)]
        tied, broke = len(ranked), ""
    else:
        tied, broke = tie_report([r.data.metrics for r in ranked])
    defaults = [r for r in runs if r.data.tags.get("default_config") == "yes" and "image_auroc" in r.data.metrics]
    tests = [r.data.metrics.get("image_auroc", math.nan) for r in runs]
    oracle = max((v for v in tests if not math.isnan(v)), default=math.nan)
    return (ranked[0] if ranked else None), (defaults[0] if defaults else None), oracle, tied, broke


def leaderboard(uri: str | None = None, dataset: str | None = None, experiment: str | None = None,
                sweep_id: str | None = None, all_sweeps: bool = False, category: str | None = None,
                method: str | None = None) -> list[LeaderboardRow]:
    """Per (dataset, category, method, variant) and comparable setting (`_group_key`): the run
    chosen on validation by `rank_key` among FINISHED runs that kept a checkpoint (a run without
    one is never chosen), with its test figures. Crossfit: one choice per fold, each reported on
    the other fold; the row's figures are the mean of the two (docs/protocol.md). One sweep by
    default: per dataset its latest complete sweep (`sweeps.pick_sweeps`; `sweep_id` for another,
    `all_sweeps` for every one). Runs tagged `final` never compete: they give the mean and std of
    test over the retrained chosen configuration. The result is a list with `.notes` (what is not shown)."""
    runs = finished_runs(uri, dataset, category, method, experiment=experiment, include_final=True)
    runs, notes = pick_sweeps(runs, sweep_id, all_sweeps)
    choices = _dataset_choices(runs)
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    rows = Leaderboard(notes=notes)
    for key, members in groups.items():
        search = [r for r in members if r.data.tags.get("final") != "yes"]
        finals = [r for r in members if r.data.tags.get("final") == "yes"]
        per_fold = [_fold_choice([r for r in search if _fold(r) == f], choices)
                    for f in sorted({_fold(r) for r in search})]
        chosen = [c[0] for c in per_fold if c[0] is not None]
        if not chosen:
            continue  # no run kept a checkpoint: nothing to choose
        best = _order(chosen)[0]  # the one deployed (best_model, champion, winner)
        t, p = best.data.tags, best.data.params

        def mean(name, of=chosen):
            return _finite_mean([r.data.metrics.get(name, math.nan) for r in of])
        defaults = [c[1] for c in per_fold]
        img = _mean_std([r.data.metrics.get("image_auroc", math.nan) for r in finals])
        pix = _mean_std([r.data.metrics.get("pixel_auroc", math.nan) for r in finals])
        eval_res = best.data.metrics.get("eval_resolution")
        tied = max(per_fold, key=lambda c: c[3])
        rows.append(LeaderboardRow(
            *key[:4], mean("val_image_auroc"), mean("val_pixel_auroc"), mean("image_auroc"), mean("pixel_auroc"),
            mean("aupro"), len(search), best.info.run_id, best.info.run_name or "", t.get("sweep_id", ""),
            t.get("budget", ""), p.get("weights", ""), p.get("image_size", ""),
            "" if eval_res is None else f"{eval_res:g}",
            int(sum(r.data.metrics.get("n_test_scored", 0) for r in chosen)), len(finals), *img, *pix,
            default_test_image_auroc=mean("image_auroc", defaults) if all(defaults) else math.nan,
            oracle_test_image_auroc=_finite_mean([c[2] for c in per_fold if c[0] is not None]),
            n_val=int(best.data.metrics.get("n_val_scored", 0)), val_mode=p.get("val_mode", ""),
            complete=all(is_complete(r) for r in members), tie_broken_by=tied[4], val_tied=max(tied[3], 1),
            select=t.get("select", "category"), run_ids=tuple(r.info.run_id for r in chosen),
            folds=tuple(_fold(r) for r in chosen), trial_ids=tuple(r.data.tags.get("trial_id", "") for r in chosen),
            official_test=_official_test(p, len({_fold(r) for r in chosen})),
            test_image_auroc_ci_low=best.data.metrics.get("image_auroc_ci_low", math.nan),
            test_image_auroc_ci_high=best.data.metrics.get("image_auroc_ci_high", math.nan),
            test_pixel_auroc_ci_low=best.data.metrics.get("pixel_auroc_ci_low", math.nan),
            test_pixel_auroc_ci_high=best.data.metrics.get("pixel_auroc_ci_high", math.nan)))
    mark_ties(rows, uri)
    rows.sort(key=lambda r: (r.dataset, r.category, -r.val_image_auroc))
    return rows


class Leaderboard(list):
    """Leaderboard rows (a list), plus `notes`: sweeps not shown and why."""

    def __init__(self, rows=(), notes=()):
        super().__init__(rows)
        self.notes = list(notes)


def _f(x: float, width: int) -> str:
    return f"{'-':>{width}}" if math.isnan(x) else f"{x:>{width}.4f}"


def _ci(low: float, high: float) -> str:
    return "" if math.isnan(low) or math.isnan(high) else f"[{low:.3f},{high:.3f}]"


def format_leaderboard(rows: list[LeaderboardRow], wide: bool = False) -> str:
    """Without `wide`: 100 columns (tracking.compact). With it, every column: validation (what
    ranked) beside the chosen run's test figures, labelled, with test image AUROC's 95 % interval
    and ≈ on rows tied with the category's best test figure; what the default configuration and
    selecting on test (oracle) would have printed; the final seeds' test mean +- std where the sweep
    ran them; then the ties on validation and how they were broken."""
    if not wide:
        return format_compact(rows, winners(rows))
    notes = [f"note: {n}" for n in getattr(rows, "notes", [])]
    if not rows:
        return "\n".join(["(no finished runs)"] + notes)
    head = (f"{'dataset':<10} {'category':<14} {'method':<24} {'VAL img':>7} {'VAL pix':>7} | "
            f"{'TEST img':>8}  {'95% CI':<13} {'TEST pix':>8} {'AUPRO':>6} | {'DEFAULT':>7} {'ORACLE':>7} | {'TEST img, final seeds':>21} | "
            f"{'runs':>4} {'budget':<7} {'weights':<8} {'size/eval':>9} {'val':<8} {'n_val':>5} {'n_test':>6}  run")
    lines = ["ranked by VAL (validation split); TEST = the chosen run on the untouched test split (crossfit: "
             "each fold's choice on the other fold, mean of the two); DEFAULT = the method's default "
             "configuration on test; ORACLE = the best test figure of any trial (what selecting on test "
             "would print); 95% CI = bootstrap over test images; ≈ = tied with the category's best TEST img "
             "(paired bootstrap)", head, "-" * len(head)]
    ties = []
    for r in rows:
        method = f"{r.method} ({r.variant})" if r.variant else r.method
        final = f"{r.final_image_auroc_mean:.4f} ± {r.final_image_auroc_std:.4f} (n={r.final_n})" if r.final_n else "-"
        weights = r.weights if len(r.weights) <= 8 else "…" + r.weights[-7:]
        val = r.val_mode + ("" if r.select == "category" else "/ds") + ("" if r.complete else "!")
        lines.append(f"{r.dataset:<10} {r.category:<14} {method:<24} {_f(r.val_image_auroc, 7)} "
                     f"{_f(r.val_pixel_auroc, 7)} | {_f(r.image_auroc, 8)}{'≈' if r.tied_with_best else ' '} "
                     f"{_ci(r.test_image_auroc_ci_low, r.test_image_auroc_ci_high):<13} {_f(r.pixel_auroc, 8)} "
                     f"{_f(r.aupro, 6)} | {_f(r.default_test_image_auroc, 7)} {_f(r.oracle_test_image_auroc, 7)} | "
                     f"{final:>21} | {r.n_runs:>4} {r.budget:<7} {weights:<8} "
                     f"{r.image_size + '/' + r.eval_resolution:>9} {val:<8} {r.n_val:>5} {r.n_test:>6}  {r.run_name}")
        if r.tie_broken_by:
            ties.append(tie_line(r))
    if any(r.select == "dataset" for r in rows):
        notes.append("val .../ds: one configuration for every category (--select dataset), chosen by mean VAL")
    if not all(r.complete for r in rows):
        notes.append("val ...!: the sweep did not complete")
    return "\n".join(lines + ties + notes)
