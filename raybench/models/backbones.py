"""timm feature extractors with explicit weights (raybench.models.weights: an installed package,
the hub, a local file, or `random`) and the input normalisation of each backbone's own pretrained
config (tf_efficientnet_lite: mean = std = 0.5; ResNets, VGG: ImageNet's mean and std).

Random initialisation happens only when asked for.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from raybench.models.weights import create_timm_model


def layer_indices(layers: list[str] | tuple[str, ...]) -> list[int]:
    """"layerN" -> timm `out_indices` N: the N-th feature stage of any timm features_only model
    (index 0 is the stride-2 stem level). ResNets: layer1..layer4 (stride 4..32) as torchvision
    names them; EfficientNet(-Lite): layer1..layer4 are the stride 4, 8, 16, 32 stages
    (blocks.1, blocks.2, blocks.4, blocks.6), so layer2 + layer3 is stride 8 + 16 on both."""
    out = []
    for name in layers:
        match = re.fullmatch(r"layer([1-4])", str(name))
        if not match:
            raise ValueError(f"unknown layer {name!r}; expected layer1..layer4 (feature stages of stride 4..32)")
        out.append(int(match.group(1)))
    return out


def input_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the model's own pretrained config (known without pretrained weights)."""
    import timm.data
    config = timm.data.resolve_model_data_config(model)
    return tuple(float(v) for v in config["mean"]), tuple(float(v) for v in config["std"])


class Normalise(nn.Module):
    """[0, 1] images -> (x - mean) / std; the values are persistent buffers, so every checkpoint
    keeps the normalisation it was trained with."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def values(self) -> dict:
        return {"mean": [round(float(v), 6) for v in self.mean.flatten()],
                "std": [round(float(v), 6) for v in self.std.flatten()]}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class FeatureExtractor(nn.Module):
    """Images in [0, 1] (N, 3, H, W) -> list of feature maps of the chosen layers.

    The backbone's own normalisation happens inside so every caller feeds the same [0, 1] tensors.
    """

    def __init__(self, name: str, layers, weights: str, frozen: bool = True):
        super().__init__()
        self.name, self.layers = name, list(layers)
        self.model = create_timm_model(name, weights, features_only=True, out_indices=layer_indices(layers))
        self.weights = weights
        self.normalise = Normalise(*input_normalisation(self.model))
        self.frozen = frozen
        if frozen:
            self.model.eval()
            self.model.requires_grad_(False)

    @property
    def channels(self) -> list[int]:
        return list(self.model.feature_info.channels())

    @property
    def reductions(self) -> list[int]:
        return list(self.model.feature_info.reduction())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()  # frozen batch-norm statistics stay frozen
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.model(self.normalise(images))
