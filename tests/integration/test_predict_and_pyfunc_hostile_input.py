"""`raybench predict` and the registered pyfunc model under hostile input, with real models in a
real sqlite MLflow store: what cannot be read or scored is named and skipped (exit 1), never waited
on and never given the verdict `normal`; the rest is scored as before. Bounded: one predict process
per case group, a few small images."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest

from raybench.delivery import registry

from hostile import EPS, GOOD, VALID, float_tiff, nan_patchcore, png_declaring
from tracked_runs import log_detector_run, tiny_patchcore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('predict') / 'mlflow.db'}"
    log_detector_run(uri, tiny_patchcore(seed=2, image_threshold=1.0), "demo", "disc", 0.9)
    log_detector_run(uri, nan_patchcore(), "demo", "nan", 0.9)
    registry.register("demo", uri=uri)
    return uri


def predict(uri: str, category: str, *paths, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "raybench", "predict", "--dataset", "demo", "--category", category,
                           "--tracking-uri", uri, *map(str, paths)], env=env, capture_output=True, text=True,
                          timeout=timeout)  # a hang (a FIFO read) fails here instead of blocking the suite


def test_predict_names_and_skips_what_is_not_a_scorable_file_and_never_hangs(store, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "a_good.png").write_bytes(VALID)
    os.mkfifo(folder / "b_pipe.png")  # nobody ever writes to it
    (folder / "c_loop.png").symlink_to(folder / "c_loop.png")
    (folder / "d_null.png").symlink_to("/dev/null")
    (folder / "e_inf.tiff").write_bytes(float_tiff(np.inf))
    (folder / "f_nan.tif").write_bytes(float_tiff(np.nan))
    (folder / "g_bomb.png").write_bytes(png_declaring(7000, 7000, rows=1))
    (folder / "h_eps.png").write_bytes(EPS)
    (folder / "i_cut.jpg").write_bytes(GOOD["JPEG"][:300])
    (folder / "j_dir.png").mkdir()
    (folder / "k_good.bmp").write_bytes(GOOD["BMP"])
    done = predict(store, "disc", folder)
    assert done.returncode == 1, done.stdout + done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines() if "\t" in line]
    assert sorted(Path(p).name for _, _, p in rows) == ["a_good.png", "k_good.bmp"]
    assert all(np.isfinite(float(s)) and v in ("normal", "anomalous") for s, v, _ in rows)
    skipped = {line.split(": ")[1].rsplit("/", 1)[-1]: line for line in done.stderr.splitlines()
               if line.startswith("skipped: ")}
    expected = {"b_pipe.png": "not a regular file (a FIFO", "c_loop.png": "symbolic links",
                "d_null.png": "not a regular file (a device)", "e_inf.tiff": "not finite", "f_nan.tif": "not finite",
                "g_bomb.png": "PNG truncated", "h_eps.png": "cannot read image", "i_cut.jpg": "runcated",
                "j_dir.png": "not a regular file (a folder)"}
    for name, message in expected.items():
        assert name in skipped and message in skipped[name], (name, done.stderr[-3000:])
    assert f"{len(expected)} file(s) could not be read or scored" in done.stderr


def test_predict_never_calls_a_nan_score_normal(store, tmp_path):
    (tmp_path / "good.png").write_bytes(VALID)
    done = predict(store, "nan", tmp_path / "good.png")
    assert done.returncode == 1 and "normal" not in done.stdout, done.stdout + done.stderr
    assert "good.png: the model's score is nan, not a number a verdict can be given on" in done.stderr


def test_the_pyfunc_model_reports_errors_never_normal(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # plain MLflow, as a user would
    mlflow.set_tracking_uri(store)
    try:
        model = mlflow.pyfunc.load_model("models:/raybench-demo-disc@champion")
        nan_model = mlflow.pyfunc.load_model("models:/raybench-demo-nan@champion")
    finally:
        mlflow.set_tracking_uri(None)
    nan_pixels = np.full((30, 40, 3), 0.5, np.float32)
    nan_pixels[3, 4, 1] = np.nan
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    inputs = [VALID, float_tiff(np.inf), png_declaring(7000, 7000, 1), EPS,
              nan_pixels, str(fifo), np.full((30, 40, 3), np.inf, np.float32), GOOD["JPEG"]]
    out = model.predict(inputs)
    assert list(out.columns) == ["score", "verdict", "threshold", "error"]
    good = [0, 7]
    assert out["error"].isna()[good].all() and np.isfinite(out["score"][good]).all()
    assert set(out["verdict"][good]) <= {"normal", "anomalous"}
    bad = [i for i in range(len(inputs)) if i not in good]
    assert (out["verdict"][bad] == "error").all() and out["score"][bad].isna().all(), out
    assert all(isinstance(e, str) and e for e in out["error"][bad])
    assert "not finite" in out["error"][1] and "PNG truncated" in out["error"][2] and "FIFO" in out["error"][5]
    scores_alone = model.predict([VALID, GOOD["JPEG"]])["score"]  # bad neighbours change nothing
    assert np.allclose(scores_alone, out["score"][good])
    nan_out = nan_model.predict([VALID, GOOD["PNG"]])
    assert (nan_out["verdict"] == "error").all() and "not a number a verdict" in nan_out["error"][0]


def test_loading_a_registered_model_leaves_no_temp_folder(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp / TemporaryDirectory write
    det = registry.load_detector("demo", "disc", store)
    assert np.isfinite(det.predict([np.zeros((40, 40, 3), np.float32)])[0]).all()
    assert not list(tmp_path.glob("raybench-model-*")), list(tmp_path.iterdir())


def test_is_registered_asks_the_registry_only(store):
    assert registry.is_registered("demo", "disc", store)
    assert not registry.is_registered("demo", "nope", store) and not registry.is_registered("..", "disc", store)
