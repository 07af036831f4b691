"""Nothing lost: a node dying mid-sweep and a killed driver, on a real two-node Ray cluster on
loopback, with the real CLI in a subprocess and a real MLflow sqlite store."""
import os
import signal
import subprocess
import sys
import time

import pytest

from loopback_cluster import LoopbackCluster, cluster_env
from raybench import tracking

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    c = LoopbackCluster(head_cpus=1, worker_cpus=1)
    yield c
    c.shutdown()


def sweep_cmd(cluster, tmp_path, demo_root, uri, *extra):
    return [sys.executable, "-m", "raybench.cli", "sweep", "demo", "--data-root", str(demo_root),
            "--method", "patchcore", "--categories", "stripes", "--trials", "4", "--budget", "smoke", "--tracking-uri", uri,
            "--storage", str(tmp_path / "ray"), "--address", cluster.address, "--sweep-id", "faults",
            "--set", "coreset_ratio=0.05", "--final-seeds", "0", "--val-mode", "real", *extra]


def runs_by_status(uri):
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("raybench-demo")
    if exp is None:
        return {}
    out = {}
    for run in c.search_runs([exp.experiment_id]):
        out.setdefault(run.info.status, []).append(run)
    return out


def wait_for_finished(uri, n, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sweep exited early with {proc.returncode}")
        try:
            if len(runs_by_status(uri).get("FINISHED", [])) >= n:
                return
        except Exception:
            pass  # the store is being created
        time.sleep(1)
    pytest.fail(f"no {n} finished run(s) within {timeout} s")


def test_a_dead_worker_node_loses_no_trial(cluster, tmp_path, demo_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(sweep_cmd(cluster, tmp_path, demo_root, uri), env=cluster_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_finished(uri, 1, proc)
    cluster.kill_worker()  # whatever ran there dies with it
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    status = runs_by_status(uri)
    assert len(status.get("FINISHED", [])) == 4, out[-3000:]
    assert set(status) == {"FINISHED"}  # one run per trial, none FAILED or RUNNING
    assert len({r.data.tags["trial_id"] for r in status["FINISHED"]}) == 4


def test_a_killed_driver_resumes_without_repeating_finished_trials(cluster, tmp_path, demo_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(sweep_cmd(cluster, tmp_path, demo_root, uri), env=cluster_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_finished(uri, 1, proc)
    time.sleep(2)  # let Tune snapshot its experiment state once more
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = {r.data.tags["trial_id"]: r.info.end_time for r in runs_by_status(uri).get("FINISHED", [])}
    assert 1 <= len(before) < 4

    done = subprocess.run(sweep_cmd(cluster, tmp_path, demo_root, uri, "--resume"), env=cluster_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    status = runs_by_status(uri)
    assert set(status) == {"FINISHED"} and len(status["FINISHED"]) == 4
    after = {r.data.tags["trial_id"]: r.info.end_time for r in status["FINISHED"]}
    assert len(after) == 4
    # the trials that had finished were not run again
    assert all(after[t] == before[t] for t in before if t in after)
    rows = tracking.leaderboard(uri, "demo")
    assert [(r.category, r.n_runs) for r in rows] == [("stripes", 4)]
