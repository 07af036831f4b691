"""The sweep as a whole, from the driver, once at its end: each category's winner tagged (a tag
the MLflow UI filters on: `tags.winner = "yes"`), and one summary run per sweep holding its charts:
the leaderboard (categories x methods) and, per category, Optuna's optimisation history and
parameter importances, rebuilt from the trials Tune ran. Summary runs live in a sibling
experiment (`<experiment>-sweeps`), so the dataset's experiment holds exactly one run per trial."""
from __future__ import annotations

import math

from raybench import tracking
from raybench.reporting import figures
from raybench.sweep.category_search import METRIC, MODE

WINNER_TAG = "winner"  # "yes" on the run best_model(category) loads; moved when a later sweep wins
SUMMARY_TAG = "sweep_summary"  # "yes" on a sweep's summary run (no metrics: never on a leaderboard)
SUMMARY_DIR = "sweep"


def summary_experiment(experiment_name: str) -> str:
    return f"{experiment_name}-sweeps"


def recent_sweep_ids(uri: str, experiment_name: str, since_ms: int) -> list[str]:
    """The sweeps summarised since `since_ms` (epoch ms), oldest first: what one command ran."""
    c = tracking.client(uri)
    exp = c.get_experiment_by_name(summary_experiment(experiment_name))
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], f"attributes.start_time >= {int(since_ms)}",
                         order_by=["attributes.start_time ASC"])
    # one command sweeps several methods under one sweep id (one leaderboard): each id once
    return list(dict.fromkeys(r.data.tags["sweep_id"] for r in runs if "sweep_id" in r.data.tags))


def category_studies(results, space, metric: str = METRIC, mode: str = MODE) -> dict:
    """One in-memory Optuna study per category from (config, metrics) pairs in the order the trials
    ran: the sampled parameters (the search space's names) and the metric, or a failed trial."""
    import optuna
    studies: dict[str, optuna.Study] = {}
    for config, metrics in results:
        category = config.get("category")
        if category is None:
            continue
        if category not in studies:
            studies[category] = optuna.create_study(study_name=category,
                                                     direction="maximize" if mode == "max" else "minimize")
        params = {k: config[k] for k in space.distributions if k in config}
        # the objective Optuna was told (tracking.objective, computed from the validation metrics)
        value = tracking.objective(metrics or {}) if metric == tracking.OBJECTIVE else (metrics or {}).get(metric)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        studies[category].add_trial(optuna.trial.create_trial(
            params=params, distributions={k: space.distributions[k] for k in params},
            value=float(value) if finite else None,
            state=optuna.trial.TrialState.COMPLETE if finite else optuna.trial.TrialState.FAIL))
    return studies


def mark_winners(uri: str, experiment_id: str, rows) -> dict:
    """Tag `winner=yes` on each category's chosen run (tracking.chosen_run: the run best_model
    loads and the registry's champion) for the categories of `rows`; the tag leaves that category's
    other runs only (other categories keep theirs). (dataset, category) -> the winning run id."""
    c = tracking.client(uri)
    name = c.get_experiment(experiment_id).name
    best = {}
    for dataset, category in sorted({(r.dataset, r.category) for r in rows}):
        run = tracking.chosen_run(uri, dataset, category, experiment=name)
        if run is None:
            continue
        best[(dataset, category)] = run.info.run_id
        for old in tracking.search_runs(c, [experiment_id], {WINNER_TAG: "yes", "category": category}):
            if old.info.run_id != run.info.run_id:  # beaten since: one winner per category
                c.delete_tag(old.info.run_id, WINNER_TAG)
        c.set_tag(run.info.run_id, WINNER_TAG, "yes")
    return best


def _summary_run(c, experiment_id: str, tags: dict) -> str:
    """One summary run per (sweep id, method): the methods of one command share the sweep id."""
    found = tracking.search_runs(c, [experiment_id], {"sweep_id": tags["sweep_id"], SUMMARY_TAG: "yes",
                                                      "method": tags.get("method", "?")}, max_results=1)
    if found:  # a resumed sweep updates its summary
        return found[0].info.run_id
    name = f"sweep-{tags.get('method', '?')}-{tags['sweep_id']}"
    return c.create_run(experiment_id, tags={"method": "?", **tags, SUMMARY_TAG: "yes",
                                             "mlflow.runName": name}).info.run_id


def log_sweep_summary(uri: str, experiment_name: str, tags: dict, results, space, rows) -> str:
    """The summary run of this sweep (found again on resume) in `<experiment_name>-sweeps`, its
    charts as artifacts under `sweep/`; returns its run id. `rows`: the experiment's leaderboard
    (every method so far)."""
    c = tracking.client(uri)
    run_id = _summary_run(c, tracking.ensure_experiment(uri, summary_experiment(experiment_name)), tags)
    charts = {f"{SUMMARY_DIR}/leaderboard.png": figures.leaderboard_figure(tags.get("dataset", ""), rows)}
    for category, study in category_studies(results, space).items():
        for name, fig in figures.study_figures(study, title=f"{category} {tags.get('method', '')}",
                                                      metric_label="validation objective").items():
            charts[f"{SUMMARY_DIR}/{category}/{name}.png"] = fig  # crossfit: both folds' trials
    plt = figures._plt()
    for path, fig in charts.items():
        c.log_figure(run_id, fig, path)
        plt.close(fig)
    c.set_terminated(run_id, "FINISHED")
    return run_id


def summarise_sweep(uri: str, experiment_id: str, experiment_name: str, tags: dict, result_grid, space, rows,
                    log=print) -> None:
    """The end-of-sweep call: winners tagged, charts logged. The trials are recorded already, so a
    failure here is reported and leaves the sweep's outcome standing."""
    try:
        best = mark_winners(uri, experiment_id, rows)
        results = [(r.config or {}, r.metrics or {}) for r in result_grid]
        run_id = log_sweep_summary(uri, experiment_name, tags, results, space, rows)
    except Exception as err:  # noqa: BLE001 - said out loud, not swallowed
        log(f"WARNING: sweep charts / winner tags not recorded ({type(err).__name__}: {err})")
        return
    log(f"winners tagged ({WINNER_TAG}=yes) for {len(best)} categor{'y' if len(best) == 1 else 'ies'}; "
        f"sweep charts in MLflow experiment {summary_experiment(experiment_name)!r}, run {run_id}")
