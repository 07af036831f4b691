"""The spine's PatchCore: features, nearest-neighbour scores, and the `patchcore` method end to end."""
import numpy as np
import pytest
import torch

from raybench.config import from_dict
from raybench.data import load_dataset
from raybench.evaluation.scoring import evaluate_scorer
from raybench.methods import get_method
from raybench.models.common import gaussian_blur
from raybench.models.patchcore import greedy_coreset, locally_aware_features, nearest_distances


def test_nearest_distances_match_brute_force_across_chunks():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(50, 7, generator=g), torch.randn(13, 7, generator=g)
    expected = torch.cdist(q, bank).min(dim=1).values
    assert torch.allclose(nearest_distances(q, bank, chunk=8), expected, atol=1e-4)


def test_greedy_coreset_picks_the_farthest_point_next():
    # points on a line: after any start, k-center must take an extreme (0 or 10) next
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    picks = greedy_coreset(x, 3, projection_dim=0, seed=0).tolist()
    assert len(set(picks)) == 3 and 3 in picks and 0 in picks


def test_locally_aware_features_align_layers():
    f2, f3 = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    out = locally_aware_features([f2, f3], patch_size=3)
    assert out.shape == (2, 10, 8, 8)
    # a constant layer stays constant under 3x3 averaging (count_include_pad aside, interior check)
    const = locally_aware_features([torch.ones(1, 1, 6, 6)], 3)
    assert torch.allclose(const[0, 0, 1:-1, 1:-1], torch.ones(4, 4))


def test_gaussian_blur_preserves_mass_of_a_centered_impulse():
    m = torch.zeros(1, 41, 41)
    m[0, 20, 20] = 1.0
    out = gaussian_blur(m, 2.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4) and out[0, 20, 20] == out.max()


def test_patchcore_method_scores_the_demo_above_chance(demo_root):
    spec = get_method("patchcore")
    (cat,) = load_dataset("demo", demo_root, "stripes")
    # demo-v3's defects are small and faint: ImageNet features (installed lite0, no hub) at the demo's 128 px
    cfg = from_dict(spec.config_cls, {"weights": "imagenet", "backbone": "tf_efficientnet_lite0", "image_size": 128,
                                      "coreset_ratio": 0.1})
    result = spec.fit(cfg, cat, torch.device("cpu"))
    assert result.info["bank_size"] == round(0.1 * result.info["n_patches"])
    metrics = evaluate_scorer(result.scorer, cat, torch.device("cpu"))
    assert metrics["image_auroc"] > 0.6 and metrics["pixel_auroc"] > 0.7
    assert np.isfinite(metrics["aupro"]) and metrics["n_test_scored"] == len(cat.test)
