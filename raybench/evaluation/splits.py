"""One validation / test split per category, fixed by (dataset, category, split seed) alone.

Only validation steers a sweep (Optuna, ASHA, the best run, the Detector's thresholds); test is
scored once per trial at its end. The split never depends on a trial's parameters, so every trial
of a category is tested on the identical file list (`test_split_hash`).

- `real` (default): validation = a stratified share (`val_split`, per defect type and of the good
  images) of the dataset's test images; test = the rest; training = every training normal.
- `synthetic`: for sets with very few defects. Validation = a share of the training normals held
  out, plus as many synthetic anomalies made from them (raybench.synthesis.blend, drawn from the
  split seed); test = the whole test split; training = the remaining normals.

Methods see a Category whose `test` is the real validation pool only (`fit_view`): a method that
trains on real anomalies (few-shot) draws them from validation and can never touch test.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from raybench.data.layout import GOOD, Category, Sample
from raybench.errors import DatasetError
from raybench.evaluation.scoring import relative_path

VAL_MODES = ("real", "synthetic")
DEFAULT_VAL_SPLIT = 0.3


def split_rng_seed(dataset: str, category: str, seed: int) -> int:
    """A stable integer from (dataset, category, seed): hashlib, not hash() (salted per process)."""
    digest = hashlib.sha256(f"{dataset}\n{category}\n{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def files_hash(paths) -> str:
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()


def _share(n: int, share: float) -> int:
    """round(share * n), at least 1 and at most n - 1 (both sides keep one)."""
    return min(max(int(share * n + 0.5), 1), n - 1)


@dataclass(frozen=True)
class Split:
    category: Category  # as loaded: train and test as the dataset defines them
    val_mode: str
    split_seed: int
    val_split: float
    train: list[Sample]  # what methods fit on
    validation: list[Sample]  # real images scored for validation (synthetic mode: held-out normals)
    test: list[Sample]  # scored once per trial, never steers
    n_synthetic: int = 0  # synthetic mode: anomalies made from the held-out normals

    @property
    def test_split_hash(self) -> str:
        """sha256 of the sorted test paths (relative to the category folder)."""
        return files_hash(relative_path(s, self.category) for s in self.test)

    def fit_view(self) -> Category:
        """What a method may see: its training images, and as `test` only the real validation
        images that can serve as few-shot anomalies (none in synthetic mode)."""
        pool = self.validation if self.val_mode == "real" else []
        return replace(self.category, train=list(self.train), test=list(pool))

    def test_view(self) -> Category:
        return replace(self.category, train=list(self.train), test=list(self.test))

    def params(self) -> dict:
        n_val_bad = sum(s.label for s in self.validation) + self.n_synthetic
        return {"val_mode": self.val_mode, "split_seed": self.split_seed, "val_split": self.val_split,
                "n_train": len(self.train), "n_val": len(self.validation) + self.n_synthetic,
                "n_val_anomalous": n_val_bad, "n_test": len(self.test),
                "n_test_anomalous": sum(s.label for s in self.test)}

    def meta(self) -> dict:
        """What a Detector records to find its test split again."""
        return {"val_mode": self.val_mode, "split_seed": self.split_seed, "val_split": self.val_split,
                "test_split_hash": self.test_split_hash}

    def summary(self) -> str:
        p = self.params()
        return (f"{self.category.name}: split {self.val_mode} (seed {self.split_seed}, val {self.val_split:g}): "
                f"{p['n_train']} train, {p['n_val']} val ({p['n_val_anomalous']} anomalous), "
                f"{p['n_test']} test ({p['n_test_anomalous']} anomalous), test hash {self.test_split_hash[:12]}")


def make_split(category: Category, val_mode: str = "real", val_split: float = DEFAULT_VAL_SPLIT,
               split_seed: int = 0) -> Split:
    if val_mode not in VAL_MODES:
        raise ValueError(f"--val-mode {val_mode!r}: choose one of {VAL_MODES}")
    if not 0 < val_split < 1:
        raise ValueError(f"--val-split {val_split}: the validation share must lie strictly between 0 and 1")
    rng = np.random.default_rng(split_rng_seed(category.dataset, category.name, split_seed))
    where = category.root / category.name
    if val_mode == "synthetic":
        train = sorted(category.train, key=lambda s: s.path)
        if len(train) < 4:  # two held out (synthesis needs two distinct normals) and two to train on
            raise DatasetError(where, f"{len(train)} training images: a synthetic validation split needs at least 4")
        k = max(2, _share(len(train), val_split))
        held = set(rng.choice(len(train), size=k, replace=False).tolist())
        validation = [s for i, s in enumerate(train) if i in held]
        rest = [s for i, s in enumerate(train) if i not in held]
        return Split(category, val_mode, split_seed, val_split, rest, validation, list(category.test), n_synthetic=k)
    groups: dict[str, list[Sample]] = {}
    for s in sorted(category.test, key=lambda s: s.path):  # sorted: the draw never depends on listing order
        groups.setdefault(GOOD if s.label == 0 else s.defect_type, []).append(s)
    validation, test = [], []
    for kind in sorted(groups):
        members = groups[kind]
        if len(members) < 2:
            raise DatasetError(where, f"test images of kind {kind!r}: {len(members)}; a stratified validation "
                                      f"split needs at least 2 of every kind (one each side); use --val-mode synthetic")
        picks = set(rng.choice(len(members), size=_share(len(members), val_split), replace=False).tolist())
        validation += [s for i, s in enumerate(members) if i in picks]
        test += [s for i, s in enumerate(members) if i not in picks]
    return Split(category, val_mode, split_seed, val_split, list(category.train), validation, test)


def check_few_shot_pool(splits: dict[str, Split], most: int) -> None:
    """Trials may draw up to `most` real anomalies from validation: every category must hold more
    (one at least stays to score validation). Checked before any trial."""
    if most <= 0:
        return
    for name, split in splits.items():
        pool = sum(s.label for s in split.fit_view().test)
        if most >= pool:
            raise ValueError(f"{name}: trials may train on up to {most} real anomalies (n_anomalies), but its "
                             f"{split.val_mode} validation split offers {pool} real anomalous images and needs at "
                             f"least one left to score: raise --val-split, --set n_anomalies={max(pool - 1, 1)}, "
                             f"or --set anomaly_source=synthetic")


def load_validation_set(split: Split, size: int, excluded=()):
    """Validation images, masks and labels at `size` (what evaluation.evaluate_scorer takes as
    `test_set`). `excluded`: real validation images a method trained on (left out)."""
    import torch

    from raybench.data.tensors import load_images, load_masks
    excluded = set(excluded)
    samples = [s for s in split.validation if relative_path(s, split.category) not in excluded]
    images, masks = load_images(samples, size), load_masks(samples, size)
    labels = np.array([s.label for s in samples])
    if split.val_mode == "synthetic":
        from raybench.synthesis.blend import synthesize
        rng = np.random.default_rng(split_rng_seed(split.category.dataset, split.category.name, split.split_seed) + 1)
        bad, bad_masks, _ = synthesize(images, split.n_synthetic, rng, object_like=split.category.kind == "object")
        images = torch.cat([images, bad.to(images.dtype)])
        masks = np.concatenate([masks, bad_masks.numpy().astype(np.uint8)])
        labels = np.concatenate([labels, np.ones(split.n_synthetic, labels.dtype)])
    if labels.min() == labels.max():
        raise DatasetError(split.category.root / split.category.name,
                           "validation holds only one class once the few-shot anomalies are left out: "
                           "use fewer n_anomalies or a larger --val-split")
    return images, masks, labels
