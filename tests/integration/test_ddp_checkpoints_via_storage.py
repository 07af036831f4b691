"""A multi-worker trial keeps its result on a real two-node Ray cluster on loopback: rank 0's
checkpoint goes through the sweep's storage, never a temporary folder on rank 0's node (which
the trial could not read when rank 0 ran on another machine)."""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from loopback_cluster import LoopbackCluster, cluster_env
from raybench import tracking

pytestmark = pytest.mark.slow


def test_ddp_checkpoint_goes_through_the_sweep_storage(tmp_path, demo_root, monkeypatch):
    # every node's temporary folder is this one (short: Ray's socket paths live under it)
    node_tmp = Path(tempfile.mkdtemp(prefix="rbddp"))
    monkeypatch.setenv("TMPDIR", str(node_tmp))
    cluster = LoopbackCluster(head_cpus=1, worker_cpus=2)
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        cmd = [sys.executable, "-m", "raybench", "sweep", "demo", "--data-root", str(demo_root),
               "--categories", "stripes", "--method", "rd", "--trials", "1", "--budget", "smoke",
               "--set", "epochs1=1", "--workers", "2", "--cpus-per-trial", "2", "--no-register",
               "--final-seeds", "0",  # the demo preset's final seeds would add runs: one trial is the point
               "--val-mode", "real",  # crossfit (the default) runs a search per fold: two trials
               "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--address", cluster.address]
        out = subprocess.run(cmd, env=cluster_env(), capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finally:
        cluster.shutdown()
    leftovers = list(node_tmp.rglob("raybench-ddp-*"))
    shutil.rmtree(node_tmp, ignore_errors=True)
    (run,) = tracking.finished_runs(uri, "demo")
    assert run.data.metrics["workers"] == 2 and run.data.tags["checkpoint"] == "yes"
    assert not leftovers, f"the DDP checkpoint went to a node-local temporary folder: {leftovers}"
