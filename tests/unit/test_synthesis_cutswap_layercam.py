"""CutSwap / CutPaste synthesis, LayerCAM, the classifier-to-PatchCore weight transfer and the
fast PatchCore internals: real torch, random weights, tiny sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from raybench.synthesis.cutpaste import CutPasteSettings, cutpaste, cutpaste_scar
from raybench.synthesis.cutswap import (SwapSettings, build_anchor_cache, cutswap, draw_anchor_pair,
                                        kmeans_1d, select_intervals)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unique_images(b, size):
    """Every pixel of every image distinct, so moved pixels can be told apart."""
    values = torch.randperm(b * 3 * size * size, generator=gen(1)).float() / (b * 3 * size * size)
    return values.view(b, 3, size, size)


def hand_made_saliency(size=32):
    """Low background, a medium band, and a small hot block at rows 4..7, cols 20..23."""
    sal = torch.full((1, size, size), 0.05)
    sal[0, 16:24, :] = 0.5
    sal[0, 4:8, 20:24] = torch.linspace(0.9, 1.0, 16).view(4, 4)
    return sal


def test_kmeans_1d_finds_the_modes_deterministically():
    values = torch.cat([torch.full((50,), 0.1), torch.full((30,), 0.5), torch.full((20,), 0.95)])[None]
    centroids, sizes = kmeans_1d(values, 3)
    assert torch.allclose(centroids[0], torch.tensor([0.1, 0.5, 0.95]), atol=1e-6)
    assert sizes[0].tolist() == [50, 30, 20]
    assert torch.equal(kmeans_1d(values, 3)[0], centroids)


def test_kmeans_anchors_come_from_the_max_saliency_cluster():
    sal = hand_made_saliency()
    anchors = build_anchor_cache([sal], 32, "kmeans", k=3)
    low, high = select_intervals(anchors, torch.zeros(64, dtype=torch.long), torch.zeros(64, dtype=torch.long),
                                 "max", gen())
    one_px = torch.ones(64, 2, dtype=torch.long)
    c1, c2, outside = draw_anchor_pair(sal.expand(64, -1, -1), low, high, one_px, gen())
    hot = {(y, x) for y in range(4, 8) for x in range(20, 24)}
    assert {tuple(p) for p in c1.tolist()} <= hot and {tuple(p) for p in c2.tolist()} <= hot
    assert not outside.any() and not (c1 == c2).all(dim=1).any()
    assert len({tuple(p) for p in c1.tolist()}) > 4  # drawn, not always the same pixel


def test_sorting_and_random_cluster_ablations():
    sal = hand_made_saliency()
    top = build_anchor_cache([sal], 32, "sorting", top_pixels=300)  # 300 at 256 px -> 5 at 32 px
    assert int(top.size[0, 0, 0]) == 5
    kmeans = build_anchor_cache([sal], 32, "kmeans", k=3)
    index = torch.zeros(200, dtype=torch.long)
    low, _ = select_intervals(kmeans, index, index, "random", gen())
    assert len(set(low.tolist())) == 3  # every non-empty cluster gets drawn
    with pytest.raises(ValueError):
        select_intervals(top, index, index, "random", gen())


def test_swap_preserves_pixel_multiset_and_is_deterministic():
    b, size = 16, 32
    images = unique_images(b, size)
    sal = torch.rand(b, size, size, generator=gen(2))
    anchors = build_anchor_cache([sal], size, "kmeans", k=4)
    index = torch.arange(b)
    low, high = select_intervals(anchors, index, torch.zeros(b, dtype=torch.long), "max", gen())
    settings = SwapSettings()
    out, mask, _ = cutswap(images, sal, low, high, settings, gen(3))
    for i in range(b):
        assert torch.equal(out[i].flatten().sort().values, images[i].flatten().sort().values)
    changed = (out != images).any(dim=1)
    assert torch.equal(changed, mask) and mask.flatten(1).sum(1).min() > 0
    again, _, _ = cutswap(images, sal, low, high, settings, gen(3))
    assert torch.equal(out, again)


def test_swap_patches_stay_inside_near_the_border():
    size = 32
    images = unique_images(4, size)
    sal = torch.zeros(4, size, size)
    sal[:, 28:, 28:] = 1.0  # the only salient pixels sit in the bottom-right corner
    low, high = torch.full((4,), 0.5), torch.full((4,), 2.0)
    hw = torch.tensor([[8, 8]] * 4)
    c1, c2, outside = draw_anchor_pair(sal, low, high, hw, gen())
    assert (c1 <= size - 8).all() and (c2 <= size - 8).all()
    assert outside.all()  # the hot corner cannot host two disjoint 8x8 patches: flagged
    apart = ((c1 - c2).abs() >= 8).any(dim=1)
    assert apart.all()


def _components(mask):
    labels, n = ndimage.label(mask.numpy())
    boxes = ndimage.find_objects(labels)
    return [(s[0].stop - s[0].start, s[1].stop - s[1].start, int((labels == i + 1).sum()))
            for i, s in enumerate(boxes)]


def test_scar_patches_have_the_configured_aspect():
    size, b = 256, 8
    images = unique_images(b, size)
    sal = torch.rand(b, size, size, generator=gen(4))
    low, high = torch.full((b,), 0.0), torch.full((b,), 2.0)
    settings = SwapSettings(scar_angle_deg=0.0)
    out, mask, _ = cutswap(images, sal, low, high, settings, gen(5), scar=True)
    for i in range(b):
        parts = _components(mask[i])
        assert len(parts) == 2 and parts[0] == parts[1]  # two equal, swapped rectangles
        h, w, area = parts[0]
        assert 10 <= h <= 25 and 2 <= w <= 16 and area == h * w
        assert torch.equal(out[i].flatten().sort().values, images[i].flatten().sort().values)
    rotated, rmask, _ = cutswap(images, sal, low, high, SwapSettings(), gen(5), scar=True)
    assert rmask.flatten(1).sum(1).min() > 0


def test_cutpaste_three_way_shapes():
    size, b = 256, 6
    images = unique_images(b, size)
    pasted, mask = cutpaste(images, CutPasteSettings(), gen(6))
    area = mask.flatten(1).float().mean(1)
    assert ((area >= 0.015) & (area <= 0.16)).all()
    scar, smask = cutpaste_scar(images, CutPasteSettings(scar_angle_deg=0.0), gen(7))
    for i in range(b):
        (h, w, n), = _components(smask[i])
        assert 10 <= h <= 25 and 2 <= w <= 16 and n == h * w
    assert torch.equal(pasted[~mask[:, None].expand_as(pasted)], images[~mask[:, None].expand_as(images)])


def test_layercam_maps_are_non_negative_at_each_layer_size():
    from raybench.synthesis.saliency import SaliencyExtractor, upsample_saliency
    torch.manual_seed(0)
    extractor = SaliencyExtractor("vgg16", [0, 1, 2, 3, 4], "random")
    # levels 0-4 of VGG16 are the paper's max-pools: timm's vgg16.features keeps torchvision's indices
    assert extractor.level_modules == [f"features.{i}" for i in (4, 9, 16, 23, 30)]
    for i in (4, 9, 16, 23, 30):
        assert isinstance(extractor.net.features[i], torch.nn.MaxPool2d)
    maps = extractor(torch.rand(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 32), (2, 16, 16), (2, 8, 8), (2, 4, 4), (2, 2, 2)]
    for m in maps:
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
    assert upsample_saliency(maps, 64).shape == (2, 5, 64, 64)
    with pytest.raises(ValueError):
        SaliencyExtractor("vgg16", [5], "random")


def test_coreset_picks_are_distinct_and_ratio_honoured():
    from raybench.models.backbones import FeatureExtractor
    from raybench.models.patchcore import PatchCore, greedy_coreset
    features = torch.randn(300, 64, generator=gen(8))
    features = torch.cat([features, features[:100], torch.zeros(50, 64)])  # duplicates on purpose
    picks = greedy_coreset(features, 120, projection_dim=16)
    assert len(picks) == 120 and len(set(picks.tolist())) == 120
    assert len(set(greedy_coreset(torch.ones(20, 8), 20).tolist())) == 20  # all rows identical
    torch.manual_seed(0)
    model = PatchCore(FeatureExtractor("resnet18", ["layer2", "layer3"], "random"), 32)
    info = model.fit([torch.rand(3, 3, 32, 32)], coreset_ratio=0.1)
    assert info["n_patches"] == 3 * 4 * 4 and model.memory_bank.shape[0] == round(0.1 * 48)


def test_nearest_distances_chunked_matches_cdist():
    from raybench.models.patchcore import nearest_distances
    q, bank = torch.randn(257, 32, generator=gen(9)), torch.randn(40, 32, generator=gen(10))
    d = nearest_distances(q, bank, max_elements=40 * 16)  # forces 16-row chunks
    assert torch.allclose(d, torch.cdist(q, bank).min(dim=1).values, atol=1e-4)


def test_trunk_weights_reach_the_patchcore_extractor():
    from raybench.models.backbones import FeatureExtractor
    from raybench.models.classifier import PatchClassifier, transfer_trunk
    torch.manual_seed(0)
    classifier = PatchClassifier("resnet18", "random")
    with torch.no_grad():
        classifier.trunk.layer3[0].conv1.weight.add_(1.0)  # stands in for fine-tuning
    extractor = FeatureExtractor("resnet18", ["layer2", "layer3"], "random")
    transfer_trunk(classifier.trunk, extractor)
    trunk_state = classifier.trunk.state_dict()
    for key, value in extractor.model.state_dict().items():
        assert torch.equal(value, trunk_state[key]), key
    classifier.eval()
    x = torch.rand(2, 3, 64, 64)
    expected = classifier.trunk.forward_intermediates(extractor.normalise(x), indices=[2, 3],
                                                      intermediates_only=True)
    for got, want in zip(extractor(x), expected):
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), atol=1e-5)


def test_search_spaces_match_the_configs():
    from raybench.sweep.search_space import load_search_space
    for method in ("cutswap", "cutpaste"):
        space = load_search_space(method)
        assert {"coreset_ratio", "lr", "epochs", "patch_area_min", "patch_area_max"} <= set(space.distributions)
    assert {"k", "layer_set"} <= set(load_search_space("cutswap").distributions)
