"""Model Registry: each category's best run as pyfunc `raybench-<dataset>-<category>@champion`,
re-pointed when a better run appears; loadable with plain MLflow and with best_model(alias=)."""
from __future__ import annotations

import io

import mlflow
import numpy as np
import pytest
from PIL import Image

import raybench
from raybench import best_model
from raybench.delivery import registry
from raybench.cli import main
from raybench.data.io import decode_image
from raybench.errors import ImageInputError

from tracked_runs import log_detector_run, tiny_patchcore


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def test_champion_follows_the_best_run(tracking_uri):
    first = log_detector_run(tracking_uri, tiny_patchcore(seed=1, image_threshold=1.0), "demo", "disc", 0.6)
    (reg,) = registry.register("demo", uri=tracking_uri)
    assert (reg.name, reg.version, reg.run_id, reg.action) == ("raybench-demo-disc", "1", first, "created")
    (again,) = registry.register("demo", uri=tracking_uri)
    assert (again.version, again.action) == ("1", "unchanged")
    # worse on validation, however good on test: no change (test never chooses)
    log_detector_run(tracking_uri, tiny_patchcore(seed=3), "demo", "disc", 0.4, test_image_auroc=0.99)
    assert registry.register("demo", uri=tracking_uri)[0].run_id == first
    # a --final-seeds retraining reports the chosen config's spread; it is never the champion itself
    log_detector_run(tracking_uri, tiny_patchcore(seed=4), "demo", "disc", 0.95, final=True)
    assert registry.register("demo", uri=tracking_uri)[0].run_id == first
    assert best_model("disc", dataset="demo", tracking_uri=tracking_uri).meta["run_id"] == first
    better = log_detector_run(tracking_uri, tiny_patchcore(seed=2, image_threshold=1.0), "demo", "disc", 0.9)
    (moved,) = registry.register("demo", ["disc"], uri=tracking_uri)
    assert (moved.version, moved.run_id, moved.action) == ("2", better, "re-pointed")
    client = registry.registry_client(tracking_uri)
    assert client.get_model_version_by_alias("raybench-demo-disc", "champion").run_id == better
    assert {v.run_id for v in client.search_model_versions("name = 'raybench-demo-disc'")} == {first, better}


def test_registered_model_predicts_scores_and_verdicts(tracking_uri, monkeypatch):
    det = tiny_patchcore(seed=2, image_threshold=1.0)
    run = log_detector_run(tracking_uri, det, "demo", "disc", 0.9)
    registry.register("demo", uri=tracking_uri)
    images = (np.random.default_rng(0).random((3, 40, 40, 3)) * 255).astype(np.uint8)
    expected, _ = det.predict(list(images))

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # plain MLflow, as a user would
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/raybench-demo-disc@champion")
    finally:
        mlflow.set_tracking_uri(None)
    out = model.predict(images)
    assert list(out.columns) == ["score", "verdict", "threshold", "error"] and out["error"].isna().all()
    assert np.allclose(out["score"], expected, rtol=1e-5, atol=1e-6)
    assert list(out["verdict"]) == ["anomalous" if s >= 1.0 else "normal" for s in expected]
    from_bytes = model.predict([png_bytes(a) for a in images])  # encoded files work too
    assert np.allclose(from_bytes["score"], expected, rtol=1e-5, atol=1e-6)

    loaded = raybench.best_model("disc", dataset="demo", tracking_uri=tracking_uri, alias="champion")
    assert loaded.meta["run_id"] == run and loaded.meta["model_version"] == "1"
    assert np.allclose(loaded.predict(list(images))[0], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(LookupError, match="no registered model raybench-demo-stripes@champion"):
        raybench.best_model("stripes", dataset="demo", tracking_uri=tracking_uri, alias="champion")


def test_cli_register(tracking_uri, capsys):
    log_detector_run(tracking_uri, tiny_patchcore(), "demo", "weave", 0.7)
    assert main(["register", "demo", "--tracking-uri", tracking_uri]) == 0
    assert "raybench-demo-weave v1 @champion" in capsys.readouterr().out
    assert main(["register", "mvtec", "--tracking-uri", tracking_uri]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_decode_image_names_each_problem():
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    for fmt in ("PNG", "JPEG", "TIFF"):
        assert decode_image(png_bytes(rgb, fmt)).shape == (20, 30, 3)
    with pytest.raises(ImageInputError, match="not an image file") as err:
        decode_image(b"hello, not an image")
    assert err.value.status == 400
    with pytest.raises(ImageInputError, match="truncated"):
        decode_image(png_bytes(rgb)[:200])
    with pytest.raises(ImageInputError, match="over the limit") as err:
        decode_image(png_bytes(rgb), max_pixels=599)
    assert err.value.status == 413
    assert decode_image(png_bytes(rgb), max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ImageInputError, match="empty"):
        decode_image(b"")


def test_a_category_name_with_a_quote_registers_and_moves(tracking_uri):
    first = log_detector_run(tracking_uri, tiny_patchcore(seed=1), "folder", "o'ring", 0.6)
    (reg,) = registry.register("folder", uri=tracking_uri)
    assert (reg.name, reg.run_id, reg.action) == ("raybench-folder-o'ring", first, "created")
    better = log_detector_run(tracking_uri, tiny_patchcore(seed=2), "folder", "o'ring", 0.9)
    (moved,) = registry.register("folder", uri=tracking_uri)
    assert (moved.version, moved.run_id, moved.action) == ("2", better, "re-pointed")


def test_a_model_registered_by_raybench_0_1_still_loads(tmp_path):
    """raybench 0.1 wrote its pyfunc models from a code file that runs `from raybench.registry import
    DetectorModel`; that import path is kept, so those models load and score as before."""
    det = tiny_patchcore(seed=5, image_threshold=1.0)
    det.save(tmp_path / "detector")
    code = tmp_path / "pyfunc_model.py"  # the 0.1 file, as MLflow copied it into every model
    code.write_text("from mlflow.models import set_model\n\nfrom raybench.registry import DetectorModel\n\n"
                    "set_model(DetectorModel())\n")
    mlflow.pyfunc.save_model(str(tmp_path / "model"), python_model=str(code),
                             artifacts={"detector": str(tmp_path / "detector")})
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    images = (np.random.default_rng(1).random((2, 40, 40, 3)) * 255).astype(np.uint8)
    out = model.predict(list(images))
    expected, _ = det.predict(list(images))
    np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=1e-5)
    assert list(out["verdict"]) == [det.verdict(s) for s in expected]
