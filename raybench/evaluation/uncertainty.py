"""How sure a figure is: 95 % bootstrap intervals over the scored images, stratified by label.

- `auroc_ci`: the interval of one scorer's image AUROC (scipy.stats.bootstrap, the normal and the
  anomalous images resampled apart, so every resample keeps the split's class counts).
- `paired_auroc_difference`: two scorers on the SAME images; each resample draws one set of image
  indices and scores both on it, so the interval of AUROC(a) - AUROC(b) is that of a paired test.
  0 inside the interval: the two are statistically tied on these images.
- `pixel_auroc_ci`: resamples images (a defect's pixels are not independent draws, its image is the
  unit), pixel AUROC from per-image histograms of the map values over one set of bins (quantiles of
  all values): one resample costs a sum of histograms, not a sort of every pixel. Ties within a bin
  count half, so the interval's ends are those of a binned AUROC (`bins` sets the resolution).
- AUPRO has no interval: each resample would rerun the region-overlap sweep (200 thresholds over
  every pixel and region), about 1,000 times the metric's own cost per trial.

Percentile intervals (not BCa): defined even when every resample gives the same value (a perfectly
separated test set gives [1, 1]: the bootstrap cannot see beyond its sample), and the ends stay in
[0, 1]. Seeded: the same inputs and seed give the same interval.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

N_RESAMPLES = 2000
CONFIDENCE = 0.95


def _auroc(pos, neg, axis=-1):
    """Mann-Whitney AUROC of positives over negatives along the last axis (ties count half),
    vectorised over any leading axes (scipy.stats.bootstrap calls it on whole batches)."""
    pos, neg = np.moveaxis(np.asarray(pos, float), axis, -1), np.moveaxis(np.asarray(neg, float), axis, -1)
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    ranks = stats.rankdata(np.concatenate([pos, neg], axis=-1), axis=-1)
    return (ranks[..., :n_pos].sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _strata(labels, *scores, groups=None) -> list[list[np.ndarray]]:
    """Per stratum (group x label, anomalous first), each scorer's scores: what one resample draws
    from apart. `groups` (e.g. the cross-fitted folds) splits the images into separately scored
    parts whose AUROCs are averaged; None: one part."""
    labels = np.asarray(labels).ravel().astype(bool)
    arrays = [np.asarray(s, dtype=np.float64).ravel() for s in scores]
    groups = np.zeros(labels.size, int) if groups is None else np.asarray(groups).ravel()
    if any(a.shape != labels.shape for a in arrays) or groups.shape != labels.shape:
        raise ValueError(f"labels ({labels.size}), groups ({groups.size}) and scores ({[a.size for a in arrays]}) "
                         f"differ in length")
    strata = []
    for g in np.unique(groups):
        for mask in (labels & (groups == g), ~labels & (groups == g)):
            if not mask.any():
                raise ValueError("an AUROC interval needs both normal and anomalous images"
                                 + ("" if len(np.unique(groups)) == 1 else f" in every group ({g!r} lacks one)"))
            # a stratum of one image resamples to itself; scipy wants two observations per sample,
            # and doubling a stratum leaves every resample's AUROC as it was (a share of pairs)
            strata.append([np.repeat(a[mask], 2 if mask.sum() == 1 else 1) for a in arrays])
    return strata


def _mean_auroc(samples, axis=-1):
    """The mean over groups of each group's AUROC; `samples` alternate anomalous, normal."""
    return np.mean([_auroc(samples[i], samples[i + 1], axis) for i in range(0, len(samples), 2)], axis=0)


def _interval(statistic, data, n_resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    if n_resamples < 1000:
        raise ValueError(f"at least 1,000 resamples, got {n_resamples}")
    res = stats.bootstrap(data, statistic, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", vectorized=True, paired=False, axis=-1,
                          rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def auroc_ci(labels, scores, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
             seed: int = 0, groups=None) -> tuple[float, float]:
    """(low, high): the percentile bootstrap interval of image AUROC, resampling the anomalous
    and the normal images apart (stratified by label; and by group: the mean of the groups' AUROCs)."""
    data = [s[0] for s in _strata(labels, scores, groups=groups)]
    return _interval(lambda *d, axis=-1: _mean_auroc(d, axis), data, n_resamples, confidence, seed)


def paired_auroc_difference(labels, scores_a, scores_b, n_resamples: int = N_RESAMPLES,
                            confidence: float = CONFIDENCE, seed: int = 0, groups=None) -> tuple[float, float, float]:
    """(AUROC(a) - AUROC(b), low, high) for two scorers of the same images (same order): every
    resample draws one set of images (stratified by label, and group) and scores both scorers on it."""
    data = [np.stack(s) for s in _strata(labels, scores_a, scores_b, groups=groups)]  # (2, n): pairs stay

    def difference(*samples, axis=-1):
        return _mean_auroc([s[0] for s in samples], axis) - _mean_auroc([s[1] for s in samples], axis)
    low, high = _interval(difference, data, n_resamples, confidence, seed)
    return float(difference(*data)), low, high


def tied(low: float, high: float) -> bool:
    """A paired difference whose interval holds 0: the data cannot tell the two apart."""
    return bool(low <= 0.0 <= high)


def stratified_counts(labels, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n) multiplicities: each row draws, with replacement, as many anomalous images
    from the anomalous ones and as many normal images from the normal ones as the data holds."""
    labels = np.asarray(labels).ravel().astype(bool)
    counts = np.zeros((n_resamples, labels.size), dtype=np.int64)
    rows = np.arange(n_resamples)[:, None]
    for members in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        if members.size:
            picks = members[rng.integers(0, members.size, (n_resamples, members.size))]
            np.add.at(counts, (np.broadcast_to(rows, picks.shape), picks), 1)
    return counts


def binned_auroc(pos_hist: np.ndarray, neg_hist: np.ndarray) -> np.ndarray:
    """AUROC from counts of positives and negatives per ordered bin (last axis): a positive beats
    every negative of a lower bin and ties (half) those of its own bin."""
    pos_hist, neg_hist = np.asarray(pos_hist, float), np.asarray(neg_hist, float)
    below = np.cumsum(neg_hist, axis=-1) - neg_hist
    wins = (pos_hist * (below + 0.5 * neg_hist)).sum(axis=-1)
    return wins / (pos_hist.sum(axis=-1) * neg_hist.sum(axis=-1))


def pixel_histograms(masks, maps, bins: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per image: counts of defect pixels and of normal pixels in each of `bins` bins whose edges
    are quantiles of all map values (so each bin holds about as many pixels)."""
    masks = np.asarray(masks).astype(bool).reshape(len(masks), -1)
    maps = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    edges = np.unique(np.quantile(maps, np.linspace(0, 1, bins + 1)[1:-1]))
    which = np.searchsorted(edges, maps, side="right")  # bin index per pixel, ordered by value
    n_bins = edges.size + 1
    pos = np.stack([np.bincount(w[m], minlength=n_bins) for w, m in zip(which, masks)])
    neg = np.stack([np.bincount(w[~m], minlength=n_bins) for w, m in zip(which, masks)])
    return pos, neg


def pixel_auroc_ci(labels, masks, maps, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                   seed: int = 0, bins: int = 1024) -> tuple[float, float]:
    """(low, high) of pixel AUROC, resampling images stratified by their label (see the module
    docstring); NaN, NaN when the images hold no defect pixel or no normal one."""
    if n_resamples < 1000:
        raise ValueError(f"at least 1,000 resamples, got {n_resamples}")
    pos, neg = pixel_histograms(masks, maps, bins)
    if not pos.sum() or not neg.sum():
        return float("nan"), float("nan")
    counts = stratified_counts(labels, n_resamples, np.random.default_rng(seed))
    values = binned_auroc(counts @ pos, counts @ neg)
    values = values[np.isfinite(values)]  # a resample may draw only defect-free anomalous images
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


INTERVAL_METRICS = ("image_auroc_ci_low", "image_auroc_ci_high", "pixel_auroc_ci_low", "pixel_auroc_ci_high")


def interval_metrics(labels, scores, masks, maps, seed: int = 0) -> dict:
    """A trial's test intervals as metrics: image AUROC always, pixel AUROC when the images hold
    both defect and normal pixels (NaN otherwise, and then not logged). One fixed seed, so the
    same predictions always give the same interval."""
    image = auroc_ci(labels, scores, seed=seed)
    pixel = pixel_auroc_ci(labels, masks, maps, seed=seed)
    return dict(zip(INTERVAL_METRICS, (*image, *pixel)))
