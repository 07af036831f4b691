"""Pictures of one evaluation: an overlay grid of chosen images, ROC / PR curves, score histograms.

Pure functions of arrays (images, masks, labels, scores, maps, the two cuts) -> matplotlib
figures or PNG files; nothing here knows about Ray or MLflow. The Agg backend renders without a
display, so this runs inside trials on headless nodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raybench.reporting.overlay import _as_hwc, _cut, predict_overlay  # noqa: F401  (predict's pictures live there)

FIGURES_DIR = "figures"  # beside `detector/` in a trial's checkpoint, and the MLflow artifact folder
OVERLAYS, CURVES, HISTOGRAM = "overlays.png", "curves.png", "score_histogram.png"
MAX_CURVE_PIXELS = 2_000_000  # pixel curves on an even stride of at most this many pixels: cheap, same shape


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)  # no display in a trial; an interactive caller keeps its own
    import matplotlib.pyplot as plt
    return plt


@dataclass
class Selection:
    """Indices into the evaluated images, worst first within each group."""
    missed: list[int] = field(default_factory=list)        # defective, scored below the cut (lowest first)
    false_alarms: list[int] = field(default_factory=list)  # good, scored at or above the cut (highest first)
    correct: list[int] = field(default_factory=list)       # right verdicts: clearest detections, then calmest goods

    def rows(self) -> list[tuple[str, int]]:
        return ([("missed defect", i) for i in self.missed] + [("false alarm", i) for i in self.false_alarms]
                + [("correct", i) for i in self.correct])


def select_examples(labels, scores, image_threshold, n_missed: int = 3, n_false_alarms: int = 3,
                    n_correct: int = 2) -> Selection:
    """Which images the overlay grid shows. Verdict: `score >= image_threshold` is anomalous.
    Without a cut (a test split with one class only) nothing is missed or falsely flagged; the
    highest-scoring defects and lowest-scoring goods stand as examples."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    cut = _cut(image_threshold)
    flagged = scores >= cut if cut is not None else labels.copy()
    order = np.argsort(scores, kind="stable")  # ascending
    missed = [int(i) for i in order if labels[i] and not flagged[i]][:n_missed]
    false_alarms = [int(i) for i in order[::-1] if not labels[i] and flagged[i]][:n_false_alarms]
    hits = [int(i) for i in order[::-1] if labels[i] and flagged[i]]
    calm = [int(i) for i in order if not labels[i] and not flagged[i]]
    correct = []
    for pair in zip(hits, calm):  # alternate so both kinds show up
        correct += pair
    correct += hits[len(correct) // 2:] + calm[len(correct) // 2:]
    return Selection(missed, false_alarms, correct[:n_correct])


def overlay_grid(images, masks, maps, labels, scores, image_threshold, pixel_threshold,
                 selection: Selection | None = None, title: str = ""):
    """Rows: worst missed defects, worst false alarms, a few correct ones. Columns: image, ground
    truth, heat map over the image, predicted mask (`map >= pixel_threshold`). One colour scale
    for every heat map (0 .. the largest shown map value), so rows compare."""
    plt = _plt()
    selection = selection or select_examples(labels, scores, image_threshold)
    rows = selection.rows()
    pixel_cut = _cut(pixel_threshold)
    if not rows:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no images to show", ha="center", va="center")
        return fig
    maps = np.asarray(maps, dtype=np.float32)
    vmax = float(max(maps[i].max() for _, i in rows)) or 1.0
    vmin = float(min(maps[i].min() for _, i in rows))
    fig, axes = plt.subplots(len(rows), 4, figsize=(4 * 2.3, len(rows) * 2.4 + 0.6), squeeze=False)
    for col, name in enumerate(("image", "ground truth", "heat map",
                                "predicted mask" if pixel_cut is not None else "predicted mask (no cut)")):
        axes[0, col].set_title(name, fontsize=9)
    for r, (kind, i) in enumerate(rows):
        image = _as_hwc(images[i])
        truth = np.asarray(masks[i]).astype(bool)
        amap = maps[i]
        a0, a1, a2, a3 = axes[r]
        a0.imshow(image)
        a0.set_ylabel(f"{kind}\n#{i} score {float(scores[i]):.3g}\n"
                      f"{'defective' if labels[i] else 'good'}", fontsize=8)
        a1.imshow(image)
        a1.imshow(np.ma.masked_where(~truth, truth), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
        a2.imshow(image)
        a2.imshow(amap, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
        predicted = amap >= pixel_cut if pixel_cut is not None else np.zeros_like(truth)
        a3.imshow(predicted, cmap="gray", vmin=0, vmax=1)
        for ax in (a0, a1, a2, a3):
            ax.set_xticks([])
            ax.set_yticks([])
    cuts = f"image cut {image_threshold:.4g}" if _cut(image_threshold) is not None else "no image cut"
    cuts += f", pixel cut {pixel_cut:.4g}" if pixel_cut is not None else ", no pixel cut"
    fig.suptitle(f"{title} ({cuts})".strip(), fontsize=10)
    fig.tight_layout()
    return fig


def _pixel_sample(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(masks).astype(bool).ravel()
    values = np.asarray(maps, dtype=np.float32).ravel()
    step = max(1, int(np.ceil(truth.size / MAX_CURVE_PIXELS)))
    return truth[::step], values[::step]


def curves(labels, scores, masks=None, maps=None, title: str = ""):
    """Image- and pixel-level ROC (top) and precision-recall (bottom) curves with their areas.
    A level whose ground truth has one class only says so instead of drawing a curve."""
    from sklearn.metrics import auc, precision_recall_curve, roc_curve
    plt = _plt()
    levels = [("image", np.asarray(labels).astype(bool).ravel(), np.asarray(scores, dtype=np.float64).ravel())]
    if masks is not None and maps is not None:
        levels.append(("pixel", *_pixel_sample(masks, maps)))
    fig, axes = plt.subplots(2, len(levels), figsize=(4.2 * len(levels), 8), squeeze=False, layout="constrained")
    for col, (level, truth, values) in enumerate(levels):
        roc_ax, pr_ax = axes[0, col], axes[1, col]
        if truth.min() == truth.max():
            for ax in (roc_ax, pr_ax):
                ax.text(0.5, 0.5, f"{level}: one class only", ha="center", va="center")
                ax.set_axis_off()
            continue
        fpr, tpr, _ = roc_curve(truth, values)
        roc_ax.plot(fpr, tpr, lw=1.5, label=f"AUROC {auc(fpr, tpr):.4f}")
        roc_ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{level} ROC",
                   xlim=(0, 1), ylim=(0, 1.01))
        precision, recall, _ = precision_recall_curve(truth, values)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        pr_ax.plot(recall, precision, lw=1.5, label=f"AUPR {auc(recall, precision):.4f}, F1-max {f1.max():.4f}")
        pr_ax.axhline(truth.mean(), ls=":", color="grey", lw=1)  # a random scorer's precision
        pr_ax.set(xlabel="recall", ylabel="precision", title=f"{level} precision-recall",
                  xlim=(0, 1), ylim=(0, 1.01))
        for ax in (roc_ax, pr_ax):
            ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8)
            ax.grid(alpha=0.3)
    if title:
        fig.suptitle(_wrap(title, 40 * len(levels)), fontsize=10)
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width)) or text


def score_histogram(labels, scores, image_threshold, title: str = ""):
    """Image scores of good and defective images on shared bins, the verdict cut as a line."""
    plt = _plt()
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    cut = _cut(image_threshold)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    edges = np.histogram_bin_edges(np.append(scores, cut) if cut is not None else scores,
                                   bins=min(40, max(5, scores.size // 2)))
    ax.hist(scores[~labels], bins=edges, alpha=0.6, color="tab:green", label=f"good ({(~labels).sum()})")
    ax.hist(scores[labels], bins=edges, alpha=0.6, color="tab:red", label=f"defective ({labels.sum()})")
    if cut is not None:
        ax.axvline(cut, color="black", ls="--", lw=1.2, label=f"cut {cut:.4g}")
    ax.set(xlabel="image anomaly score", ylabel="images", title=_wrap(f"image scores, {title}" if title else "image scores", 60))
    ax.yaxis.set_major_locator(_integer_ticks())
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator
    return MaxNLocator(integer=True)


def save_png(fig, path: Path, dpi: int = 80) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    _plt().close(fig)
    return path


def render_trial(out_dir, images, masks, labels, scores, maps, image_threshold, pixel_threshold,
                 title: str = "", split: str = "validation") -> list[Path]:
    """The three PNGs of one scored split into `out_dir`: overlay grid, ROC/PR curves, score
    histogram; every title names the split (`validation` in a trial, `test` once a run is chosen)."""
    out_dir = Path(out_dir)
    images = np.asarray(images)
    if split not in title:  # a trial's title may say "(validation split)" already
        title = f"{title} ({split})" if title else split
    return [
        save_png(overlay_grid(images, masks, maps, labels, scores, image_threshold, pixel_threshold, title=title),
                 out_dir / OVERLAYS),
        save_png(curves(labels, scores, masks, maps, title=title), out_dir / CURVES),
        save_png(score_histogram(labels, scores, image_threshold, title=title), out_dir / HISTOGRAM),
    ]


def _bar_error(value: float, spread) -> tuple[float, float]:
    """(below, above) the bar's top for an error bar: ± a number, or to an interval's ends."""
    if spread is None or not np.isfinite(value):
        return 0.0, 0.0
    if isinstance(spread, (tuple, list)):
        low, high = spread
        return (max(value - low, 0.0), max(high - value, 0.0)) if np.isfinite([low, high]).all() else (0.0, 0.0)
    return (float(spread), float(spread)) if np.isfinite(spread) else (0.0, 0.0)


def leaderboard_chart(entries, metric_label: str = "test image AUROC", title: str = "",
                      references: dict | None = None, reference_label: str = "paper"):
    """Grouped bars: categories along x, one bar per method, its value printed on it; `entries`
    are (category, method, value, spread): spread None, a number (± it: a std over seeds) or a
    (low, high) pair (an interval's ends); a spread draws an error bar. `references`
    ((category, method) -> value) draws a black mark on the bar."""
    plt = _plt()
    entries = list(entries)
    categories = sorted({e[0] for e in entries})
    methods = sorted({e[1] for e in entries})
    table = {(c, m): (v, s) for c, m, v, s in entries}
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + len(categories) * (0.5 + 0.45 * len(methods))), 4.6),
                           layout="constrained")
    x = np.arange(len(categories))
    labelled = False  # one legend entry for the reference marks
    for j, method in enumerate(methods):
        values = np.array([table.get((c, method), (np.nan, None))[0] for c in categories], dtype=float)
        spreads = [table.get((c, method), (np.nan, None))[1] for c in categories]
        below_above = [_bar_error(v, s) for v, s in zip(values, spreads)]
        err = None if all(s is None for s in spreads) else np.array(below_above, dtype=float).T
        bars = ax.bar(x + (j - (len(methods) - 1) / 2) * width, np.nan_to_num(values), width, yerr=err,
                      capsize=3, label=method)
        marks = [(bar.get_x() + bar.get_width() / 2, (references or {}).get((c, method)))
                 for bar, c in zip(bars, categories)]
        marks = [(x_, v) for x_, v in marks if v is not None]
        if marks:
            ax.scatter(*zip(*marks), marker="_", s=max(60, 600 * width), color="black", linewidths=2,
                       zorder=3, label=None if labelled else reference_label)
            labelled = True
        for bar, value in zip(bars, values):
            if np.isfinite(value):  # inside the bar, at its top: the axis ends at 1
                ax.text(bar.get_x() + bar.get_width() / 2, value - 0.02, f"{value:.3f}", ha="center",
                        va="top", fontsize=7, rotation=90, color="white")
    ax.set_xticks(x, categories, rotation=30 if len(categories) > 6 else 0, ha="right" if len(categories) > 6 else "center")
    ax.set_ylim(0, 1)  # AUROC: 0 .. 1; the legend sits outside the axes, below the title
    ax.axhline(0.5, ls=":", color="grey", lw=1)  # a random scorer
    ax.set_ylabel(metric_label)
    fig.suptitle(_wrap(title or f"{metric_label}: categories x methods", 70), fontsize=10)
    fig.legend(fontsize=8, ncols=min(4, len(methods) + bool(references)), loc="outside lower center")
    return fig


def message_figure(text: str, size=(6, 2)):
    """A figure that says why there is nothing to plot (instead of leaving the artifact out)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def study_figures(study, title: str = "", metric_label: str = "validation image AUROC") -> dict:
    """Optuna's optimisation history (AUROC axis 0..1, whole trial numbers) and parameter
    importances of one study, as figures (name -> figure); importances need two finished trials
    with a searched parameter and values that differ (tied trials have no importances worth
    drawing), else a message says why."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ovm
    _plt()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = ovm.plot_optimization_history(study, target_name=metric_label)
        history = ax.figure
        _one_title(history, ax, f"{title or study.study_name}: optimisation history")
        ax.set_ylim(0, 1.01)
        ax.set_ylabel(metric_label)
        ax.xaxis.set_major_locator(_integer_ticks())
        history.set_size_inches(6.4, 4)
        history.set_layout_engine("constrained")
        tied = len({t.value for t in done}) < 2
        if len(done) >= 2 and any(t.params for t in done) and not tied:
            ax = ovm.plot_param_importances(study, target_name=metric_label)
            importances = ax.figure
            _one_title(importances, ax, f"{title or study.study_name}: parameter importances\n(for {metric_label})")
            ax.set_xlim(0, 1.15 * max([p.get_width() for p in ax.patches] + [0.01]))  # labels inside the frame
            importances.set_size_inches(6.4, max(3.0, 0.4 * len(done[0].params) + 1.5))
            importances.set_layout_engine("constrained")
        else:
            why = (f"the {len(done)} finished trials tie ({metric_label} {done[0].value:.4f}): no importances"
                   if len(done) >= 2 and tied else
                   f"parameter importances need two finished trials with searched parameters ({len(done)} finished)")
            importances = message_figure(_wrap(f"{title or study.study_name}: {why}", 60))
    return {"optimization_history": history, "param_importances": importances}


def _one_title(fig, ax, text: str) -> None:
    """Optuna's matplotlib plots bring their own title (and sometimes a figure text): keep ours only."""
    for extra in list(fig.texts):
        extra.remove()
    if getattr(fig, "_suptitle", None) is not None:
        fig._suptitle.remove()
        fig._suptitle = None
    for loc in ("left", "right"):  # Optuna titles its plots on the left
        ax.set_title("", loc=loc)
    ax.set_title(_wrap(text, 60), fontsize=10)


def leaderboard_figure(dataset: str, rows):
    """The categories x methods chart of a leaderboard, TEST image AUROC of the configuration chosen
    on validation: where the sweep ran final seeds (--final-seeds), bar and error bar are the seeds'
    mean ± std (one quantity); else the chosen run's value with its 95 % bootstrap interval over test
    images as the error bar. The papers' numbers where they exist, on rows whose test split is the
    whole official one (`official_test`: a figure on part of it is not comparable with a paper's)."""
    from raybench.reporting.references import SOURCE, reference_image_auroc
    from raybench.tracking.leaderboard import method_label

    official = {(r.category, r.method) for r in rows if getattr(r, "official_test", False)}

    def bar(row):
        mean, std = getattr(row, "final_image_auroc_mean", math.nan), getattr(row, "final_image_auroc_std", math.nan)
        if getattr(row, "final_n", 0) and not math.isnan(mean):
            return mean, std
        return row.image_auroc, (getattr(row, "test_image_auroc_ci_low", math.nan),
                                 getattr(row, "test_image_auroc_ci_high", math.nan))
    return leaderboard_chart([(r.category, method_label(r), *bar(r)) for r in rows],
                                     metric_label="test image AUROC",
                                     title=f"{dataset}: test image AUROC, chosen on validation "
                                           f"(final seeds: mean ± std; else 95% bootstrap CI)",
                                     references={k: v for k, v in reference_image_auroc(dataset).items()
                                                 if k in official}, reference_label=SOURCE)
