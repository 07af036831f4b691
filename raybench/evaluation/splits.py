"""One validation / test split per category, fixed by (dataset, category, split seed, protocol) alone.

Only validation steers a sweep (Optuna, ASHA, the chosen run, the Detector's thresholds); test is
scored once per trial at its end. The split never depends on a trial's parameters, so every trial
and every method of a sweep is validated and tested on the identical file lists (`test_split_hash`).
docs/protocol.md explains each mode and what its figures can be compared with.

First the few-shot pool: `few_shot` real anomalies drawn once from the category's official test
anomalies (seeded, stratified by defect type, nested: a trial with n shots trains on the first n).
The pool is what methods may train on, and it is scored by no method: neither validation nor test.
Then, from the rest of the official test split:
- `crossfit` (the default for real validation): two seeded folds, stratified per defect type and
  of the good images. Fold `a`'s trials validate on fold a and report on fold b, fold `b`'s the other
  way round, so every official test image outside the pool is reported once, by a choice that never
  saw it.
- `real`: validation = a stratified share (`val_split`) of the test images; test = the rest.
- `synthetic`: for sets with very few defects. Validation = a share (`val_split`) of the training
  normals held out, plus as many synthetic anomalies made from them (raybench.synthesis.blend, drawn
  from the split seed); test = the whole test split (less the pool).
In `crossfit` and `real` mode a share `val_normals` of the training normals is held out too and
joins validation's good side, so validation has enough good images to rank trials.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from raybench.data.layout import GOOD, Category, Sample
from raybench.errors import DatasetError
from raybench.evaluation.scoring import relative_path

VAL_MODES = ("crossfit", "real", "synthetic")
DEFAULT_VAL_MODE = "crossfit"
DEFAULT_VAL_SPLIT = 0.3
DEFAULT_VAL_NORMALS = 0.1  # share of the training normals held out into validation (crossfit, real)
FOLDS = ("a", "b")
# below these, validation AUROC moves in steps too coarse to rank trials (1 / (anomalous x good))
MIN_VAL_ANOMALOUS, MIN_VAL_GOOD = 3, 10


def split_rng_seed(dataset: str, category: str, seed: int) -> int:
    """A stable integer from (dataset, category, seed): hashlib, not hash() (salted per process)."""
    digest = hashlib.sha256(f"{dataset}\n{category}\n{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def files_hash(paths) -> str:
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()


def _share(n: int, share: float) -> int:
    """round(share * n), at least 1 and at most n - 1 (both sides keep one)."""
    return min(max(int(share * n + 0.5), 1), n - 1)


def _kinds(samples) -> dict[str, list[Sample]]:
    """good / each defect type -> its samples, sorted by path (the draw never depends on listing order)."""
    groups: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.path):
        groups.setdefault(GOOD if s.label == 0 else s.defect_type, []).append(s)
    return groups


def stratified_order(samples, rng: np.random.Generator) -> list[Sample]:
    """A nested, stratified order: each kind in a seeded permutation, the j-th of a kind of m placed
    at (j + 0.5) / m; so any first n holds every kind in proportion (within one image)."""
    keyed = []
    for kind, members in sorted(_kinds(samples).items()):
        for j, i in enumerate(rng.permutation(len(members))):
            keyed.append(((j + 0.5) / len(members), kind, members[i]))
    return [s for _, _, s in sorted(keyed, key=lambda k: k[:2])]


def few_shot_pool(category: Category, size: int, split_seed: int) -> list[Sample]:
    """The category's few-shot pool: the first `size` of its official test anomalies in the nested
    stratified order (seeded by dataset, category and split seed; independent of `size`)."""
    if size <= 0:
        return []
    rng = np.random.default_rng([split_rng_seed(category.dataset, category.name, split_seed), 1])
    return stratified_order([s for s in category.test if s.label == 1], rng)[:size]


@dataclass(frozen=True)
class Split:
    category: Category  # as loaded: train and test as the dataset defines them
    val_mode: str
    split_seed: int
    val_split: float
    train: list[Sample]  # what methods fit on
    validation: list[Sample]  # real images scored for validation (held-out normals included)
    test: list[Sample]  # scored once per trial, never steers
    n_synthetic: int = 0  # synthetic mode: anomalies made from the held-out normals
    pool: list[Sample] = field(default_factory=list)  # the few-shot pool, nested order; never scored
    held_out: list[Sample] = field(default_factory=list)  # training normals moved into validation
    val_normals: float = 0.0
    fold: str = ""  # crossfit: the fold this split validates on (its test is the other fold)
    group_hash: str = ""  # crossfit: one hash for both folds (they make one leaderboard row)

    @property
    def test_split_hash(self) -> str:
        """sha256 of the sorted test paths (relative to the category folder)."""
        return files_hash(relative_path(s, self.category) for s in self.test)

    @property
    def split_group(self) -> str:
        """What a leaderboard row is comparable on: the test split, or in crossfit both folds together."""
        return self.group_hash or self.test_split_hash

    def fit_view(self) -> Category:
        """What a method may see: its training images, and as `test` only the few-shot pool in its
        nested order (a method with n shots takes the first n anomalies)."""
        return replace(self.category, train=list(self.train), test=list(self.pool))

    def test_view(self) -> Category:
        return replace(self.category, train=list(self.train), test=list(self.test))

    def params(self) -> dict:
        n_val_bad = sum(s.label for s in self.validation) + self.n_synthetic
        return {"val_mode": self.val_mode, "split_seed": self.split_seed, "val_split": self.val_split,
                "val_normals": self.val_normals, "fold": self.fold, "few_shot_pool": len(self.pool),
                "n_train": len(self.train), "n_val": len(self.validation) + self.n_synthetic,
                "n_val_anomalous": n_val_bad, "n_val_normals": len(self.held_out), "n_test": len(self.test),
                "n_test_anomalous": sum(s.label for s in self.test)}

    def meta(self) -> dict:
        """What a Detector records to find its test split again (split_from_meta)."""
        return {"val_mode": self.val_mode, "split_seed": self.split_seed, "val_split": self.val_split,
                "val_normals": self.val_normals, "few_shot_pool": len(self.pool), "fold": self.fold,
                "test_split_hash": self.test_split_hash}

    def summary(self) -> str:
        p = self.params()
        fold = f" fold {self.fold}" if self.fold else ""
        return (f"{self.category.name}: split {self.val_mode}{fold} (seed {self.split_seed}): {p['n_train']} train, "
                f"{p['n_val']} val ({p['n_val_anomalous']} anomalous, {p['n_val_normals']} held-out training "
                f"normals), {p['n_test']} test ({p['n_test_anomalous']} anomalous), {len(self.pool)} in the "
                f"few-shot pool, test hash {self.test_split_hash[:12]}")


def _hold_out_normals(category: Category, share: float, rng, least: int = 0):
    """(held out, kept) training normals: round(share * n) drawn with `rng`, at least `least`."""
    train = sorted(category.train, key=lambda s: s.path)
    k = 0 if share <= 0 else max(least, _share(len(train), share))
    if k and len(train) - k < 2:
        raise DatasetError(category.root / category.name, f"{len(train)} training images: holding {k} out for "
                                                          f"validation leaves fewer than 2 to train on")
    held = set(rng.choice(len(train), size=k, replace=False).tolist()) if k else set()
    return [s for i, s in enumerate(train) if i in held], [s for i, s in enumerate(train) if i not in held]


def _folds(samples, rng) -> tuple[list[Sample], list[Sample]]:
    """Two stratified halves; a kind's odd one out goes to a and b in turn (balanced sizes)."""
    a, b, extra_to_a = [], [], True
    for _kind, members in sorted(_kinds(samples).items()):
        order = rng.permutation(len(members))
        half = len(members) // 2 + (len(members) % 2 if extra_to_a else 0)
        if len(members) % 2:
            extra_to_a = not extra_to_a
        a += [members[i] for i in order[:half]]
        b += [members[i] for i in order[half:]]
    return a, b


def make_split(category: Category, val_mode: str = "real", val_split: float = DEFAULT_VAL_SPLIT,
               split_seed: int = 0, val_normals: float = DEFAULT_VAL_NORMALS, few_shot: int = 0,
               fold: str | None = None) -> Split:
    """The category's split. `few_shot`: the pool size (the most real anomalies any trial of the
    sweep may train on); `fold`: crossfit's `a` (default) or `b`."""
    if val_mode not in VAL_MODES:
        raise ValueError(f"--val-mode {val_mode!r}: choose one of {VAL_MODES}")
    if not 0 < val_split < 1:
        raise ValueError(f"--val-split {val_split}: the validation share must lie strictly between 0 and 1")
    if not 0 <= val_normals < 1:
        raise ValueError(f"--val-normals {val_normals}: the share of training normals must lie in [0, 1)")
    fold = (fold or "a") if val_mode == "crossfit" else (fold or "")
    if fold not in (FOLDS if val_mode == "crossfit" else ("",)):
        raise ValueError(f"fold {fold!r}: {val_mode} validation has {'folds a and b' if val_mode == 'crossfit' else 'no folds'}")
    where = category.root / category.name
    base_seed = split_rng_seed(category.dataset, category.name, split_seed)
    n_bad = sum(s.label for s in category.test)
    if few_shot and few_shot >= n_bad:
        raise DatasetError(where, f"a few-shot pool of {few_shot} real anomalies needs more than the {n_bad} "
                                  f"the test split holds (some must stay to validate and test): lower n_anomalies "
                                  f"(--set n_anomalies=N) or use --set anomaly_source=synthetic")
    pool = few_shot_pool(category, few_shot, split_seed)
    pooled = {s.path for s in pool}
    rest = [s for s in category.test if s.path not in pooled]
    common = dict(category=category, val_mode=val_mode, split_seed=split_seed, val_split=val_split, pool=pool)
    rng = np.random.default_rng(base_seed)
    if val_mode == "synthetic":
        if len(category.train) < 4:  # two held out (synthesis needs two distinct normals) and two to train on
            raise DatasetError(where, f"{len(category.train)} training images: a synthetic validation split needs at least 4")
        held, kept = _hold_out_normals(category, val_split, rng, least=2)
        return Split(**common, train=kept, validation=held, test=rest, n_synthetic=len(held), held_out=held)
    held, kept = _hold_out_normals(category, val_normals, np.random.default_rng([base_seed, 2]))
    if val_mode == "crossfit":
        a, b = _folds(rest, np.random.default_rng([base_seed, 3]))
        group = files_hash([f"crossfit {split_seed}"] + [f"a {relative_path(s, category)}" for s in a]
                           + [f"b {relative_path(s, category)}" for s in b])
        mine, other = (a, b) if fold == "a" else (b, a)
        return Split(**common, train=kept, validation=mine + held, test=other, held_out=held,
                     val_normals=val_normals, fold=fold, group_hash=group)
    validation, test = [], []
    for kind, members in sorted(_kinds(rest).items()):
        if len(members) < 2:
            raise DatasetError(where, f"test images of kind {kind!r}: {len(members)}"
                                      f"{' outside the few-shot pool' if pool else ''}; a stratified validation "
                                      f"split needs at least 2 of every kind (one each side); use --val-mode "
                                      f"crossfit or synthetic")
        picks = set(rng.choice(len(members), size=_share(len(members), val_split), replace=False).tolist())
        validation += [s for i, s in enumerate(members) if i in picks]
        test += [s for i, s in enumerate(members) if i not in picks]
    return Split(**common, train=kept, validation=validation + held, test=test, held_out=held,
                 val_normals=val_normals)


def split_from_meta(category: Category, recorded: dict) -> Split:
    """The split a Detector records (Split.meta), rebuilt; older checkpoints lack the newer keys
    (raybench 0.1 named them mode / val_share / seed; before the pool and held-out normals: none)."""
    return make_split(category, recorded.get("val_mode", recorded.get("mode")),
                      recorded.get("val_split", recorded.get("val_share")),
                      recorded.get("split_seed", recorded.get("seed")), recorded.get("val_normals", 0.0),
                      recorded.get("few_shot_pool", 0), recorded.get("fold") or None)


def check_validation(split: Split, accept: bool = False) -> str | None:
    """None when validation can rank trials (>= MIN_VAL_ANOMALOUS anomalous and >= MIN_VAL_GOOD good
    images, the pool left out); else what to change, raised before any trial unless `accept`
    (--accept-weak-validation), then returned as a warning."""
    p = split.params()
    bad, good = p["n_val_anomalous"], p["n_val"] - p["n_val_anomalous"]
    if bad >= MIN_VAL_ANOMALOUS and good >= MIN_VAL_GOOD:
        return None
    fold = f" (fold {split.fold})" if split.fold else ""
    message = (f"{split.category.name}: validation{fold} holds {bad} anomalous and {good} good images once the "
               f"few-shot pool ({len(split.pool)}) is left out; ranking trials needs at least {MIN_VAL_ANOMALOUS} "
               f"and {MIN_VAL_GOOD} (AUROC would move in steps of 1/{max(bad * good, 1)}). Change: "
               + ("--val-mode crossfit (validates on half the test split), " if split.val_mode == "real" else "")
               + ("a larger --val-split, " if split.val_mode != "crossfit" else "")
               + ("a larger --val-normals, " if split.val_mode != "synthetic" else "")
               + "fewer shots (--set n_anomalies=N or --few-shot-pool N), or accept it with --accept-weak-validation")
    if accept:
        return "WARNING (accepted with --accept-weak-validation): " + message
    raise DatasetError(split.category.root / split.category.name, message)


def load_validation_set(split: Split, size: int, excluded=()):
    """Validation images, masks and labels at `size` (what evaluation.evaluate_scorer takes as
    `test_set`). `excluded`: images a method trained on (the pool is never in validation anyway)."""
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
                           "validation holds only one class: use a larger --val-split or --val-mode crossfit")
    return images, masks, labels
