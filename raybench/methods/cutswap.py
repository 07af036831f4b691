"""`cutswap` and `cutpaste`: self-supervised 3-way fine-tuning of the `backbone` trunk (ResNet18 by
default, as the paper; tf_efficientnet_lite0 where only packaged ImageNet weights exist), then
PatchCore on the fine-tuned layer2 + layer3 features (the CutSwap paper's "CutSwap + PC" and "CutPaste + PC").

The training loop, its recipe (`recipe: preserve|paper`) and the validation-chosen epoch are
shared: raybench.methods.finetune. This module has the two augmentations, configs and budgets.

CutSwap specifics (paper: "we set (.) to (30, 5, 4, 512)", symbols lost in extraction): read as
(N, L, k, d) = 30 LayerCAM layers of VGG16 `features` (indices up to 30), L = 5 maps taken from
them (layers 4, 9, 16, 23, 30: the max-pools), k = 4 clusters, d = 512 the ResNet18 embedding.
`layer_set` numbers the saliency net's five levels 0-4 (VGG16: those max-pools; other timm CNNs:
their feature stages, see raybench.synthesis.saliency). The saliency net has its own weights
(`saliency_weights`, ImageNet by default whatever the trunk's `weights`; random only when asked).
LayerCAM runs once per training image before training (the saliency net is frozen and the weak
augmentation is photometric, so the maps stay valid), and k-means once per map.
Each image yields one CutSwap and one scar negative per selected map per step: `maps_per_image`
(default 1, i.e. 96 samples per 32 images) of its L maps are drawn without replacement each step;
`maps_per_image = 5` reads the paper's "five positive-negative pairs per image" literally.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from raybench.config import ranged
from raybench.data.layout import Category
from raybench.methods.base import FitResult, MethodSpec, register
from raybench.methods.finetune import (RECIPES, SelfSupervisedConfig, build, fine_tune,  # noqa: F401
                                       resolve_recipe)
from raybench.models.weights import describe as describe_weights
from raybench.synthesis.cutpaste import CutPasteSettings, cutpaste, cutpaste_scar
from raybench.synthesis.cutswap import SwapSettings, build_anchor_cache, cutswap, select_intervals
from raybench.synthesis.patches import weak_augment
from raybench.synthesis.saliency import SaliencyExtractor, compute_saliency


@dataclass
class CutPasteConfig(SelfSupervisedConfig):
    patch_area_min: float = ranged(0.02, 0, 1, low_open=True, high_open=True)
    patch_area_max: float = ranged(0.15, 0, 1, low_open=True, high_open=True)
    patch_jitter: float = ranged(0.1, 0, 1)


@dataclass
class CutSwapConfig(SelfSupervisedConfig):
    saliency_net: str = "vgg16"  # any timm CNN classifier, e.g. tf_efficientnet_lite0 (no hub needed)
    saliency_weights: str = "imagenet"  # imagenet | random | path: independent of the trunk's `weights`
    layer_set: list[int] = ranged(factory=lambda: [0, 1, 2, 3, 4], low=0, high=4)  # saliency levels; L = len(layer_set)
    maps_per_image: int = ranged(1, 1)
    k: int = ranged(4, 1)
    kmeans_iters: int = ranged(30, 1)
    cluster_select: Literal["max", "min", "random"] = "max"  # paper: max; Tab. VI ablations: min, random
    anchor_strategy: Literal["kmeans", "sorting"] = "kmeans"
    top_pixels: int = ranged(300, 1)  # 'sorting' ablation: the paper's top 300 pixels at 256 px
    patch_area_min: float = ranged(0.02, 0, 1, low_open=True, high_open=True)
    patch_area_max: float = ranged(0.11, 0, 1, low_open=True, high_open=True)  # <= 1/9: two equal patches must fit side by side
    saliency_batch_size: int = ranged(16, 1)


# `--budget paper`: every value the papers state (CutSwap's implementation details, and CutPaste's
# recipe, which CutSwap adopts; PatchCore's scoring stage), fixed and taken out of the search.
# What their text lost stays searchable (docs/methods.md: "Values the papers leave open").
_PATCHCORE_PAPER = {"backbone": "resnet18", "weights": "imagenet", "image_size": 256,
                    "layers": ["layer2", "layer3"], "patch_size": 3, "sigma": 4.0, "coreset_ratio": 0.01}
_CUTPASTE_RECIPE = {"epochs": 256, "lr": 0.03, "momentum": 0.9, "weight_decay": 3e-5, "batch_images": 32,
                    "scar_width_min": 2, "scar_width_max": 16, "scar_length_min": 10, "scar_length_max": 25,
                    "scar_angle": 45.0, "recipe": "paper", "bn_stats": None, "warmup_epochs": None,
                    "trunk_lr_scale": None, "keep_best_epoch": False}
CUTPASTE_PAPER = {**_PATCHCORE_PAPER, **_CUTPASTE_RECIPE,
                  "patch_area_min": 0.02, "patch_area_max": 0.15, "patch_aspect_max": 3.3}
# "(30, 5, 4, 512)": LayerCAM up to VGG16 layer 30, L = 5 maps (layers 4, 9, 16, 23, 30), k = 4,
# d = 512 (ResNet18); "five positive-negative pairs per image"; the max-saliency k-means cluster
CUTSWAP_PAPER = {**_PATCHCORE_PAPER, **_CUTPASTE_RECIPE,
                 "saliency_net": "vgg16", "saliency_weights": "imagenet", "layer_set": [0, 1, 2, 3, 4],
                 "maps_per_image": 5, "k": 4, "cluster_select": "max", "anchor_strategy": "kmeans"}
# the papers report PatchCore at two coreset ratios: either is the paper's setting
PAPER_ALTERNATIVES = {"coreset_ratio": (0.01, 0.001)}

_SMOKE = {"image_size": 64, "epochs": 2, "batch_images": 16, "coreset_ratio": 0.05}
BUDGETS = {
    "smoke": _SMOKE,
    "default": {"epochs": 32},
    "paper": CUTSWAP_PAPER,
}
CUTPASTE_BUDGETS = {**BUDGETS, "paper": CUTPASTE_PAPER}


def _scar_ranges(config: SelfSupervisedConfig) -> dict:
    return {"scar_width": (config.scar_width_min, config.scar_width_max),
            "scar_length": (config.scar_length_min, config.scar_length_max),
            "scar_angle_deg": config.scar_angle}


class CutPasteSynthesis:
    def __init__(self, config: CutPasteConfig, images, device):
        self.settings = CutPasteSettings(area=(config.patch_area_min, config.patch_area_max),
                                         aspect_max=config.patch_aspect_max, patch_jitter=config.patch_jitter,
                                         **_scar_ranges(config))
        self.settings.validate()
        self.jitter = config.jitter

    def __call__(self, images, index, gen):
        positives = weak_augment(images, self.jitter, gen)
        patch, _ = cutpaste(positives, self.settings, gen)
        scar, _ = cutpaste_scar(positives, self.settings, gen)
        return positives, patch, scar

    def summary(self) -> dict:
        return {}


def build_saliency(config: CutSwapConfig) -> SaliencyExtractor:
    return SaliencyExtractor(config.saliency_net, config.layer_set, config.saliency_weights)


def preflight_cutswap(config: CutSwapConfig) -> list[str]:
    """Before any trial: the trunk's and the saliency net's weights load (a bad file fails here)."""
    build(config)
    build_saliency(config)
    return [f"saliency: {describe_weights(config.saliency_net, config.saliency_weights)}, "
            f"levels {config.layer_set}"]


class CutSwapSynthesis:
    """Saliency once (LayerCAM + k-means per image and layer), then swaps drawn per step."""

    def __init__(self, config: CutSwapConfig, images, device):
        self.settings = SwapSettings(area=(config.patch_area_min, config.patch_area_max),
                                     aspect_max=config.patch_aspect_max, **_scar_ranges(config))
        self.settings.validate()
        if not 1 <= config.maps_per_image <= len(config.layer_set):
            raise ValueError(f"maps_per_image={config.maps_per_image} must lie in 1..L={len(config.layer_set)}")
        if config.anchor_strategy == "sorting" and config.cluster_select != "max":
            raise ValueError(f"cluster_select={config.cluster_select!r} needs anchor_strategy='kmeans'")
        self.config = config
        start = time.perf_counter()
        extractor = build_saliency(config).to(device)
        use_amp = device.type == "cuda" and config.amp
        maps = compute_saliency(extractor, images, config.saliency_batch_size, device, autocast=use_amp)
        del extractor
        self.anchors = build_anchor_cache(maps, config.image_size, config.anchor_strategy, config.k,
                                          config.top_pixels, config.kmeans_iters)
        self.saliency_seconds = time.perf_counter() - start
        self.outside = torch.zeros((), device=device, dtype=torch.long)
        self.drawn = torch.zeros((), device=device, dtype=torch.long)

    def __call__(self, images, index, gen):
        b, m, n_layers = images.shape[0], self.config.maps_per_image, self.anchors.n_layers
        layers = torch.rand((b, n_layers), generator=gen, device=images.device).argsort(dim=1)[:, :m]
        saliency = self.anchors.upsampled(index)  # (B, L, S, S)
        saliency = saliency[torch.arange(b, device=images.device)[:, None], layers].flatten(0, 1)
        image_index, layer_index = index.repeat_interleave(m), layers.flatten()
        positives = weak_augment(images.repeat_interleave(m, dim=0), self.config.jitter, gen)
        low, high = select_intervals(self.anchors, image_index, layer_index, self.config.cluster_select, gen)
        patch, _, out_patch = cutswap(positives, saliency, low, high, self.settings, gen, scar=False)
        scar, _, out_scar = cutswap(positives, saliency, low, high, self.settings, gen, scar=True)
        self.outside += out_patch.sum() + out_scar.sum()
        self.drawn += 2 * len(positives)
        return positives, patch, scar

    def summary(self) -> dict:
        return {"saliency_seconds": self.saliency_seconds,
                "flat_saliency_fraction": self.anchors.flat_fraction(),
                "second_anchor_outside_cluster_fraction": float(self.outside) / max(1, int(self.drawn))}


def fit_cutswap(config: CutSwapConfig, category: Category, device, on_epoch=None) -> FitResult:
    return fine_tune(config, category, device, on_epoch, CutSwapSynthesis)


def fit_cutpaste(config: CutPasteConfig, category: Category, device, on_epoch=None) -> FitResult:
    return fine_tune(config, category, device, on_epoch, CutPasteSynthesis)


CUTSWAP = register(MethodSpec(
    name="cutswap", config_cls=CutSwapConfig, fit=fit_cutswap, build=build, budgets=BUDGETS, trained=True,
    preflight=preflight_cutswap, paper_alternatives=PAPER_ALTERNATIVES,
    description="`backbone` (ResNet18) fine-tuned on saliency-guided patch swaps (LayerCAM + k-means), then PatchCore",
))
CUTPASTE = register(MethodSpec(
    name="cutpaste", config_cls=CutPasteConfig, fit=fit_cutpaste, build=build, budgets=CUTPASTE_BUDGETS,
    trained=True, paper_alternatives=PAPER_ALTERNATIVES,
    description="`backbone` (ResNet18) fine-tuned on CutPaste 3-way (normal / cutpaste / scar), then PatchCore",
))
