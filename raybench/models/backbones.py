"""timm feature extractors with explicit weights: `imagenet` (the hub), a local file, or `random`.

Random initialisation happens only when asked for. When the hub cannot be reached the error says
so and names `--weights`, instead of quietly training on random features.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from raybench.errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def layer_indices(layers: list[str] | tuple[str, ...]) -> list[int]:
    """ResNet-style names -> timm `out_indices` ("layer2" -> 2; index 0 is the stem)."""
    out = []
    for name in layers:
        match = re.fullmatch(r"layer([1-4])", str(name))
        if not match:
            raise ValueError(f"unknown layer {name!r}; expected layer1..layer4")
        out.append(int(match.group(1)))
    return out


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights only: safetensors, or a torch file read with weights_only=True (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} does not hold a state dict")
    return state


def create_timm_model(name: str, weights: str, **kwargs) -> nn.Module:
    """timm.create_model with raybench's weights policy (see module docstring)."""
    import timm

    if weights == "random":
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights == "imagenet":
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:  # hub unreachable, no weights for this name, ...
            raise WeightsError(
                f"could not fetch ImageNet weights for {name!r} from the model hub ({type(err).__name__}: "
                f"{str(err)[:200]}). Pass --weights PATH to a local weights file, or --weights random "
                f"to train on randomly initialised features on purpose.") from None
    model = timm.create_model(name, pretrained=False, **kwargs)
    state = load_state_file(weights)
    missing, _unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise WeightsError(f"weights file {weights} does not fit {name!r}: missing {missing[:5]}...")
    return model


class FeatureExtractor(nn.Module):
    """Images in [0, 1] (N, 3, H, W) -> list of feature maps of the chosen layers.

    ImageNet normalisation happens inside so every caller feeds the same [0, 1] tensors.
    """

    def __init__(self, name: str, layers, weights: str, frozen: bool = True):
        super().__init__()
        self.name, self.layers = name, list(layers)
        self.model = create_timm_model(name, weights, features_only=True, out_indices=layer_indices(layers))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
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
        return self.model((images - self.mean) / self.std)
