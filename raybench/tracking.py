"""MLflow: one experiment per dataset, one run per trial, the leaderboard and best-run queries.

Only the sweep's driver writes to MLflow (through `raybench.sweep.MLflowTrialLogger`): trials
never talk to the store, so a sqlite file works with many concurrent trials, and every run is
ended by one process that sees every trial's fate.
"""
from __future__ import annotations

import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from raybench.errors import TrackingError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow 3's UI opens an untyped experiment on its GenAI overview; this type opens the runs table
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
EXPERIMENT_PREFIX = "raybench-"
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_f1_max")  # on the test split
VAL_METRICS = tuple(f"val_{m}" for m in METRICS)  # on the validation split: the only ones that rank
THRESHOLDS = ("image_threshold", "pixel_threshold")  # validation's F1-max cuts; the Detector keeps them
RANK_BY = ("val_image_auroc", "val_pixel_auroc")


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def experiment_name(dataset: str, explicit: str | None = None) -> str:
    return explicit or f"{EXPERIMENT_PREFIX}{dataset}"


def client(uri: str | None = None):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=tracking_uri(uri))


def _local_artifact_root(uri: str) -> str | None:
    """For a sqlite/file store, artifacts go to ./mlartifacts beside it (a file:// URI); a
    tracking server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


def _check_sqlite_file(uri: str, db: Path) -> None:
    """Create (or open) the database file now: a folder can pass os.access and still refuse the
    file (a pseudo-filesystem, a read-only mount as root), and MLflow would retry for minutes."""
    import sqlite3
    try:
        with open(db, "ab"):
            pass
        conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=10)
        try:
            conn.execute("pragma schema_version").fetchone()  # fails unless it is a sqlite file
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as err:
        raise TrackingError(f"MLflow store {uri}: {db} cannot be created or opened as a sqlite file "
                            f"({type(err).__name__}: {err}); pass --tracking-uri sqlite:///WRITABLE/PATH/mlflow.db") from None


def require_existing_store(uri: str | None) -> str:
    """For read-only commands: a sqlite store that is not there is an error (opening it would
    create an empty mlflow.db and report 'no runs')."""
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser()
        if not db.is_file():
            raise TrackingError(f"MLflow store {uri}: {db.resolve()} does not exist (run `raybench sweep` "
                                f"first, or pass --tracking-uri / set MLFLOW_TRACKING_URI)")
    return uri


def check_tracking(uri: str, timeout_s: float = 10.0) -> None:
    """Refuse to start a sweep whose results could not be recorded."""
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):]).expanduser().resolve()
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: folder {db.parent} is not writable "
                                f"(pass --tracking-uri sqlite:///WRITABLE/PATH/mlflow.db)")
        _check_sqlite_file(uri, db)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as err:
        raise TrackingError(
            f"MLflow tracking server {uri} cannot be reached ({type(err).__name__}: {str(err)[:200]}). "
            f"Start it (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1`) "
            f"or pass --tracking-uri / set MLFLOW_TRACKING_URI.") from None


def ensure_experiment(uri: str, name: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            c.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_local_artifact_root(tracking_uri(uri)),
                                   tags=dict([EXPERIMENT_KIND]))
    except Exception:
        exp = c.get_experiment_by_name(name)  # created concurrently
        if exp is None:
            raise
        return exp.experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _raybench_experiments(c, dataset: str | None):
    if dataset:
        exp = c.get_experiment_by_name(experiment_name(dataset))
        return [exp] if exp else []
    return [e for e in c.search_experiments() if e.name.startswith(EXPERIMENT_PREFIX)]


def filter_literal(value: str) -> str | None:
    """A value as an MLflow filter literal: MLflow has no escape inside quotes, so a value with a
    single quote goes in double quotes and vice versa; one with both cannot be written (None)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def search_runs(c, experiment_ids: list[str], tags: dict, status: str | None = None,
                max_results: int | None = None) -> list:
    """Runs whose tags equal `tags` (any characters in the values: what a filter literal cannot
    hold is compared here instead), optionally with one status; every page."""
    clauses = [f"attributes.status = '{status}'"] if status else []
    by_hand = {}
    for key, value in tags.items():
        literal = filter_literal(value)
        if literal is None:
            by_hand[key] = str(value)
        else:
            clauses.append(f"tags.{key} = {literal}")
    runs, token = [], None
    while True:
        page = c.search_runs(experiment_ids, " and ".join(clauses), max_results=1000, page_token=token)
        runs += [r for r in page if all(r.data.tags.get(k) == v for k, v in by_hand.items())]
        token = page.token
        if not token or (max_results and len(runs) >= max_results):
            break
    return runs[:max_results] if max_results else runs


def _score(run, name: str) -> float:  # a missing or NaN metric ranks last
    value = run.data.metrics.get(name, -math.inf)
    return -math.inf if math.isnan(value) else value


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
        exps = _raybench_experiments(c, dataset)
    if not exps:
        return []
    tags = {k: v for k, v in (("category", category), ("method", method)) if v}
    runs = search_runs(c, [e.experiment_id for e in exps], tags, status="FINISHED")
    runs = [r for r in runs if RANK_BY[0] in r.data.metrics
            and (include_final or r.data.tags.get("final") != "yes")]
    return sorted(runs, key=lambda r: tuple(_score(r, m) for m in RANK_BY), reverse=True)


def sweep_split_hashes(uri: str, experiment_id: str, sweep_id: str) -> dict[str, str]:
    """category -> test_split_hash of the runs a sweep logged so far (a resume must match them)."""
    out = {}
    for run in search_runs(client(uri), [experiment_id], {"sweep_id": sweep_id}):  # quote-safe (o'clock)
        tags = run.data.tags
        if "test_split_hash" in tags:
            out.setdefault(tags.get("category", "?"), tags["test_split_hash"])
    return out


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


def format_leaderboard(rows: list[LeaderboardRow]) -> str:
    """Validation (what ranked) beside the chosen run's test figures, labelled; the final seeds'
    test mean +- std where the sweep ran them."""
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


def download_detector(run, uri: str | None = None, dst: str | None = None) -> Path:
    import mlflow.artifacts
    dst = dst or tempfile.mkdtemp(prefix="raybench-detector-")
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="detector",
                                               dst_path=dst, tracking_uri=tracking_uri(uri))
    return Path(path)
