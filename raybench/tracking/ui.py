"""Where to look in the MLflow UI: the command that serves a store and the URLs of a sweep's runs,
a run's artifacts. MLflow 3.17's UI keeps a global GenAI / model-training switch (GenAI unless the
URL says otherwise), so every URL here carries `workflowType=machine_learning` and opens on the
runs table, not the traces overview."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

DEFAULT_UI = "http://127.0.0.1:5000"
WINNERS_FILTER = "tags.winner = 'yes'"  # raybench.sweep.summary.WINNER_TAG


def ui_base(uri: str) -> str:
    """The UI's address: a tracking server serves it itself; a local store needs `mlflow ui`."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI


def ui_command(uri: str) -> str | None:
    """The command that serves a local store's UI (None for a tracking server, which serves it)."""
    if uri.startswith(("http://", "https://")):
        return None
    if uri.startswith("sqlite:///"):  # absolute, so it works from any folder
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    mlflow = Path(sys.executable).with_name("mlflow")
    exe = str(mlflow) if mlflow.exists() else "mlflow"
    return f"{shlex.quote(exe)} ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port 5000"


def runs_url(base: str, experiment_id: str, search_filter: str | None = None) -> str:
    """The runs table, best validation image AUROC first, the order the leaderboard ranks in (the
    UI cannot be told which columns to show: it keeps that per browser)."""
    params = {"workflowType": "machine_learning"}
    if search_filter:
        params["searchFilter"] = search_filter
    params.update(orderByKey="metrics.`val_image_auroc`", orderByAsc="false")
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(params, quote_via=quote)}"


def sweep_url(base: str, experiment_id: str, sweep_id: str) -> str:
    from raybench.tracking.store import filter_literal
    literal = filter_literal(sweep_id)  # an id with a quote goes in the other quotes; with both, no filter is possible
    return runs_url(base, experiment_id, f"tags.sweep_id = {literal}" if literal else None)


def run_url(base: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page; with `artifact` (e.g. figures/overlays.png) its artifacts tab with that file open."""
    tail = f"/artifacts/{artifact}" if artifact else ""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{tail}?workflowType=machine_learning"


def where_to_look(uri: str, experiment_id: str, sweep_ids=()) -> str:
    """How to open the UI on this experiment's runs: the command (local store), then the URLs of
    the given sweeps' runs and of each category's winner."""
    base, command = ui_base(uri), ui_command(uri)
    lines = [f"MLflow UI: serve this store with\n  {command}\nthen open" if command else "MLflow UI:"]
    for sweep_id in sweep_ids:
        lines.append(f"  sweep {sweep_id}  {sweep_url(base, experiment_id, sweep_id)}")
    lines.append(f"  each category's winner  {runs_url(base, experiment_id, WINNERS_FILTER)}")
    return "\n".join(lines)
