"""Score a category's test set with a scorer and compute every metric, with timings.

The protocol is explicit: images and masks are resized to the scorer's `image_size` and pixel
metrics are computed at that resolution; test images used in training are left out.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from raybench.data.layout import Category, Sample
from raybench.data.tensors import iterate_batches, load_images, load_masks
from raybench.evaluation.metrics import evaluate_predictions
from raybench.models.common import synchronize


def relative_path(sample: Sample, category: Category) -> str:
    try:
        return str(sample.path.relative_to(category.root / category.name))
    except ValueError:
        return str(sample.path)


def scored_test_samples(category: Category, excluded: list[str] | set[str]) -> list[Sample]:
    excluded = set(excluded)
    return [s for s in category.test if relative_path(s, category) not in excluded]


@torch.no_grad()
def score_images(scorer, images: torch.Tensor, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    scorer.eval()
    scores, maps = [], []
    for batch in iterate_batches(images, batch_size, device):
        s, m = scorer(batch)
        scores.append(s.float().cpu())
        maps.append(m.float().cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def load_test_set(category: Category, size: int, excluded=()) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The scored test images, masks and labels at `size` (read from disk once per call)."""
    samples = scored_test_samples(category, excluded)
    return load_images(samples, size), load_masks(samples, size), np.array([s.label for s in samples])


def evaluate_scorer(scorer, category: Category, device, excluded=(), batch_size: int = 32,
                    full: bool = True, test_set=None, predictions: dict | None = None) -> dict:
    """Metrics on the category's test set; pass `test_set` (from load_test_set) to score the same
    images repeatedly without reading them again. A `predictions` dict is filled with what was
    scored (images, masks, labels, scores, maps) for the trial's figures."""
    images, masks, labels = test_set if test_set is not None else load_test_set(category, scorer.image_size, excluded)
    synchronize(device)
    start = time.perf_counter()
    scores, maps = score_images(scorer, images, batch_size, device)
    seconds = time.perf_counter() - start
    metrics = evaluate_predictions(labels, scores, masks, maps, full=full)
    if predictions is not None:
        predictions.update(images=images, masks=masks, labels=labels, scores=scores, maps=maps)
    metrics.update({
        "inference_seconds": seconds,
        "inference_images_per_second": len(labels) / max(seconds, 1e-9),
        "n_test_scored": len(labels),
        "n_test_anomalous": int(labels.sum()),
    })
    return metrics
