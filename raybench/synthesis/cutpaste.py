"""CutPaste (Li et al., CVPR 2021), 3-way: normal / cutpaste / cutpaste-scar, batched on the device.

- cutpaste: a rectangle of 2-15 % of the image area, aspect ratio log-uniform in [0.3, 3.3], cut at
  a random place, colour-jittered, pasted at another random place (the two may overlap: pasting
  reads the original image, so that is well defined).
- scar: a thin rectangle 2-16 px wide and 10-25 px long (at 256 px, scaled to the image size),
  colour-jittered, rotated by an angle in [-45, 45] degrees, pasted at a random place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from raybench.synthesis.patches import (gather_pixels, sample_int, scaled_range, transplant_coordinates,
                                        uniform, weak_augment)


@dataclass
class CutPasteSettings:
    area: tuple[float, float] = (0.02, 0.15)
    aspect_max: float = 3.3
    scar_width: tuple[float, float] = (2, 16)  # px at 256 px
    scar_length: tuple[float, float] = (10, 25)
    scar_angle_deg: float = 45.0
    patch_jitter: float = 0.1  # colour jitter of the pasted patch

    def validate(self) -> None:
        if not 0 < self.area[0] <= self.area[1] < 1:
            raise ValueError(f"patch area range {self.area}: need 0 < low <= high < 1")
        if self.aspect_max < 1:
            raise ValueError("aspect_max must be >= 1")


def _random_corner(limit: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Uniform integer corner in [0, limit] per sample and axis; limit (B, 2) long."""
    return torch.floor(uniform(0.0, 1.0, tuple(limit.shape), gen, limit.device) * (limit + 1).float()).long()


def paste(images: torch.Tensor, hw: torch.Tensor, src_footprint: torch.Tensor, dst_footprint: torch.Tensor,
          angle: torch.Tensor, jitter: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a jittered (h, w) patch from a random place to another (regions centred in footprints)."""
    size = images.shape[-1]
    src = _random_corner(size - src_footprint, gen).float() + src_footprint.float() / 2
    dst = _random_corner(size - dst_footprint, gen).float() + dst_footprint.float() / 2
    inside, source = transplant_coordinates(size, dst, src, hw, angle)
    donor = weak_augment(images, jitter, gen)
    return torch.where(inside[:, None], gather_pixels(donor, source), images), inside


def cutpaste(images: torch.Tensor, settings: CutPasteSettings, gen: torch.Generator):
    b, size, device = images.shape[0], images.shape[-1], images.device
    area = uniform(settings.area[0], settings.area[1], (b,), gen, device) * size * size
    log_r = math.log(settings.aspect_max)
    aspect = torch.exp(uniform(-log_r, log_r, (b,), gen, device))
    h = torch.sqrt(area * aspect).round().clamp(1, size - 1)
    w = torch.sqrt(area / aspect).round().clamp(1, size - 1)
    hw = torch.stack([h, w], 1).long()
    return paste(images, hw, hw, hw, torch.zeros(b, device=device), settings.patch_jitter, gen)


def cutpaste_scar(images: torch.Tensor, settings: CutPasteSettings, gen: torch.Generator):
    b, size, device = images.shape[0], images.shape[-1], images.device
    w = sample_int(*scaled_range(settings.scar_width, size), b, gen, device)
    h = sample_int(*scaled_range(settings.scar_length, size), b, gen, device)
    hw = torch.stack([h, w], 1).clamp(max=size - 1)
    side = torch.ceil(torch.sqrt((hw.float() ** 2).sum(1))).long().clamp(max=size)
    angle = uniform(-1.0, 1.0, (b,), gen, device) * math.radians(settings.scar_angle_deg)
    return paste(images, hw, hw, torch.stack([side, side], 1), angle, settings.patch_jitter, gen)
