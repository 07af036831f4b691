"""`--budget paper` is the papers' configuration: every value a paper states is fixed (checked here
value by value, written out by hand from the papers and docs/methods.md), nothing fixed
is left in the shipped search spaces, and `paper_deviations` says when a run departs from them."""
from __future__ import annotations

import optuna
import pytest

from raybench.config import from_dict
from raybench.methods import get_method
from raybench.methods.base import paper_deviations
from raybench.sweep.plan import SweepSpec, bound_by_budget, build_config, resolve_base_config
from raybench.sweep.search_space import load_search_space

PATCHCORE = {"backbone": "resnet18", "weights": "imagenet", "image_size": 256, "layers": ["layer2", "layer3"],
             "patch_size": 3, "sigma": 4.0, "coreset_ratio": 0.01}
CUTPASTE_RECIPE = {"epochs": 256, "lr": 0.03, "momentum": 0.9, "weight_decay": 3e-5, "batch_images": 32,
                   "scar_width_min": 2, "scar_width_max": 16, "scar_length_min": 10, "scar_length_max": 25,
                   "scar_angle": 45.0, "recipe": "paper", "bn_stats": None, "warmup_epochs": None,
                   "trunk_lr_scale": None, "keep_best_epoch": False}
RD = {"backbone": "wide_resnet50_2", "weights": "imagenet", "layers": ["layer1", "layer2", "layer3"],
      "image_size": 256, "batch_size": 16, "lr1": 0.005, "betas": [0.5, 0.999], "epochs1": 200, "sigma": 4.0,
      "bottleneck_blocks": 3}
EXPECTED = {
    "patchcore": PATCHCORE,
    "cutpaste": {**PATCHCORE, **CUTPASTE_RECIPE, "patch_area_min": 0.02, "patch_area_max": 0.15,
                 "patch_aspect_max": 3.3},
    "cutswap": {**PATCHCORE, **CUTPASTE_RECIPE, "saliency_net": "vgg16", "saliency_weights": "imagenet",
                "layer_set": [0, 1, 2, 3, 4], "maps_per_image": 5, "k": 4, "cluster_select": "max",
                "anchor_strategy": "kmeans"},
    "rd": {**RD, "cpam": False, "stage1": False, "stage2": False},
    "siamese-unet": {**RD, "cpam": True, "stage1": True, "stage2": True, "epochs2": 20, "anomaly_source": "real",
                     "n_anomalies": 10, "stage2_anomalies": "stage1", "n_normal_shots": None},
}
# what the papers' text lost: still searched under --budget paper (docs/methods.md lists them)
STILL_SEARCHED = {
    "patchcore": set(),
    "cutpaste": set(),
    "cutswap": {"patch_area_min", "patch_area_max"},
    "rd": {"cosine_reduction"},
    "siamese-unet": {"margin", "lambda_con", "lambda_cos", "p", "lr2", "deviation_scalar", "cosine_reduction"},
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_paper_budget_fixes_every_value_the_papers_state(method):
    spec = get_method(method)
    assert spec.budgets["paper"] == EXPECTED[method]
    # each value is a valid config value, and the config then holds exactly it
    config = from_dict(spec.config_cls, spec.budgets["paper"], method=method)
    for name, value in EXPECTED[method].items():
        assert getattr(config, name) == value, name
    assert paper_deviations(spec, config) == {}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_nothing_the_papers_fix_is_searched_and_every_trial_gets_the_papers_values(method):
    spec = get_method(method)
    bounded = bound_by_budget(load_search_space(method), spec, "paper", log=lambda *_: None)
    assert set(bounded.distributions) == STILL_SEARCHED[method]
    base = resolve_base_config(SweepSpec(dataset="demo", method=method, budget="paper"), bounded)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask(fixed_distributions=bounded.distributions)
        config = build_config(method, base, trial.params, {})
        assert paper_deviations(spec, config) == {}
        for name, value in EXPECTED[method].items():
            assert getattr(config, name) == value, name


def test_paper_deviations_name_what_departs_and_accept_the_papers_alternatives():
    cutswap = get_method("cutswap")
    paper = dict(cutswap.budgets["paper"])
    config = from_dict(cutswap.config_cls, {**paper, "coreset_ratio": 0.001})  # the paper's other ratio
    assert paper_deviations(cutswap, config) == {}
    config = from_dict(cutswap.config_cls, {**paper, "backbone": "tf_efficientnet_lite0", "maps_per_image": 1,
                                            "recipe": "preserve"})
    assert paper_deviations(cutswap, config) == {"backbone": "tf_efficientnet_lite0", "maps_per_image": 1,
                                                 "recipe": "preserve"}
    siamese = get_method("siamese-unet")
    paper = dict(siamese.budgets["paper"])
    ours_s = from_dict(siamese.config_cls, {**paper, "anomaly_source": "synthetic", "n_normal_shots": 16})
    assert paper_deviations(siamese, ours_s) == {}  # Ours(s), few-shot: both the paper's settings
    assert paper_deviations(siamese, from_dict(siamese.config_cls, {**paper, "n_anomalies": 5})) == {"n_anomalies": 5}
    assert paper_deviations(siamese, from_dict(siamese.config_cls, {**paper, "n_normal_shots": 8})) == {
        "n_normal_shots": 8}


def test_a_paper_run_records_whether_it_is_the_papers_setting():
    from raybench.sweep.plan import paper_setting_tags
    spec = get_method("cutswap")
    paper = from_dict(spec.config_cls, spec.budgets["paper"])
    assert paper_setting_tags("cutswap", "paper", paper) == {"paper_setting": "yes"}
    offline = from_dict(spec.config_cls, {**spec.budgets["paper"], "backbone": "tf_efficientnet_lite0",
                                          "saliency_net": "tf_efficientnet_lite0"})
    assert paper_setting_tags("cutswap", "paper", offline) == {
        "paper_setting": "no", "paper_deviations": "backbone=tf_efficientnet_lite0, saliency_net=tf_efficientnet_lite0"}
    assert paper_setting_tags("cutswap", "default", offline) == {}  # only paper runs carry the tag
