"""`predict --out` and serve's pictures of one scored image (pure numpy/PIL, no figure per image,
so it keeps up with `predict`): the heat map blended over the image (transparent where the map is
calm, so the image stays readable), the predicted defect region outlined in white, a colour bar
with the pixel cut marked, and the score and verdict in a caption band below the image that is
never clipped (small images are upscaled for display first)."""
from __future__ import annotations

import math

import numpy as np

def _cut(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _as_hwc(image) -> np.ndarray:
    """(3, H, W) or (H, W, 3) or (H, W), any float/uint8 -> (H, W, 3) float in [0, 1]."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.max(initial=0) > 1.0:
        a = a / 255.0
    return np.clip(a, 0.0, 1.0)


MIN_DISPLAY = 256  # shorter side of the displayed image, at least (nearest-neighbour upscaling)
BAR_WIDTH, CAPTION = 14, 18


def map_range(amap: np.ndarray, pixel_threshold) -> tuple[float, float]:
    """The display scale (low, high): half to one and a half times the pixel cut, so the cut sits
    mid-scale and a typical map's calm baseline is not mid-grey; without a cut the map's own span."""
    cut = float(pixel_threshold) if pixel_threshold is not None and math.isfinite(pixel_threshold) else None
    if cut is not None and cut > 0:
        return 0.5 * cut, 1.5 * cut
    low, high = float(np.min(amap)), float(np.max(amap))
    return low, (high if high > low else low + 1.0)


def scaled(amap: np.ndarray, pixel_threshold) -> np.ndarray:
    """The map on its display scale, 0..1 (the pixel cut at 0.5)."""
    low, high = map_range(amap, pixel_threshold)
    return np.clip((np.asarray(amap, np.float32) - low) / (high - low), 0, 1)


def _upscale(a: np.ndarray, k: int) -> np.ndarray:
    return a if k == 1 else np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def predict_overlay(image, amap, score: float, image_threshold, pixel_threshold, vmax: float | None = None):
    """One scored image as a PIL image (see the module docstring). `vmax` is kept for callers of
    the old signature and ignored: the scale is `map_range`'s."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw
    from scipy import ndimage

    base = _as_hwc(image)
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape != base.shape[:2]:
        raise ValueError(f"map {amap.shape} and image {base.shape[:2]} differ in size")
    pixel_cut, image_cut = _cut(pixel_threshold), _cut(image_threshold)
    k = max(1, math.ceil(MIN_DISPLAY / min(amap.shape)))
    base, amap = _upscale(base, k), _upscale(amap, k)
    level = scaled(amap, pixel_cut)
    heat = colormaps["turbo"](level)[..., :3]
    alpha = (0.15 + 0.55 * level)[..., None]  # calm pixels keep the image, hot ones show the heat
    out = (1 - alpha) * base + alpha * heat
    if pixel_cut is not None:
        region = amap >= pixel_cut
        edge = region & ~ndimage.binary_erosion(region, iterations=max(1, min(amap.shape) // 128))
        out[edge] = 1.0
    h, w = amap.shape
    canvas = Image.new("RGB", (w + 8 + BAR_WIDTH + 44, h + CAPTION + 6), (0, 0, 0))
    canvas.paste(Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8)), (0, 0))
    ramp = colormaps["turbo"](np.linspace(1, 0, h))[:, :3]  # top: hot
    bar = np.repeat(ramp[:, None, :], BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray((bar * 255).astype(np.uint8)), (w + 8, 0))
    draw = ImageDraw.Draw(canvas)
    low, high = map_range(amap, pixel_cut)
    for frac, value in ((0.0, high), (0.5, (low + high) / 2), (1.0, low)):
        y = min(h - 10, max(0, int(frac * (h - 1)) - 5))
        mark = "cut " if pixel_cut is not None and frac == 0.5 else ""
        draw.text((w + 10 + BAR_WIDTH, y), f"{mark}{value:.3g}", fill=(255, 255, 255))
    verdict = "?" if image_cut is None else ("ANOMALOUS" if score >= image_cut else "normal")
    text = f"score {score:.4g}: {verdict}" + (f" (cut {image_cut:.4g})" if image_cut is not None else "")
    draw.text((4, h + 4), text, fill=(255, 80, 80) if verdict == "ANOMALOUS" else (255, 255, 255))
    return canvas
