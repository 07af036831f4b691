"""Batched patch geometry shared by CutSwap and CutPaste: move (optionally rotated) rectangles of
pixels from one place to another with one gather, on whatever device the images live on.

Coordinates: pixel (i, j) covers [i, i+1) x [j, j+1); a region is a rectangle of integer size
(h, w) centred at a float point and rotated by an angle. With angle 0 and centre = corner +
size / 2, the region is exactly the integer block [corner, corner + size) and the moved content
is an exact copy (no resampling), which is what keeps a plain swap a pixel permutation.
"""
from __future__ import annotations

import torch


def rand(shape, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=device)


def uniform(low, high, shape, gen: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * rand(shape, gen, device)


def transplant_coordinates(size: int, dst_center: torch.Tensor, src_center: torch.Tensor,
                           hw: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch of B regions: which pixels are inside the destination region (B, S, S) bool, and
    the flat source index each destination pixel copies from (B, S, S) long.

    The destination region is the source rectangle (axis-aligned, `hw` = (h, w), centred at
    `src_center`) rotated by `angle` (radians) and centred at `dst_center`.
    """
    device = dst_center.device
    coords = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    rel_y = coords[None, :, None] - dst_center[:, 0, None, None]
    rel_x = coords[None, None, :] - dst_center[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    # back-rotate into the source rectangle's frame
    q_y = cos * rel_y - sin * rel_x
    q_x = sin * rel_y + cos * rel_x
    half_h, half_w = (hw[:, 0].float() / 2)[:, None, None], (hw[:, 1].float() / 2)[:, None, None]
    inside = (q_y.abs() < half_h) & (q_x.abs() < half_w)
    src_y = torch.floor(src_center[:, 0, None, None] + q_y).long().clamp_(0, size - 1)
    src_x = torch.floor(src_center[:, 1, None, None] + q_x).long().clamp_(0, size - 1)
    return inside, src_y * size + src_x


def gather_pixels(images: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """images (B, C, S, S), flat_index (B, S, S) -> images[b, :, index] (B, C, S, S)."""
    b, c, h, w = images.shape
    idx = flat_index.reshape(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, idx).view(b, c, h, w)


def weak_augment(images: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Photometric jitter of brightness, contrast and saturation by factors in [1-s, 1+s] (CutPaste's
    ColorJitter(0.1, ...)); hue is left alone (most inspection images are grey). Photometric only,
    on purpose: geometry stays put, so the cached saliency of the image still lines up with it."""
    if strength <= 0:
        return images
    b, device = images.shape[0], images.device
    factors = uniform(1 - strength, 1 + strength, (3, b, 1, 1, 1), gen, device)
    out = images * factors[0]
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factors[1] + mean
    grey = (0.299 * out[:, :1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
    out = (out - grey) * factors[2] + grey
    return out.clamp_(0.0, 1.0)


def scaled_range(pixels_at_256: list | tuple, size: int) -> tuple[float, float]:
    """A (low, high) size range stated at 256 px, scaled to `size` px (at least 1 px)."""
    low, high = (max(1.0, float(v) * size / 256.0) for v in pixels_at_256)
    if low > high:
        raise ValueError(f"size range {pixels_at_256}: low > high")
    return low, high


def sample_int(low: float, high: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """n integers drawn uniformly from round([low, high]), as long."""
    return torch.round(uniform(low, high, (n,), gen, device)).long().clamp_(min=1)
