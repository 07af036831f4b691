"""Detector: predict on paths, arrays and tensors; checkpoints are weights only and round-trip."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from raybench.config import from_dict
from raybench.data import load_dataset
from raybench.detector import CONFIG_FILE, WEIGHTS_FILE, Detector
from raybench.methods import get_method


@pytest.fixture(scope="module")
def detector(demo_root):
    spec = get_method("patchcore")
    (cat,) = load_dataset("demo", demo_root, "disc")
    cfg = from_dict(spec.config_cls, {"weights": "random", "image_size": 48, "coreset_ratio": 0.05})
    res = spec.fit(cfg, cat, torch.device("cpu"))
    return Detector("patchcore", cfg, res.scorer, {"dataset": "demo", "category": "disc"}), cat


def test_predict_accepts_paths_arrays_and_tensors(detector):
    det, cat = detector
    paths = [s.path for s in cat.test[:3]]
    s_paths, m_paths = det.predict(paths)
    assert s_paths.shape == (3,) and m_paths.shape == (3, 48, 48)
    s_chunked, m_chunked = det.predict(paths, batch_size=2)  # read and scored two at a time
    # other batch shapes take other matmul kernels: equal to float32 rounding, not bit for bit
    assert np.allclose(s_chunked, s_paths, atol=1e-5) and np.allclose(m_chunked, m_paths, atol=1e-5)
    arrays = [np.asarray(Image.open(p)) for p in paths]  # uint8 HWC
    s_arr, _ = det.predict(arrays)
    assert np.allclose(s_arr, s_paths, rtol=1e-4, atol=1e-4)
    tensor = torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in arrays])
    s_t, _ = det.predict(tensor)
    assert np.allclose(s_t, s_paths, rtol=1e-4, atol=1e-4)
    gray = np.asarray(Image.open(paths[0]).convert("L"))
    assert det.predict(gray)[0].shape == (1,)


def test_maps_at_each_inputs_own_size(detector):
    det, cat = detector
    small = np.asarray(Image.open(cat.test[0].path).resize((40, 30)))  # (30, 40, 3), not square
    big = np.asarray(Image.open(cat.test[1].path))
    scores, maps = det.predict([small, big], map_size="input")
    assert [m.shape for m in maps] == [(30, 40), big.shape[:2]]
    model_scores, model_maps = det.predict([small, big])
    assert np.allclose(scores, model_scores)
    # the same map, only resized: its range is the model-size map's (bilinear never overshoots)
    assert maps[1].max() <= model_maps[1].max() + 1e-5 and maps[1].min() >= model_maps[1].min() - 1e-5
    with pytest.raises(ValueError, match="map_size"):
        det.predict([small], map_size="original")


def test_calibrate_on_normal_images_sets_cuts_that_flag_at_most_the_rate(detector, tmp_path):
    det, cat = detector
    det = Detector(det.method, det.config, det.scorer, dict(det.meta))  # leave the fixture's meta alone
    normals = [s.path for s in cat.train[:20]]
    cuts = det.calibrate(normals, false_alarm_rate=0.1)
    scores, maps = det.predict(normals)
    assert (scores >= det.image_threshold).sum() <= 2 and (scores >= det.image_threshold).sum() >= 1
    assert (maps >= det.pixel_threshold).mean() <= 0.1
    assert cuts["image_threshold"] == det.image_threshold and "20 normal images" in cuts["threshold_source"]
    assert Detector.load(det.save(tmp_path / "calibrated"), device="cpu").image_threshold == det.image_threshold


def test_save_load_round_trip_is_exact_and_pickle_free(detector, tmp_path):
    det, cat = detector
    folder = det.save(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["method"] == "patchcore" and meta["config"]["image_size"] == 48
    loaded = Detector.load(folder, device="cpu")
    assert loaded.scorer.memory_bank.shape == det.scorer.memory_bank.shape
    paths = [s.path for s in cat.test[:4]]
    a, b = det.predict(paths), loaded.predict(paths)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_evaluate_recomputes_metrics(detector, demo_root):
    det, _ = detector
    metrics = det.evaluate(demo_root)
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["n_test_scored"] == 72  # demo-v3: 40 good + 32 defective
