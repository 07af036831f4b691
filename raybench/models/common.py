"""Small tensor helpers shared by the models."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, device=None) -> torch.Tensor:
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, H, W) maps, reflect padding (as anomaly maps are
    smoothed in PatchCore and reverse distillation, sigma=4)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma, maps.device).to(maps.dtype)
    r = (len(k) - 1) // 2
    x = maps[:, None]
    h, w = x.shape[-2:]
    mode = "reflect" if r < min(h, w) else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x[:, 0]


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) -> (N, size, size), bilinear."""
    return F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_seed(seed: int) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


__all__ = ["gaussian_blur", "gaussian_kernel1d", "upsample_maps", "pick_device", "set_seed"]


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); a no-op on the CPU. For honest
    timings only: never inside a training step."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def cudnn_determinism(enabled: bool):
    """Deterministic cuDNN kernels and no autotuning inside the block (same seed, same GPU, same
    run); the previous process-wide flags come back afterwards."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if enabled:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
