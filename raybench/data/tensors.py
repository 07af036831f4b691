"""Samples -> tensors at a fixed size (pixels are read here and only here)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from raybench.data.io import load_image, load_mask
from raybench.data.layout import Sample


def stack_images(arrays) -> torch.Tensor:
    """(3, S, S) float arrays -> (N, 3, S, S) float16: the one input precision of training,
    evaluation and `Detector.predict`, so a new image scores exactly as its test twin did. float16
    halves memory and keeps 16-bit sources finer than uint8 would."""
    return torch.from_numpy(np.stack(arrays)).to(torch.float16)


def load_images(samples: list[Sample], size: int, workers: int = 4) -> torch.Tensor:
    """(N, 3, size, size) float16 in [0, 1] (see stack_images). A bad file raises DatasetError naming it."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda s: load_image(s.path, size), samples))
    return stack_images(arrays)


def load_masks(samples: list[Sample], size: int) -> np.ndarray:
    """(N, size, size) uint8 {0, 1}; normal samples get an all-zero mask."""
    out = np.zeros((len(samples), size, size), np.uint8)
    for i, s in enumerate(samples):
        if s.mask_path is not None:
            out[i] = load_mask(s.mask_path, size)
    return out


def iterate_batches(images: torch.Tensor, batch_size: int, device: torch.device):
    """Float32 batches on `device`, in order."""
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size].to(device, non_blocking=True).float()
