"""Choosing a training epoch by validation inside a method (no Ray, no MLflow).

A method receives its validation pool as `category.test` (the sweep's `Split.fit_view()` puts the
validation split there, never the test split). `ValidationPool` reads those images once and scores
any scorer on them; `BestEpoch` keeps what a method needs to return the state of its best-scoring
epoch: the key (image AUROC, then pixel AUROC, as the leaderboard ranks) and a copy of the state.
Ties keep the earlier epoch (fewer steps away from the pretrained weights).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from raybench.data.layout import Category, Sample
from raybench.data.tensors import iterate_batches, load_images, load_masks
from raybench.evaluation.metrics import image_auroc, pixel_auroc


class ValidationPool:
    """The images a method may validate on: `category.test` (a method that trains on some of them
    must leave those out before building the pool).

    `usable` is False when the pool lacks normal or anomalous images (e.g. `--val-mode synthetic`,
    whose validation images a method never sees): then no epoch can be chosen by validation.
    """

    def __init__(self, samples: list[Sample], image_size: int, batch_size: int = 32):
        self.samples, self.image_size, self.batch_size = list(samples), image_size, batch_size
        labels = [s.label for s in self.samples]
        self.usable = 0 in labels and 1 in labels
        self.labels = np.array(labels, dtype=np.int64)
        self._images = self._masks = None

    @classmethod
    def from_category(cls, category: Category, image_size: int, batch_size: int = 32) -> "ValidationPool":
        return cls(category.test, image_size, batch_size)

    def _load(self):
        if self._images is None:
            self._images = load_images(self.samples, self.image_size)
            self._masks = load_masks(self.samples, self.image_size)
        return self._images, self._masks

    @torch.no_grad()
    def score(self, scorer, device) -> dict:
        """{'image_auroc', 'pixel_auroc'} of `scorer` on the pool (pixel AUROC at image_size)."""
        if not self.usable:
            raise ValueError("the validation pool needs both normal and anomalous images")
        images, masks = self._load()
        scores, maps = [], []
        for batch in iterate_batches(images, self.batch_size, device):
            s, m = scorer(batch)
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
        scores, maps = torch.cat(scores).numpy(), torch.cat(maps).numpy()
        return {"image_auroc": image_auroc(self.labels, scores), "pixel_auroc": pixel_auroc(masks, maps)}


def selection_key(metrics: dict) -> tuple[float, float]:
    """Image AUROC first, pixel AUROC breaks ties (NaN counts as the worst)."""
    def value(name):
        v = metrics.get(name, float("nan"))
        return v if v == v and math.isfinite(v) else -math.inf
    return value("image_auroc"), value("pixel_auroc")


@dataclass
class BestEpoch:
    """The best validated epoch so far and a deep copy of its state; `curve` keeps every score."""

    epoch: int | None = None
    key: tuple[float, float] = (-math.inf, -math.inf)
    state: object = None
    curve: list[dict] = field(default_factory=list)

    def offer(self, epoch: int, metrics: dict, state) -> bool:
        """Record epoch's metrics; keep `state` (copied) if strictly better. True if it was kept."""
        key = selection_key(metrics)
        self.curve.append({"epoch": epoch, **metrics})
        if self.epoch is None or key > self.key:
            self.epoch, self.key, self.state = epoch, key, copy.deepcopy(state)
            return True
        return False
