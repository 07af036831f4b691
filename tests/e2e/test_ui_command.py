"""Issue 21: `raybench ui` serves the MLflow UI for a sweep's store on loopback and prints its
URL; Ctrl-C stops it (and the `mlflow ui` it started) with exit 0."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from net import free_port
from raybench import tracking

pytestmark = pytest.mark.slow


def test_raybench_ui_serves_the_store_on_loopback_and_stops_on_ctrl_c(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_experiment(uri, "raybench-demo")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "raybench", "ui", "--tracking-uri", uri, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"MLflow UI for {uri} at http://127.0.0.1:{port}/"), first
        deadline, answer = time.monotonic() + 240, None
        while time.monotonic() < deadline and answer is None:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search",
                                      params={"max_results": 10}, timeout=30)
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting
                time.sleep(1)
        assert answer is not None and answer.status_code == 200, answer
        assert "raybench-demo" in answer.text  # the sweep's store, not another
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest[-2000:]
    with pytest.raises(requests.ConnectionError):  # mlflow ui went with it
        requests.get(f"http://127.0.0.1:{port}/", timeout=5)
