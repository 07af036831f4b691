"""Where to look in the MLflow UI: the command that serves a store and the URLs of a sweep's runs,
a run's artifacts. MLflow 3.17's UI keeps a global GenAI / model-training switch (GenAI unless the
URL says otherwise), so every URL here carries `workflowType=machine_learning` and opens on the
runs table, not the traces overview."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

LOOPBACK = "127.0.0.1"
DEFAULT_UI = f"http://{LOOPBACK}:5000"
DEFAULT_STORE = "sqlite:///mlflow.db"  # raybench.tracking.store.DEFAULT_TRACKING_URI
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
    return f"{shlex.quote(exe)} ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port 5000 --workers 1"


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


def compare_url(base: str, experiment_id: str, run_ids) -> str:
    """MLflow's compare-runs page: parameters and metrics of these runs side by side, no clicks."""
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    experiments = json.dumps([str(experiment_id)], separators=(",", ":"))
    return (f"{base}/#/compare-runs?runs={quote(runs, safe='')}&experiments={quote(experiments, safe='')}"
            f"&workflowType=machine_learning")


def where_to_look(uri: str, experiment_id: str, sweep_ids=(), winner_run_ids=(), dataset: str | None = None,
                  optuna_storage: str | None = None) -> str:
    """How to look at what a sweep did: `raybench ui` (a local store) or the server's URL, the
    sweeps' runs, the winners' compare page, each category's winner, the report and the Optuna
    dashboard."""
    base, command = ui_base(uri), ui_command(uri)
    flag = "" if uri == DEFAULT_STORE else f" --tracking-uri {shlex.quote(uri)}"
    lines = [f"Where to look:\n  raybench ui{flag}      serves the MLflow UI on {base}, then open" if command
             else f"Where to look (MLflow UI at {base}):"]
    for sweep_id in sweep_ids:
        lines.append(f"  this sweep's runs        {sweep_url(base, experiment_id, sweep_id)}")
    if winner_run_ids:
        lines.append(f"  the winners compared     {compare_url(base, experiment_id, winner_run_ids)}")
    lines.append(f"  each category's winner   {runs_url(base, experiment_id, WINNERS_FILTER)}")
    if dataset:
        lines.append(f"  one offline page:        raybench report {dataset}{flag} --out report.html")
    if optuna_storage:
        lines.append(f"  the Optuna searches:     optuna-dashboard {shlex.quote(optuna_storage)}")
    return "\n".join(lines)


def serve_ui(uri: str, port: int = 5000, log=print) -> int:
    """`raybench ui`: MLflow's UI for a local store on 127.0.0.1:`port` until Ctrl-C; a tracking
    server serves its own, so its address is printed instead. Returns the exit status."""
    import os
    import signal
    import subprocess
    command = ui_command(uri)
    if command is None:
        log(f"{uri} is a tracking server: its UI is at {ui_base(uri)}")
        return 0
    argv = shlex.split(command)
    argv[argv.index("--port") + 1] = str(port)
    log(f"MLflow UI for {uri} at http://{LOOPBACK}:{port}/#/?workflowType=machine_learning (Ctrl-C stops)")
    # its own process group: Ctrl-C here stops `mlflow ui` and its uvicorn worker together
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return 0
    if proc.returncode:
        log(f"mlflow ui stopped with status {proc.returncode}: {(err or '').strip().splitlines()[-1:] or ''}")
    return proc.returncode
