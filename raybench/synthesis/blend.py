"""Synthetic anomalies by patch blending (Siamese U-Net's synthesis, after NSA [15]).

A patch is cropped from one normal image (the source), resized by a random factor per axis and
alpha-blended onto a *different* normal image (the destination), several times. Blending an
image onto itself makes defects too subtle, so source and destination are always distinct
images. NSA uses Poisson image editing; we alpha-blend with a random opacity, which needs no
solver and keeps the pasted texture visible.

Objects: the patch is cut from the source's foreground and pasted only onto the destination's
foreground (the mask is clipped to it), so no background is pasted and nothing lands beside the
object. The foreground is estimated simply: pixels whose colour differs from the median colour
of the image border by more than a threshold (industrial objects are shot on a plain
background), cleaned with a binary opening. When that finds almost nothing (the object touches
every border, or the background is not plain) the whole image counts as foreground, as for a
texture; `foreground_mask(..., return_found=True)` tells the caller.

Everything random comes from the numpy Generator passed in: same generator state, same output.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

FOREGROUND_THRESHOLD = 0.12  # max-abs colour difference from the border colour, images in [0, 1]
MIN_FOREGROUND_FRACTION = 0.02


def foreground_mask(image: np.ndarray, threshold: float = FOREGROUND_THRESHOLD,
                    border: int = 2, return_found: bool = False):
    """(3, H, W) in [0, 1] -> bool (H, W) foreground estimate (see module docstring)."""
    frame = np.concatenate([image[:, :border].reshape(3, -1), image[:, -border:].reshape(3, -1),
                            image[:, :, :border].reshape(3, -1), image[:, :, -border:].reshape(3, -1)], axis=1)
    background = np.median(frame, axis=1)
    mask = np.abs(image - background[:, None, None]).max(axis=0) > threshold
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))  # drops specks of noise
    found = mask.mean() >= MIN_FOREGROUND_FRACTION
    if not found:
        mask = np.ones_like(mask)
    return (mask, bool(found)) if return_found else mask


def _resize(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(patch))[None].float()
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()


def _pick_top_left(region: np.ndarray, box_h: int, box_w: int, rng: np.random.Generator,
                   min_coverage: float = 0.9) -> tuple[int, int]:
    """Top-left corner of a box_h x box_w box inside the image whose centre is in `region` and
    which lies (mostly, `min_coverage`) inside the region; relaxed step by step if none does.
    Last resort (a region too thin or too close to the border for any centred box): a box that
    covers a random region pixel, so a non-empty region always gets at least one pixel."""
    h, w = region.shape
    coverage = ndimage.uniform_filter(region.astype(np.float32), size=(box_h, box_w), mode="constant")
    fits = np.zeros_like(region)
    fits[box_h // 2:h - (box_h - box_h // 2) + 1, box_w // 2:w - (box_w - box_w // 2) + 1] = True
    for candidates in (region & fits & (coverage >= min_coverage), region & fits):
        if candidates.any():
            ys, xs = np.nonzero(candidates)
            i = rng.integers(len(ys))
            return int(ys[i]) - box_h // 2, int(xs[i]) - box_w // 2
    ys, xs = np.nonzero(region if region.any() else np.ones_like(region))
    i = rng.integers(len(ys))
    top = int(np.clip(ys[i] - rng.integers(box_h), 0, h - box_h))
    left = int(np.clip(xs[i] - rng.integers(box_w), 0, w - box_w))
    return top, left


def blend_patches(destination: np.ndarray, source: np.ndarray, rng: np.random.Generator, *,
                  object_like: bool = False, n_patches: tuple[int, int] = (1, 3),
                  patch_fraction: tuple[float, float] = (0.06, 0.25),
                  scale: tuple[float, float] = (0.5, 2.0),
                  opacity: tuple[float, float] = (0.6, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Blend 1..n random patches of `source` onto `destination` (both (3, H, W) in [0, 1]).

    Returns the blended image (3, H, W) float32 and its mask (H, W) uint8; the mask is never empty.
    """
    out = destination.astype(np.float32).copy()
    _, h, w = out.shape
    mask = np.zeros((h, w), np.uint8)
    src_region = foreground_mask(source) if object_like else np.ones((h, w), bool)
    dst_region = foreground_mask(destination) if object_like else np.ones((h, w), bool)
    count = int(rng.integers(n_patches[0], n_patches[1] + 1))
    for _ in range(count):
        ph = max(2, int(h * rng.uniform(*patch_fraction)))
        pw = max(2, int(w * rng.uniform(*patch_fraction)))
        sy, sx = _pick_top_left(src_region, ph, pw, rng)
        patch = source[:, sy:sy + ph, sx:sx + pw]
        th = int(np.clip(ph * rng.uniform(*scale), 2, h - 2))
        tw = int(np.clip(pw * rng.uniform(*scale), 2, w - 2))
        patch = _resize(patch, th, tw)
        top, left = _pick_top_left(dst_region, th, tw, rng)
        inside = dst_region[top:top + th, left:left + tw]
        alpha = float(rng.uniform(*opacity)) * inside  # clipped to the destination's foreground
        window = out[:, top:top + th, left:left + tw]
        window[:] = (1 - alpha) * window + alpha * patch
        mask[top:top + th, left:left + tw] |= inside.astype(np.uint8)
    if not mask.any():  # cannot happen: _pick_top_left always covers a region pixel
        raise AssertionError("synthesis produced an empty mask")
    return np.clip(out, 0, 1), mask


def synthesize(normals: torch.Tensor, count: int, rng: np.random.Generator, *,
               object_like: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """`count` synthetic anomalies from a stack of normal images (N >= 2, (N, 3, S, S) in [0, 1]).

    Returns images (count, 3, S, S) float32, masks (count, S, S) uint8 and the (source,
    destination) index pairs used, source != destination always.
    """
    if len(normals) < 2:
        raise ValueError("synthesis needs at least two normal images (source != destination)")
    images, masks, pairs = [], [], []
    for _ in range(count):
        dst, src = rng.choice(len(normals), size=2, replace=False)
        image, mask = blend_patches(normals[dst].float().cpu().numpy(), normals[src].float().cpu().numpy(),
                                    rng, object_like=object_like)
        images.append(torch.from_numpy(image))
        masks.append(torch.from_numpy(mask))
        pairs.append((int(src), int(dst)))
    return torch.stack(images), torch.stack(masks), np.array(pairs, dtype=np.int64)
