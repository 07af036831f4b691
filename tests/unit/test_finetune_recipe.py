"""The self-supervised fine-tuning recipe (`recipe: preserve|paper` and its three knobs), the
validation-chosen epoch (`keep_best_epoch`) and CutSwap's min-cluster ablation. Real torch, tiny
real models (random weights: these test plumbing, not quality) on a slice of the demo data."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from raybench.config import from_dict
from raybench.data import load_dataset
from raybench.methods import get_method
from raybench.methods.finetune import RECIPES, resolve_recipe
from raybench.methods.selection import BestEpoch, ValidationPool, selection_key
from raybench.models.classifier import PatchClassifier
from raybench.synthesis.cutswap import SaliencyAnchors, select_intervals

CPU = torch.device("cpu")
TINY = {"image_size": 32, "epochs": 1, "batch_images": 8, "coreset_ratio": 0.1, "weights": "random",
        "saliency_weights": "random", "saliency_batch_size": 16, "backbone": "resnet18",
        "saliency_net": "resnet18", "keep_best_epoch": False}


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    (cat,) = load_dataset("demo", tmp_path_factory.mktemp("demo"), ["disc"])
    good = [s for s in cat.test if s.label == 0][:4]
    bad = [s for s in cat.test if s.label == 1][:4]
    return dataclasses.replace(cat, train=cat.train[:12], test=good + bad)


def config_for(method, **changes):
    spec = get_method(method)
    names = {f.name for f in dataclasses.fields(spec.config_cls)}
    return spec, from_dict(spec.config_cls, {k: v for k, v in {**TINY, **changes}.items() if k in names}, method=method)


def initial_trunk(config) -> dict:
    """The trunk `_fit` starts from: built right after torch.manual_seed(config.seed)."""
    torch.manual_seed(config.seed)
    return PatchClassifier(config.backbone, config.weights, config.head_dims).trunk.state_dict()


def assert_trunk_equals(extractor, reference: dict, equal: bool = True):
    state = extractor.model.state_dict()
    same = all(torch.equal(state[k], reference[k]) for k in state)
    assert same == equal


def test_recipe_resolution_the_paper_is_literal_and_fields_override():
    _, paper = config_for("cutswap", recipe="paper")
    assert resolve_recipe(paper) == {"bn_stats": "train", "warmup_epochs": 0, "trunk_lr_scale": 1.0}
    _, preserve = config_for("cutswap")
    assert preserve.recipe == "preserve" and resolve_recipe(preserve) == RECIPES["preserve"]
    _, mixed = config_for("cutswap", recipe="paper", bn_stats="frozen")
    assert resolve_recipe(mixed) == {"bn_stats": "frozen", "warmup_epochs": 0, "trunk_lr_scale": 1.0}
    _, bad = config_for("cutswap", bn_stats="sometimes")
    with pytest.raises(ValueError, match="bn_stats"):
        resolve_recipe(bad)


def test_frozen_bn_stats_keep_the_pretrained_running_statistics():
    torch.manual_seed(0)
    model = PatchClassifier("resnet18", "random", (16,))
    images = torch.rand(6, 3, 32, 32) * 3  # far from the initial statistics
    before = {k: v.clone() for k, v in model.trunk.state_dict().items() if "running" in k}
    model.set_training("train", "frozen")
    model(images)
    assert all(torch.equal(model.trunk.state_dict()[k], v) for k, v in before.items())
    assert model.head.training  # the head's own BatchNorm still trains
    model.set_training("train", "train")
    model(images)
    assert not torch.equal(model.trunk.state_dict()["bn1.running_mean"], before["bn1.running_mean"])


@pytest.mark.parametrize("method", ["cutpaste", "cutswap"])
def test_a_warm_up_as_long_as_the_schedule_leaves_the_trunk_untouched(category, method):
    spec, config = config_for(method, recipe="paper", warmup_epochs=1)
    result = spec.fit(config, category, CPU)
    assert_trunk_equals(result.scorer.extractor, initial_trunk(config))
    assert result.info["history"][0]["trunk_trained"] is False
    # the paper recipe (no warm-up) moves it
    _, paper = config_for(method, recipe="paper")
    moved = spec.fit(paper, category, CPU)
    assert_trunk_equals(moved.scorer.extractor, initial_trunk(paper), equal=False)


def test_trunk_lr_scale_zero_trains_the_head_alone(category):
    spec, config = config_for("cutpaste", recipe="paper", trunk_lr_scale=0.0, bn_stats="frozen", epochs=2)
    result = spec.fit(config, category, CPU)
    assert_trunk_equals(result.scorer.extractor, initial_trunk(config))
    assert all(h["trunk_trained"] for h in result.info["history"])


def test_zero_epochs_is_the_untuned_trunk(category):
    spec, config = config_for("cutpaste", epochs=0)
    result = spec.fit(config, category, CPU)
    assert_trunk_equals(result.scorer.extractor, initial_trunk(config))
    assert result.info["chosen_epoch"] == 0 and result.info["steps"] == 0


def test_keep_best_epoch_returns_the_trunk_of_the_best_validation_epoch(category):
    spec, config = config_for("cutpaste", recipe="paper", epochs=3, keep_best_epoch=True, lr=0.3)
    result = spec.fit(config, category, CPU)
    curve = result.info["validation_curve"]
    assert [c["epoch"] for c in curve] == [0, 1, 2, 3]
    chosen = result.info["chosen_epoch"]
    keys = [selection_key(c) for c in curve]
    assert selection_key(curve[chosen]) == max(keys)
    assert chosen == keys.index(max(keys))  # ties keep the earlier epoch
    # the returned scorer is that epoch's trunk: it scores the pool exactly as it did then
    pool = ValidationPool.from_category(category, config.image_size)
    again = pool.score(result.scorer, CPU)
    assert again["image_auroc"] == curve[chosen]["image_auroc"]
    if chosen == 0:
        assert_trunk_equals(result.scorer.extractor, initial_trunk(config))


def test_keep_best_epoch_without_a_usable_pool_keeps_the_last_epoch_and_says_so(category):
    only_good = dataclasses.replace(category, test=[s for s in category.test if s.label == 0])
    spec, config = config_for("cutpaste", keep_best_epoch=True, epochs=2)
    info = spec.fit(config, only_good, CPU).info
    assert info["chosen_epoch"] == 2 and info["validation_curve"] == []
    assert "no validation pool" in info["epoch_choice"]


def test_best_epoch_selection_by_image_then_pixel_auroc_hand_values():
    best = BestEpoch()
    assert best.offer(0, {"image_auroc": 0.80, "pixel_auroc": 0.90}, {"w": 0})
    assert not best.offer(1, {"image_auroc": 0.80, "pixel_auroc": 0.90}, {"w": 1})  # tie: keep earlier
    assert best.offer(2, {"image_auroc": 0.80, "pixel_auroc": 0.91}, {"w": 2})  # pixel breaks the tie
    assert not best.offer(3, {"image_auroc": 0.79, "pixel_auroc": 0.99}, {"w": 3})
    assert not best.offer(4, {"image_auroc": float("nan"), "pixel_auroc": 1.0}, {"w": 4})
    assert (best.epoch, best.state) == (2, {"w": 2})
    assert selection_key({"image_auroc": 0.5, "pixel_auroc": float("nan")}) == (0.5, -math.inf)


def hand_anchors():
    # one image, one layer, k = 3 clusters ascending: the lowest is empty (k-means keeps its centroid)
    inf = math.inf
    low = torch.tensor([[[-inf, 0.25, 0.5]]])  # dyadic: exact in float32
    high = torch.tensor([[[0.25, 0.5, inf]]])
    size = torch.tensor([[[0, 40, 24]]])
    return SaliencyAnchors([torch.zeros(1, 8, 8)], low, high, size, 8, "kmeans")


def test_cluster_selection_max_min_and_random_hand_values():
    anchors, idx, gen = hand_anchors(), torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0)
    low, high = select_intervals(anchors, idx, idx, "max", gen)
    assert low.tolist() == [0.5] * 4 and high.tolist() == [math.inf] * 4
    low, high = select_intervals(anchors, idx, idx, "min", gen)  # lowest NON-EMPTY cluster
    assert low.tolist() == [0.25] * 4 and high.tolist() == [0.5] * 4
    many = torch.zeros(200, dtype=torch.long)
    low, _ = select_intervals(anchors, many, many, "random", gen)
    assert set(low.tolist()) == {0.25, 0.5}  # never the empty cluster, both others


def test_min_cluster_ablation_fits(category):
    spec, config = config_for("cutswap", cluster_select="min")
    result = spec.fit(config, category, CPU)
    assert math.isfinite(result.info["final_loss"])
    _, bad = config_for("cutswap", cluster_select="min", anchor_strategy="sorting")
    with pytest.raises(ValueError, match="kmeans"):
        spec.fit(bad, category, CPU)
