"""Smoke fits of `cutswap` (and, via tests/unit/test_fit_cutpaste.py, `cutpaste`) on a slice of the demo
data (random weights, 32 px, one epoch): finite AUROCs, a Detector roundtrip with identical
predictions, same seed => same metrics."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from raybench.config import from_dict
from raybench.data import load_dataset
from raybench.detector import Detector
from raybench.evaluation.scoring import evaluate_scorer
from raybench.methods import get_method

CPU = torch.device("cpu")
TINY = {"image_size": 32, "epochs": 1, "batch_images": 8, "coreset_ratio": 0.1, "weights": "random",
        "saliency_weights": "random", "saliency_batch_size": 16}


def tiny_category(demo_root):
    (cat,) = load_dataset("demo", demo_root, ["disc"])
    good = [s for s in cat.test if s.label == 0][:5]
    bad = [s for s in cat.test if s.label == 1][:5]
    return dataclasses.replace(cat, train=cat.train[:16], test=good + bad)


@pytest.fixture(scope="module")
def category(demo_root):
    return tiny_category(demo_root)


def tiny_config(method: str, **extra):
    spec = get_method(method)
    values = {k: v for k, v in {**TINY, **extra}.items() if k in {f.name for f in dataclasses.fields(spec.config_cls)}}
    return spec, from_dict(spec.config_cls, values, method=method)


def fit_and_score(method, category, **extra):
    spec, config = tiny_config(method, **extra)
    epochs = []
    result = spec.fit(config, category, CPU, on_epoch=lambda e, scorer: epochs.append((e, scorer)))
    metrics = evaluate_scorer(result.scorer, category, CPU, result.excluded_test, full=False)
    return spec, config, result, metrics, epochs


def check_smoke_fit(method, category, tmp_path):
    spec, config, result, metrics, epochs = fit_and_score(method, category)
    assert spec.trained and result.excluded_test == []
    assert math.isfinite(metrics["image_auroc"]) and math.isfinite(metrics["pixel_auroc"])
    assert result.info["bank_size"] == round(0.1 * result.info["n_patches"])
    assert [e for e, _ in epochs] == [0]
    # the epoch hook's scorer is a real PatchCore once used
    epoch_metrics = evaluate_scorer(epochs[0][1], category, CPU, full=False)
    assert math.isfinite(epoch_metrics["image_auroc"])

    _, _, _, again, _ = fit_and_score(method, category)
    for key in ("image_auroc", "pixel_auroc"):
        assert again[key] == metrics[key]

    detector = Detector(method, config, result.scorer, {"dataset": "demo", "category": "disc"})
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    scores, maps = detector.predict(images)
    loaded = Detector.load(detector.save(tmp_path / "det"), device="cpu")
    scores2, maps2 = loaded.predict(images)
    np.testing.assert_array_equal(scores, scores2)
    np.testing.assert_array_equal(maps, maps2)


def test_cutswap_smoke_fit_is_finite_reproducible_and_roundtrips(category, tmp_path):
    check_smoke_fit("cutswap", category, tmp_path)


def test_cutswap_ablation_switches_fit(category):
    _, _, result, metrics, _ = fit_and_score("cutswap", category, anchor_strategy="sorting", layer_set=[2, 4],
                                             maps_per_image=2)
    assert math.isfinite(metrics["image_auroc"])
    assert result.info["steps"] == 2
    with pytest.raises(ValueError):
        fit_and_score("cutswap", category, anchor_strategy="sorting", cluster_select="random")
