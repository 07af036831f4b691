"""Siamese U-Net training protocol: real-anomaly exclusion, synthesis, determinism, checkpoints.
Tiny: demo data (128 px, generated in tmp), the smoke budget's lite0 with random weights, 64 px, 1-2 steps/epoch."""
import numpy as np
import pytest
import torch

from raybench.config import from_dict
from raybench.data import load_dataset
from raybench.evaluation.scoring import evaluate_scorer, relative_path, scored_test_samples
from raybench.methods import get_method
from raybench.methods import siamese_unet as method_module
from raybench.synthesis.blend import blend_patches, foreground_mask, synthesize

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return {c.name: c for c in load_dataset("demo", root)}


def smoke_config(method="siamese-unet", **changes):
    spec = get_method(method)
    return from_dict(spec.config_cls, {**spec.budgets["smoke"], "weights": "random", **changes})


def test_rd_is_the_same_code_with_the_extras_off():
    rd = smoke_config("rd")
    assert (rd.cpam, rd.stage1, rd.stage2) == (False, False, False)
    full = smoke_config()
    assert (full.cpam, full.stage1, full.stage2) == (True, True, True)


def test_real_anomalies_used_in_training_are_never_scored(demo, monkeypatch):
    category = demo["disc"]
    loaded = []
    real_load = method_module.load_images

    def recording_load(samples, size, *args, **kwargs):
        loaded.extend(samples)
        return real_load(samples, size, *args, **kwargs)

    monkeypatch.setattr(method_module, "load_images", recording_load)
    config = smoke_config(anomaly_source="real", n_anomalies=5)
    result = get_method("siamese-unet").fit(config, category, CPU)
    assert len(result.excluded_test) == 5
    trained_on = {relative_path(s, category) for s in loaded}
    anomalous_used = {relative_path(s, category) for s in loaded if s.label == 1}
    assert anomalous_used == set(result.excluded_test)
    scored = {relative_path(s, category) for s in scored_test_samples(category, result.excluded_test)}
    assert scored and not (trained_on & scored)
    metrics = evaluate_scorer(result.scorer, category, CPU, result.excluded_test, full=False)
    assert metrics["n_test_scored"] == len(category.test) - 5


def test_synthetic_blend_object_stays_inside_the_foreground(demo):
    from raybench.data.tensors import load_images
    category = demo["disc"]
    assert category.kind == "object"
    normals = load_images(category.train[:6], 64).float()
    images, masks, pairs = synthesize(normals, 8, np.random.default_rng(0), object_like=True)
    assert images.shape == (8, 3, 64, 64) and masks.shape == (8, 64, 64)
    for image, mask, (src, dst) in zip(images, masks, pairs):
        assert src != dst
        assert mask.sum() > 0
        destination = normals[dst].numpy()
        assert not (mask.numpy().astype(bool) & ~foreground_mask(destination)).any()
        changed = np.abs(image.numpy() - destination).max(axis=0) > 1e-6
        assert not (changed & ~mask.numpy().astype(bool)).any()  # nothing changes outside the mask
    again = synthesize(normals, 8, np.random.default_rng(0), object_like=True)
    assert torch.equal(images, again[0]) and np.array_equal(pairs, again[2])


def test_foreground_estimate_and_texture_blend():
    image = np.full((3, 32, 32), 0.1, np.float32)
    image[:, 8:24, 8:24] = 0.9
    fg = foreground_mask(image)
    assert fg[8:24, 8:24].all() and fg.sum() == 16 * 16
    rng = np.random.default_rng(1)
    texture_a, texture_b = rng.random((3, 32, 32), dtype=np.float32), rng.random((3, 32, 32), dtype=np.float32)
    out, mask = blend_patches(texture_a, texture_b, rng, object_like=False)
    assert mask.any() and out.shape == texture_a.shape


def test_same_seed_same_metrics(demo):
    category = demo["stripes"]
    runs = []
    for _ in range(2):
        config = smoke_config(anomaly_source="synthetic", epochs2=0, seed=3)
        result = get_method("siamese-unet").fit(config, category, CPU)
        runs.append(evaluate_scorer(result.scorer, category, CPU, result.excluded_test, full=False))
    keys = ("image_auroc", "pixel_auroc", "f1_max")
    assert [runs[0][k] for k in keys] == [runs[1][k] for k in keys]


def test_smoke_fit_evaluate_and_detector_roundtrip(demo, tmp_path):
    from raybench.detector import Detector
    category = demo["weave"]
    epochs = []
    config = smoke_config(anomaly_source="synthetic")
    result = get_method("siamese-unet").fit(config, category, CPU, on_epoch=lambda e, s, excluded: epochs.append(e))
    assert epochs == [0, 1]  # global count over stage 1 and stage 2
    metrics = evaluate_scorer(result.scorer, category, CPU, result.excluded_test, full=False)
    assert 0 <= metrics["image_auroc"] <= 1 and 0 <= metrics["pixel_auroc"] <= 1
    detector = Detector("siamese-unet", config, result.scorer, {"excluded_test": result.excluded_test})
    detector.save(tmp_path / "ckpt")
    loaded = Detector.load(tmp_path / "ckpt", device="cpu")
    images = [s.path for s in category.test[:4]]
    scores, maps = detector.predict(images)
    scores2, maps2 = loaded.predict(images)
    assert np.array_equal(scores, scores2) and np.array_equal(maps, maps2)


def test_epoch_hook_is_told_which_test_images_were_trained_on(demo):
    category = demo["weave"]
    seen = []
    config = smoke_config(anomaly_source="real", n_anomalies=3)
    result = get_method("siamese-unet").fit(config, category, CPU,
                                            on_epoch=lambda e, s, excluded: seen.append(list(excluded)))
    assert len(result.excluded_test) == 3
    assert seen and all(ex == result.excluded_test for ex in seen)
