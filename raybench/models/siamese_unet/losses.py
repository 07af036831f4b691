"""Siamese U-Net losses (paper eq. 1, 2, 6, 7, 8) as small pure functions on lists of per-layer
feature maps (N, C, H, W). Cosines are always computed in float32: under bf16 autocast a 1 - cos
near 0 would otherwise be lost to rounding."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from raybench.models.common import gaussian_blur, upsample_maps

Features = Sequence[torch.Tensor]


def cosine_distance_maps(teacher: Features, student: Features) -> list[torch.Tensor]:
    """Per layer, 1 - cos along channels at every position: list of (N, H_i, W_i)."""
    return [1.0 - F.cosine_similarity(t.float(), s.float(), dim=1) for t, s in zip(teacher, student)]


def cosine_distance_loss(teacher: Features, student: Features, reduction: str = "flatten") -> torch.Tensor:
    """Eq. 1: mean over layers (and samples) of 1 - cos(T_i, S_i).

    The text leaves open which vectors the cosine compares. `flatten` (the method's default): one
    cosine per sample between the whole flattened layer outputs, as RD's released code and
    anomalib train it; large-norm positions dominate, so the student is not pushed to copy every
    weak position exactly. `position`: at every position along channels, averaged (RD's paper,
    eq. 3, and the quantity the anomaly map sums). Measured with rd (random resnet18, 64 px, 3 seeds):
    flatten gave pixel AUROC 0.699 vs 0.564 on KolektorSDD and 0.559 vs 0.542 on Magnetic Tile, image
    AUROC within the seeds' spread (0.566 vs 0.575, 0.537 vs 0.558).
    """
    if reduction == "position":
        maps = cosine_distance_maps(teacher, student)
        return torch.stack([m.mean() for m in maps]).mean()
    if reduction == "flatten":
        return torch.stack([(1.0 - F.cosine_similarity(t.float().flatten(1), s.float().flatten(1), dim=1)).mean()
                            for t, s in zip(teacher, student)]).mean()
    raise ValueError(f"unknown cosine reduction {reduction!r}; expected position|flatten")


def anomaly_map(teacher: Features, student: Features, image_size: int, sigma: float) -> torch.Tensor:
    """Eq. 2: sum over layers of the 1 - cos maps upsampled to the image, then Gaussian smoothing
    (sigma=4 as in reverse distillation). Returns (N, image_size, image_size)."""
    maps = cosine_distance_maps(teacher, student)
    total = sum(upsample_maps(m, image_size) for m in maps)
    return gaussian_blur(total, sigma)


def _layer_cosine(a: torch.Tensor, b: torch.Tensor, reduction: str) -> torch.Tensor:
    """One cosine per sample between two layer outputs (N, C, H, W) -> (N,).

    `pooled` (default): average each map over positions to a C-vector first. N_aug is N rotated
    and A is another image, so neither pair is spatially aligned with N; a position-wise (or
    flattened) cosine would score the rotation itself as dissimilarity, pushing the decoder to be
    rotation-invariant position by position instead of comparing what the images contain.
    `flatten`: cosine of the whole flattened map (position-aligned, as RD's training loss).
    """
    if reduction == "pooled":
        a, b = a.float().mean(dim=(2, 3)), b.float().mean(dim=(2, 3))
    elif reduction == "flatten":
        a, b = a.float().flatten(1), b.float().flatten(1)
    else:
        raise ValueError(f"unknown contrastive reduction {reduction!r}; expected pooled|flatten")
    return F.cosine_similarity(a, b, dim=1)


def contrastive_loss(normal: Features, normal_aug: Features, anomalous: Features, margin: float,
                     reduction: str = "pooled") -> torch.Tensor:
    """Eq. 6: mean over layers (and samples) of max(cos(N_i, A_i) - cos(N_i, Naug_i) + margin, 0)."""
    per_layer = []
    for n, n_aug, a in zip(normal, normal_aug, anomalous):
        negative = _layer_cosine(n, a, reduction)
        positive = _layer_cosine(n, n_aug, reduction)
        per_layer.append(torch.clamp(negative - positive + margin, min=0).mean())
    return torch.stack(per_layer).mean()


def stage1_loss(contrastive: torch.Tensor, cosine: torch.Tensor, lambda_con: float,
                lambda_cos: float) -> torch.Tensor:
    """Eq. 7."""
    return lambda_con * contrastive + lambda_cos * cosine


def layer_scalars(teacher: Features, student: Features, how: str) -> torch.Tensor:
    """S_i of eq. 8 for every sample and layer: (N, n_layers).

    The paper does not say how a layer output becomes a scalar. We use layer i's 1 - cos map
    between teacher and student (the quantity the anomaly map is made of), reduced by:
    `max` (default): the image score at inference is the max of the map, so pushing the max of
    anomalous images past p and every normal position to 0 sharpens exactly the image-level
    separation the deviation stage is meant for, without asking a small defect's whole image to
    look anomalous (which `mean` does, at the cost of false positives on the defect's surroundings).
    `mean`: the layer's mean 1 - cos (smoother gradient, every position contributes).
    """
    maps = cosine_distance_maps(teacher, student)
    if how == "max":
        return torch.stack([m.flatten(1).amax(dim=1) for m in maps], dim=1)
    if how == "mean":
        return torch.stack([m.flatten(1).mean(dim=1) for m in maps], dim=1)
    raise ValueError(f"unknown deviation scalar {how!r}; expected max|mean")


def deviation_loss(scalars: torch.Tensor, labels: torch.Tensor, p: float) -> torch.Tensor:
    """Eq. 8: mean over samples and layers of (1 - y)|S_i| + y * max(0, p - S_i).

    scalars: (N, n_layers) or (N,); labels: (N,) with 0 normal, 1 anomalous.
    """
    if scalars.ndim == 1:
        scalars = scalars[:, None]
    y = labels.to(scalars.dtype)[:, None]
    per = (1 - y) * scalars.abs() + y * torch.clamp(p - scalars, min=0)
    return per.mean()
