"""The MLflow store: addresses, checks, experiments, quote-safe run queries, artifacts.

Only the sweep's driver writes to MLflow (through `raybench.sweep.run_logger.MLflowTrialLogger`): trials
never talk to the store, so a sqlite file works with many concurrent trials, and every run is
ended by one process that sees every trial's fate.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from raybench.errors import TrackingError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow 3's UI opens an untyped experiment on its GenAI overview; this type opens the runs table
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
EXPERIMENT_PREFIX = "raybench-"
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "pixel_f1_max")  # on the test split
VAL_METRICS = tuple(f"val_{m}" for m in METRICS)  # on the validation split: the only ones that rank
THRESHOLDS = ("image_threshold", "pixel_threshold")  # validation's F1-max cuts; the Detector keeps them


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


def raybench_experiments(c, dataset: str | None):
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


def sweep_split_hashes(uri: str, experiment_id: str, sweep_id: str) -> dict[str, str]:
    """category -> split group (crossfit: both folds; else the test split hash) of the runs a sweep
    logged so far (a resume must match them)."""
    out = {}
    for run in search_runs(client(uri), [experiment_id], {"sweep_id": sweep_id}):  # quote-safe (o'clock)
        tags = run.data.tags
        group = tags.get("split_group") or tags.get("test_split_hash")
        if group:
            out.setdefault(tags.get("category", "?"), group)
    return out


def download_detector(run, uri: str | None = None, dst: str | None = None) -> Path:
    import mlflow.artifacts
    dst = dst or tempfile.mkdtemp(prefix="raybench-detector-")
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="detector",
                                               dst_path=dst, tracking_uri=tracking_uri(uri))
    return Path(path)
