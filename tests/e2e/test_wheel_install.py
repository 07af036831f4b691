"""The package as users deploy it: a wheel built from the repository, installed outside the
checkout, finds its search spaces and runs `python -m raybench`: methods, a tiny demo sweep that
registers its best run, and `serve` answering for that category."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from net import free_port

REPO = Path(__file__).resolve().parents[2]
# what setuptools needs to build (the cluster YAMLs mount the same files)
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "raybench", "search_spaces")


def _run(cmd, cwd, env, timeout=300):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_built_wheel_runs_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # a copy: building in place would leave build/ and egg-info in the repo
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAYBENCH_SEARCH_SPACES")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(tmp_path / "dist"), str(src)], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("raybench-*.whl")
    site = tmp_path / "site"  # the shared venv's packages supply the dependencies
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
         tmp_path, env)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    # a private TMPDIR: a plain ray.init() (the sweep without --address) joins the cluster named in
    # $TMPDIR/ray/ray_current_cluster, which another `ray start` on this machine may have left (short:
    # Ray's socket paths live under it)
    ray_tmp = tempfile.mkdtemp(prefix="rbwhl")
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path / "home"), RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1",
               TMPDIR=ray_tmp)
    try:
        _run_installed(site, outside, env, tmp_path)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _run_installed(site: Path, outside: Path, env: dict, tmp_path: Path) -> None:
    where = _run([sys.executable, "-c", "import raybench, raybench.sweep.search_space as s; "
                  "print(raybench.__file__); print(s.default_path('siamese-unet'))"], outside, env).split()
    assert Path(where[0]).is_relative_to(site), f"imported {where[0]}, not the installed wheel"
    assert Path(where[1]).is_relative_to(site) and Path(where[1]).is_file(), where[1]
    shipped = {p.name for p in (site / "raybench" / "search_spaces").glob("*.yaml")}
    assert shipped == {p.name for p in (REPO / "search_spaces").glob("*.yaml")}

    assert "siamese-unet:" in _run([sys.executable, "-m", "raybench", "methods"], outside, env)
    out = _run([sys.executable, "-m", "raybench", "sweep", "demo", "--method", "patchcore", "--budget", "smoke", "--trials", "1",
                "--categories", "disc", "--val-mode", "real", "--tracking-uri", f"sqlite:///{outside / 'mlflow.db'}",
                "--storage", str(outside / "ray")], outside, env, timeout=600)
    assert "[1/1] disc patchcore: image AUROC" in out, out
    assert "raybench-demo-disc v1 @champion" in out, out  # the sweep registered its best run

    # `raybench serve` from the wheel answers for the category the sweep registered
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as sink:  # a file, not a pipe nobody drains while the server runs
        server = subprocess.Popen([sys.executable, "-m", "raybench", "serve", "--port", str(port), "--cpus-per-replica",
                                   "0.5", "--tracking-uri", f"sqlite:///{outside / 'mlflow.db'}"],
                                  cwd=outside, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        image = next((tmp_path / "home").glob(".cache/raybench/demo-*/disc/test/good/*.png")).read_bytes()
        answer = _post_until_up(f"http://127.0.0.1:{port}/demo/disc", image, server, log)
        assert answer["model"] == "raybench-demo-disc" and answer["verdict"] in ("normal", "anomalous"), answer
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: serve shuts down, Ray with it
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()



def _post_until_up(url: str, body: bytes, server: subprocess.Popen, log: Path, timeout_s: float = 300) -> dict:
    import requests
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"raybench serve exited {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            r = requests.post(url, data=body, timeout=30)
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(2)
    raise AssertionError(f"{url} did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")
