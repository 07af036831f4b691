"""SIGTERM (systemd, `timeout`, Kubernetes, `docker stop`) against real `raybench` processes: a sweep
stops as Ctrl-C stops it (runs marked, the resume command printed, exit 143, no Ray process left);
`raybench serve` finishes the requests it took, then exits 0 with nothing left behind."""
from __future__ import annotations

import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from raybench import tracking
from raybench.delivery import registry
from raybench.sweep.run_logger import INTERRUPTED

from conftest import make_mvtec_category
from hostile import raw_exchange
from net import free_port
from tracked_runs import log_detector_run, tiny_patchcore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def world():
    """A short temp root (Ray's socket paths must stay short) whose TMPDIR only this test's
    processes have: every Ray process it starts carries it in its environment."""
    root = Path(tempfile.mkdtemp(prefix="rbs"))
    (root / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env.update(TMPDIR=str(root / "tmp"), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    yield root, env
    for pid in processes_of(root):  # never leave one behind, even when the test failed
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(root, ignore_errors=True)


def processes_of(root: Path) -> list[int]:
    """Processes whose environment holds this test's TMPDIR (its raybench, Ray and their workers)."""
    marker, found = f"TMPDIR={root / 'tmp'}".encode(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def none_left(root: Path, within_s: float = 20) -> list[int]:
    deadline = time.time() + within_s
    while time.time() < deadline and processes_of(root):
        time.sleep(0.5)
    return processes_of(root)


def test_sigterm_stops_a_sweep_as_ctrl_c_does(world):
    root, env = world
    make_mvtec_category(root / "data", "widget", n_train=6, n_good=3, n_bad=3, size=(40, 48))
    uri, sweep_id = f"sqlite:///{root / 'mlflow.db'}", "term"
    args = [sys.executable, "-m", "raybench", "sweep", "folder", "--data-root", str(root / "data"),
            "--categories", "widget", "--tracking-uri", uri, "--storage", str(root / "ray"), "--method", "patchcore",
            "--budget", "smoke", "--weights", "random", "--set", "batch_size=4", "--trials", "3",
            "--max-concurrent", "1", "--sweep-id", sweep_id, "--no-figures",
            # a tiny category: the signal is the point here, not validation that can rank trials
            "--val-mode", "real", "--val-normals", "0", "--accept-weak-validation"]

    def runs():
        c = tracking.client(uri)
        exp = c.get_experiment_by_name("raybench-folder")
        return [] if exp is None else tracking.search_runs(c, [exp.experiment_id], {"sweep_id": sweep_id})

    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not any(x.startswith("[1/3]") for x in lines):
        time.sleep(0.2)  # the first trial's line: it ended, the next one runs
    assert proc.poll() is None, "the sweep ended before it could be stopped: " + "".join(lines)[-2000:]
    proc.send_signal(signal.SIGTERM)  # to the driver alone, as systemd (KillMode=mixed), docker and Kubernetes do
    err = proc.stderr.read()
    proc.wait(timeout=300)
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 143, (out + err)[-3000:]
    assert f"--resume --sweep-id {shlex.quote(sweep_id)}" in err and "SIGTERM" in err, err[-2000:]
    done = runs()
    assert done and "RUNNING" not in {r.info.status for r in done}
    assert all(r.data.tags.get("error") == INTERRUPTED for r in done if r.info.status == "FAILED")
    assert 1 <= sum(r.info.status == "FINISHED" for r in done) < 3
    assert not none_left(root), "Ray processes outlived the sweep"


def test_sigterm_drains_serve_and_leaves_nothing(world):
    root, env = world
    uri = f"sqlite:///{root / 'mlflow.db'}"
    log_detector_run(uri, tiny_patchcore(seed=2, image_threshold=1.0), "demo", "disc", 0.9)
    registry.register("demo", uri=uri)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "raybench", "serve", "--port", str(port), "--tracking-uri", uri,
                             "--cpus-per-replica", "0.5"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/demo/disc"
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((1500, 2000, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    big = buf.getvalue()  # a few hundred ms to decode and score: in flight when SIGTERM comes
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if requests.post(url, data=big, timeout=30).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail("serve did not answer in 180 s")
        # Serve's own proxy stops reading a chunked body past the limit (64 MiB): without
        # raybench's ProxyBodyLimit it took in 128 of 150 MiB before the replica's 413 came back
        piece = b"\0" * (1 << 20)
        status, answer, sent = raw_exchange(port, b"POST /demo/disc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                                                  b"chunked\r\n\r\n", (b"%x\r\n%s\r\n" % (len(piece), piece)
                                                                            for _ in range(150)))
        assert status == 413 and b"over the limit" in answer and sent < 100 << 20, (status, answer, sent >> 20)
        with ThreadPoolExecutor(3) as pool:
            inflight = [pool.submit(requests.post, url, data=big, timeout=60) for _ in range(3)]
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in inflight]
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text[:200] for a in answers]
    assert proc.returncode == 0 and "SIGTERM: draining" in out and "stopped" in out, out[-3000:]
    assert not none_left(root), "Ray processes outlived serve"
