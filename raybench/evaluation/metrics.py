"""Image AUROC, pixel AUROC, AUPRO (FPR <= 0.3), F1-max and the thresholds that reach it.

Pixel metrics are computed at the resolution the maps and masks are given at; callers state it
(the run logs `eval_resolution`).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score


def image_auroc(labels, scores) -> float:
    labels = np.asarray(labels).ravel()
    if labels.min() == labels.max():
        raise ValueError("image AUROC needs both normal and anomalous images")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


def pixel_auroc(masks, maps) -> float:
    masks = np.asarray(masks).ravel().astype(np.uint8)
    if masks.min() == masks.max():
        return float("nan")  # no anomalous pixel (or only): undefined
    return float(roc_auc_score(masks, np.asarray(maps, dtype=np.float32).ravel()))


def f1_max_threshold(labels, scores) -> tuple[float, float]:
    """(best F1 over all thresholds, a cut reaching it): `score >= cut` is anomalous. The cut lies
    midway between the lowest score called anomalous and the next lower score, not on the former:
    a cut on a score flips that verdict on the smallest numerical difference (another thread
    layout, another device), and then `predict` contradicts the F1 the run logged."""
    labels = np.asarray(labels).ravel()
    if labels.min() == labels.max():
        return float("nan"), float("nan")
    scores = np.asarray(scores, dtype=np.float32).ravel()
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))  # the curve's last point (recall 0) has no threshold
    lowest_flagged = float(thresholds[best])
    below = scores[scores < thresholds[best]]
    cut = (lowest_flagged + float(below.max())) / 2 if below.size else lowest_flagged - abs(lowest_flagged) * 1e-6 - 1e-12
    return float(f1[best]), cut


def threshold_for_false_alarm_rate(values, rate: float) -> float:
    """The lowest cut that flags at most `rate` of `values` (known-good scores or pixels) under the
    rule `value >= cut`: just above the (floor(rate * n) + 1)-th largest value, so ties never push
    the share over `rate`."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"false-alarm rate must be in [0, 1), got {rate}")
    values = np.sort(np.asarray(values, dtype=np.float32).ravel())[::-1]
    if values.size == 0:
        raise ValueError("no values to calibrate on")
    k = int(np.floor(rate * values.size))
    return float(np.nextafter(values[k], np.float32(np.inf)))


def f1_max(labels, scores) -> float:
    """Best F1 over all thresholds (image level)."""
    return f1_max_threshold(labels, scores)[0]


def aupro(masks, maps, fpr_limit: float = 0.3, num_thresholds: int = 200) -> float:
    """Area under the per-region-overlap curve up to `fpr_limit`, normalised to [0, 1].

    For each threshold: PRO = mean over connected ground-truth regions of the fraction of the
    region above threshold; FPR = fraction of normal pixels above threshold. The curve is
    integrated over FPR in [0, fpr_limit] and divided by fpr_limit (as in MVTec AD's evaluation).
    """
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    regions = []  # (image index, flat pixel indices) per connected defect region
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask)
        for r in range(1, n + 1):
            regions.append((i, np.flatnonzero(labelled == r)))
    normal = ~masks
    if not regions or not normal.any():
        return float("nan")
    normal_scores = maps[normal]
    # thresholds spaced by the normal-score quantiles give an even FPR grid down to 0
    fprs_wanted = np.linspace(0, fpr_limit, num_thresholds)
    thresholds = np.quantile(normal_scores, 1 - fprs_wanted)
    fpr = np.array([(normal_scores > t).mean() for t in thresholds])
    flat = maps.reshape(len(maps), -1)
    pro = np.array([np.mean([(flat[i][idx] > t).mean() for i, idx in regions]) for t in thresholds])
    order = np.argsort(fpr, kind="stable")
    fpr, pro = fpr[order], pro[order]
    pro_at_limit = float(np.interp(fpr_limit, fpr, pro))
    keep = fpr < fpr_limit
    first = pro[keep][0] if keep.any() else pro_at_limit  # flat extension down to FPR 0
    fpr = np.concatenate([[0.0], fpr[keep], [fpr_limit]])
    pro = np.concatenate([[first], pro[keep], [pro_at_limit]])
    return float(np.trapezoid(pro, fpr) / fpr_limit)


def evaluate_predictions(labels, scores, masks, maps, full: bool = True) -> dict:
    """Image/pixel AUROC and image F1-max with its threshold; `full` adds what costs a pass over
    every pixel's ranking again: AUPRO and the pixel F1-max with its threshold (the final
    evaluation has them; per-epoch reports and benchmarks skip them)."""
    f1, threshold = f1_max_threshold(labels, scores)
    out = {
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel_auroc(masks, maps),
        "f1_max": f1,
        "image_threshold": threshold,
    }
    if full:
        out["aupro"] = aupro(masks, maps)
        out["pixel_f1_max"], out["pixel_threshold"] = f1_max_threshold(masks, maps)
    return out
