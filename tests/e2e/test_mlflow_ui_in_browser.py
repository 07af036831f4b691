"""The MLflow UI as a person sees it: a real `mlflow server` on loopback, pages rendered by
headless Chromium (Debian's `chromium`; CI installs it, elsewhere the test skips and says why),
assertions on the DOM it builds."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import running_mlflow_server
from raybench.reporting import figures
from raybench import tracking
from raybench.tracking import ui
from raybench.cli import main
from unit.test_figures import _toy  # tests/ is on sys.path (rootdir conftest)

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("RAYBENCH_CHROMIUM", "/usr/bin/chromium")


def dump_dom(url: str, profile: Path) -> str:
    """The DOM after the page's scripts ran (virtual time lets the app's requests finish)."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to check the UI")
    tmp = tmp_path_factory.mktemp("ui")
    with running_mlflow_server(tmp) as uri:
        yield uri, tmp


def _trial_run(c, exp_id, sweep_id, name, tmp, image_auroc):
    """A run as MLflowTrialLogger leaves it: tags, validation (what ranks) and test metrics, the
    figures the trial rendered."""
    run_id = c.create_run(exp_id, tags={"dataset": "demo", "category": "disc", "method": "patchcore",
                                        "sweep_id": sweep_id, "checkpoint": "yes", "budget": "smoke",
                                        "test_split_hash": "h", "mlflow.runName": name}).info.run_id
    for prefix in ("val_", ""):
        c.log_metric(run_id, f"{prefix}image_auroc", image_auroc)
        c.log_metric(run_id, f"{prefix}pixel_auroc", 0.5)
    figures.render_trial(tmp / name, *_toy(size=24), 0.5, 0.4, title=name)
    c.log_artifacts(run_id, str(tmp / name), figures.FIGURES_DIR)
    c.set_terminated(run_id, "FINISHED")
    return run_id


def test_run_page_lists_and_shows_the_overlay_and_the_sweep_link_opens_its_runs(mlflow_server):
    uri, tmp = mlflow_server
    exp_id = tracking.ensure_experiment(uri, "raybench-demo")
    c = tracking.client(uri)
    ours = _trial_run(c, exp_id, "sweep-a", "disc-patchcore-ours", tmp, 0.9)
    _trial_run(c, exp_id, "sweep-b", "disc-patchcore-other", tmp, 0.8)

    run_page = dump_dom(ui.run_url(uri, exp_id, ours, f"{figures.FIGURES_DIR}/{figures.OVERLAYS}"), tmp / "p1")
    for name in (figures.OVERLAYS, figures.CURVES, figures.HISTOGRAM):  # the artifact tree lists them
        assert name in run_page, name
    assert f'alt="{figures.FIGURES_DIR}/{figures.OVERLAYS}"' in run_page  # and previews the overlay

    # the link the sweep prints opens the runs table (not MLflow 3's GenAI overview) on this sweep only
    runs_page = dump_dom(ui.sweep_url(uri, exp_id, "sweep-a"), tmp / "p2")
    assert "disc-patchcore-ours" in runs_page and "disc-patchcore-other" not in runs_page
    assert "Token Usage" not in runs_page


def test_report_opens_from_a_file_with_no_server(mlflow_server, tmp_path):
    uri, tmp = mlflow_server
    out = tmp_path / "report.html"
    assert main(["report", "demo", "--tracking-uri", uri, "--out", str(out)]) == 0
    page = dump_dom(out.as_uri(), tmp_path / "p3")
    assert "raybench: demo" in page and page.count("data:image/png;base64,") >= 4
