"""Multilevel LayerCAM saliency (Jiang et al., "LayerCAM", TIP 2021) on a VGG-style classifier.

For each chosen layer l with activations A_l (N, C, h, w) and the score y_c of the net's own top
class c:  weights = ReLU(dy_c/dA_l) (element-wise),  map = ReLU(sum_C weights * A_l),  then min-max
normalised to [0, 1] per image. Maps stay at each layer's own size; `upsample_saliency` brings them
to image size.

Layer indices are torchvision-style positions in VGG's `features` Sequential. timm's `vgg16` keeps
that exact layout (`features.0` ... `features.30`, max-pools at 4, 9, 16, 23, 30), so the CutSwap
paper's indices map one to one onto timm's `features[i]`; `SaliencyExtractor` checks that every
index exists and says so if a net lacks a `features` Sequential.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raybench.models.backbones import IMAGENET_MEAN, IMAGENET_STD, create_timm_model

VGG16_POOL_LAYERS = (4, 9, 16, 23, 30)


class SaliencyExtractor(nn.Module):
    """Frozen classifier -> LayerCAM maps at `layers` (indices into `net.features`)."""

    def __init__(self, name: str = "vgg16", layers=VGG16_POOL_LAYERS, weights: str = "imagenet"):
        super().__init__()
        self.name, self.layers = name, sorted(int(i) for i in layers)
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"LayerCAM needs distinct layer indices, got {list(layers)}")
        self.net = create_timm_model(name, weights)
        features = getattr(self.net, "features", None)
        if not isinstance(features, nn.Sequential):
            raise ValueError(f"{name!r} has no `features` Sequential; LayerCAM indices address VGG-style nets")
        if self.layers[0] < 0 or self.layers[-1] >= len(features):
            raise ValueError(f"layer indices {self.layers} out of range for {name}.features (0..{len(features) - 1})")
        for module in self.net.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False  # an in-place ReLU would overwrite a captured activation
        self.net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()  # frozen: dropout off, always
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N, 3, S, S) in [0, 1] -> one (N, h_l, w_l) float32 map in [0, 1] per layer."""
        with torch.enable_grad():
            x = ((images.float() - self.mean) / self.std).requires_grad_(True)
            activations = []
            for i, module in enumerate(self.net.features):
                x = module(x)
                if i in self.layers:
                    activations.append(x)
            logits = self.net.forward_head(x)
            # images are independent in eval mode, so the gradient of the summed top scores is
            # each image's own gradient: one backward pass serves the whole batch
            top = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
            grads = torch.autograd.grad(top, activations)
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
