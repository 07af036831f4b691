"""Shared fixtures: tiny datasets written in the real folder layouts, a real local Ray, a real
MLflow sqlite store. Everything small so the suite runs on 2 cores."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from net import free_port

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def make_mvtec_category(root: Path, name: str = "widget", n_train: int = 6, n_good: int = 3,
                        n_bad: int = 3, size=(40, 48), gray: bool = False, seed: int = 0) -> Path:
    """A category in MVTec AD layout with smooth normal images and bright-square defects."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = root / name

    def normal():
        img = (rng.normal(120, 8, (h, w) if gray else (h, w, 3))).clip(0, 255).astype(np.uint8)
        return img

    for i in range(n_train):
        save_png(base / "train" / "good" / f"{i:03d}.png", normal())
    for i in range(n_good):
        save_png(base / "test" / "good" / f"{i:03d}.png", normal())
    for i in range(n_bad):
        img, mask = normal(), np.zeros((h, w), np.uint8)
        y, x = rng.integers(5, h - 15), rng.integers(5, w - 15)
        img[y:y + 8, x:x + 8] = 250
        mask[y:y + 8, x:x + 8] = 255
        save_png(base / "test" / "scratch" / f"{i:03d}.png", img)
        save_png(base / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mask)
    return base


@pytest.fixture
def mvtec_root(tmp_path) -> Path:
    root = tmp_path / "mvtec"
    make_mvtec_category(root, "bottle")
    make_mvtec_category(root, "carpet", gray=True, seed=1)
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from raybench.data.demo import ensure_demo
    return ensure_demo(tmp_path_factory.mktemp("demo") / "demo")


@pytest.fixture(scope="session")
def disc(demo_root):
    """The demo's `disc` category (40 good, 16 crack and 16 spot test images, 48 training images)."""
    from raybench.data import load_dataset
    (cat,) = load_dataset("demo", demo_root, ["disc"])
    return cat


def rel(samples, cat) -> set[str]:
    """Samples as their paths relative to the category folder (what split hashes are made of)."""
    from raybench.evaluation.scoring import relative_path
    return {relative_path(s, cat) for s in samples}


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session, started as a local sweep starts its own: bound to
    loopback, never a cluster some `ray start` left behind (auth as the suite's environment says)."""
    import ray

    from raybench.local_ray import start_local_ray
    if not ray.is_initialized():
        start_local_ray(lambda _: None, num_cpus=2, include_dashboard=False,
                        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / name / "train").is_dir():
        pytest.skip(f"{path} not present (real-data checks run only beside ../shared/data)")
    return path



@contextmanager
def running_mlflow_server(folder: Path):
    """A real `mlflow server` on loopback (sqlite store and artifacts in `folder`); yields its URI."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'srv.db'}",
         "--artifacts-destination", (folder / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("mlflow server did not answer /health in 90 s")
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
