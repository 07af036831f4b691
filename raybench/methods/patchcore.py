"""`patchcore`: an untuned (ImageNet or random) backbone + PatchCore. The leaderboard's baseline
("ResNet18 + PC" in the CutSwap paper) and the scoring stage CutSwap and CutPaste share."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from raybench.config import ranged
from raybench.data.layout import Category
from raybench.data.tensors import iterate_batches, load_images
from raybench.methods.base import FitResult, MethodSpec, register
from raybench.models.backbones import FeatureExtractor
from raybench.models.patchcore import PatchCore


@dataclass
class PatchCoreConfig:
    seed: int = ranged(0, 0)
    image_size: int = ranged(256, 16)
    weights: str = "imagenet"  # imagenet | random | path to a weights file
    backbone: str = "resnet18"
    layers: list[str] = field(default_factory=lambda: ["layer2", "layer3"])
    coreset_ratio: float = ranged(0.01, 0, 1, low_open=True)  # CutSwap paper: 0.001 and 0.01
    projection_dim: int = ranged(128, 1)  # random projection for the coreset's distances
    patch_size: int = ranged(3, 1)  # locally aware neighbourhood
    sigma: float = ranged(4.0, 0)  # Gaussian smoothing of the maps
    batch_size: int = ranged(32, 1)


def build(config: PatchCoreConfig) -> PatchCore:
    extractor = FeatureExtractor(config.backbone, config.layers, config.weights)
    return PatchCore(extractor, config.image_size, config.patch_size, config.sigma)


def fit_memory_bank(model: PatchCore, category: Category, config, device) -> dict:
    """Shared by every PatchCore-scored method: embed the normal training images, subsample."""
    train = load_images(category.train, config.image_size)
    model.to(device)
    return model.fit(iterate_batches(train, config.batch_size, device), config.coreset_ratio,
                     config.projection_dim, config.seed)


def fit(config: PatchCoreConfig, category: Category, device: torch.device, on_epoch=None) -> FitResult:
    torch.manual_seed(config.seed)
    model = build(config)
    info = fit_memory_bank(model, category, config, device)
    return FitResult(model, [], info)


SPEC = register(MethodSpec(
    name="patchcore", config_cls=PatchCoreConfig, fit=fit, build=build,
    # paper: the CutSwap paper's "ResNet18 + PC" with PatchCore's own settings (layers 2 + 3, 3x3
    # neighbourhood, sigma 4, 256 px); it reports coreset 0.01 and 0.001, both the paper's setting
    budgets={"smoke": {"image_size": 64, "coreset_ratio": 0.05}, "default": {},
             "paper": {"backbone": "resnet18", "weights": "imagenet", "image_size": 256,
                       "layers": ["layer2", "layer3"], "patch_size": 3, "sigma": 4.0, "coreset_ratio": 0.01}},
    paper_alternatives={"coreset_ratio": (0.01, 0.001)},
    description="untuned backbone + PatchCore (memory bank, greedy coreset, nearest neighbour)",
))
