"""Multilevel LayerCAM saliency (Jiang et al., "LayerCAM", TIP 2021) on any timm CNN classifier.

For each chosen level l with activations A_l (N, C, h, w) and the score y_c of the net's own top
class c:  weights = ReLU(dy_c/dA_l) (element-wise),  map = ReLU(sum_C weights * A_l),  then min-max
normalised to [0, 1] per image. Maps stay at each level's own size; `upsample_saliency` brings them
to image size.

Levels (five per backbone, numbered 0-4 from shallow to deep; `saliency_levels` names them):
- VGG (the CutSwap paper's vgg16): the five max-pools of `features`, i.e. torchvision/timm indices
  4, 9, 16, 23, 30, so levels 0-4 are the paper's layers (30, 5, ...) one to one;
- any other timm CNN: the net's feature stages from timm's `feature_info` (tf_efficientnet_lite0:
  blocks.0, blocks.1, blocks.2, blocks.4, blocks.6, strides 2-32; ResNets: act1, layer1-layer4).
Activations are read with forward hooks, so the net runs its own forward unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raybench.models.backbones import Normalise, create_timm_model, input_normalisation

DEFAULT_LEVELS = (0, 1, 2, 3, 4)


def saliency_levels(net: nn.Module, name: str) -> list[str]:
    """Module names of the LayerCAM levels of a timm classifier (see module docstring)."""
    features = getattr(net, "features", None)
    if name.startswith("vgg") and isinstance(features, nn.Sequential):
        return [f"features.{i}" for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    info = getattr(net, "feature_info", None)
    if not info:
        raise ValueError(f"{name!r} lists no feature stages (timm feature_info); LayerCAM needs a timm CNN")
    return [entry["module"] for entry in info]


class SaliencyExtractor(nn.Module):
    """Frozen classifier -> LayerCAM maps at the chosen `levels` (indices into saliency_levels)."""

    def __init__(self, name: str = "vgg16", levels=DEFAULT_LEVELS, weights: str = "imagenet"):
        super().__init__()
        self.name, self.layers = name, sorted(int(i) for i in levels)
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"LayerCAM needs distinct level indices, got {list(levels)}")
        self.net = create_timm_model(name, weights)
        self.weights = weights
        names = saliency_levels(self.net, name)
        if self.layers[0] < 0 or self.layers[-1] >= len(names):
            raise ValueError(f"saliency levels {self.layers} out of range for {name} (0..{len(names) - 1}: {names})")
        self.level_modules = [names[i] for i in self.layers]
        for module in self.net.modules():
            if getattr(module, "inplace", False) is True:
                module.inplace = False  # an in-place activation would overwrite a captured activation
        self.net.eval().requires_grad_(False)
        self.normalise = Normalise(*input_normalisation(self.net))

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # frozen: dropout off, always
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N, 3, S, S) in [0, 1] -> one (N, h_l, w_l) float32 map in [0, 1] per level."""
        captured: dict[str, torch.Tensor] = {}
        hooks = [self.net.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: captured.__setitem__(n, out)) for n in self.level_modules]
        try:
            with torch.enable_grad():
                x = self.normalise(images.float()).requires_grad_(True)
                logits = self.net(x)
                activations = [captured[n] for n in self.level_modules]
                # images are independent in eval mode, so the gradient of the summed top scores is
                # each image's own gradient: one backward pass serves the whole batch
                top = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
                grads = torch.autograd.grad(top, activations)
        finally:
            for hook in hooks:
                hook.remove()
        maps = []
        for act, grad in zip(activations, grads):
            cam = F.relu((F.relu(grad.float()) * act.float()).sum(dim=1))
            maps.append(normalise_maps(cam.detach()))
        return maps


def normalise_maps(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max to [0, 1] per map (N, h, w). A flat map (no saliency at all) becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = (flat.max(dim=1).values[:, None, None] - low)
    return torch.where(span > eps, (maps - low) / span.clamp_min(eps), torch.zeros_like(maps))


def upsample_saliency(maps: list[torch.Tensor], size: int) -> torch.Tensor:
    """Per-layer maps [(N, h_l, w_l)] -> (N, L, size, size) float32, bilinear, clamped to [0, 1]."""
    up = [F.interpolate(m.float()[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
          for m in maps]
    return torch.stack(up, dim=1).clamp_(0.0, 1.0)


@torch.no_grad()
def compute_saliency(extractor: SaliencyExtractor, images: torch.Tensor, batch_size: int,
                     device: torch.device, autocast: bool = False) -> list[torch.Tensor]:
    """LayerCAM maps of every image, once (the net is frozen, so they never change during training).

    Returns one float16 tensor (N, h_l, w_l) per layer on `device`.
    """
    per_layer: list[list[torch.Tensor]] = [[] for _ in extractor.layers]
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            maps = extractor(batch)
        for store, m in zip(per_layer, maps):
            store.append(m.to(torch.float16))
    return [torch.cat(store) for store in per_layer]
