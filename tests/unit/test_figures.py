"""raybench.reporting.figures: which images the overlay grid picks (hand-made scores), and valid PNGs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raybench.reporting import figures


def test_selection_on_hand_made_scores():
    #            0    1    2    3    4    5    6    7
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    scores = [0.1, 0.9, 0.7, 0.2, 0.3, 0.05, 0.8, 0.95]
    sel = figures.select_examples(labels, scores, image_threshold=0.5, n_missed=3, n_false_alarms=3, n_correct=4)
    assert sel.missed == [5, 4]           # defective below 0.5, lowest score first
    assert sel.false_alarms == [1, 2]     # good at or above 0.5, highest first
    assert sel.correct == [7, 0, 6, 3]    # clearest detection, calmest good, alternating
    assert [k for k, _ in sel.rows()] == ["missed defect"] * 2 + ["false alarm"] * 2 + ["correct"] * 4


def test_selection_cut_is_inclusive_and_limits_apply():
    labels = [0, 0, 0, 1]
    scores = [0.5, 0.6, 0.7, 0.5]
    sel = figures.select_examples(labels, scores, 0.5, n_missed=2, n_false_alarms=2, n_correct=1)
    assert sel.missed == []               # 0.5 >= 0.5 is flagged
    assert sel.false_alarms == [2, 1]     # three false alarms, the two worst kept
    assert sel.correct == [3]


def test_selection_without_a_cut_flags_nothing_wrongly():
    sel = figures.select_examples([0, 0, 1], [0.3, 0.1, 0.2], float("nan"), n_correct=2)
    assert sel.missed == [] and sel.false_alarms == []
    assert sel.correct == [2, 1]


def test_selection_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ"):
        figures.select_examples([0, 1], [0.1], 0.5)


def _toy(n_good=4, n_bad=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    n = n_good + n_bad
    images = rng.uniform(0, 1, (n, 3, size, size)).astype(np.float16)
    masks = np.zeros((n, size, size), np.uint8)
    maps = rng.uniform(0, 0.3, (n, size, size)).astype(np.float32)
    for i in range(n_good, n):
        masks[i, 8:16, 8:16] = 1
        maps[i, 8:16, 8:16] += 0.5
    labels = np.array([0] * n_good + [1] * n_bad)
    scores = maps.reshape(n, -1).max(1)
    scores[0] = 0.95  # one false alarm
    scores[-1] = 0.1  # one missed defect
    return images, masks, labels, scores, maps


def test_render_trial_writes_valid_pngs_of_sensible_size(tmp_path):
    images, masks, labels, scores, maps = _toy()
    paths = figures.render_trial(tmp_path / "figures", images, masks, labels, scores, maps,
                                 image_threshold=0.5, pixel_threshold=0.4, title="widget patchcore")
    assert [p.name for p in paths] == [figures.OVERLAYS, figures.CURVES, figures.HISTOGRAM]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            w, h = im.size
            assert 300 <= w <= 2000 and 200 <= h <= 3000, (path.name, im.size)
            assert np.asarray(im.convert("L")).std() > 5  # something drawn, not a blank canvas
        assert 5_000 < path.stat().st_size < 2_000_000
    # one missed, one false alarm, two correct: 4 rows of 4 panels, taller than wide
    with Image.open(tmp_path / "figures" / figures.OVERLAYS) as im:
        assert im.size[1] > im.size[0]


def test_overlay_rows_follow_the_selection(tmp_path):
    images, masks, labels, scores, maps = _toy()
    few = figures.overlay_grid(images, masks, maps, labels, scores, 0.5, 0.4,
                               selection=figures.Selection(correct=[1]))
    many = figures.overlay_grid(images, masks, maps, labels, scores, 0.5, 0.4,
                                selection=figures.Selection(missed=[7], false_alarms=[0], correct=[1, 5]))
    assert len(few.axes) == 4 and len(many.axes) == 16
    figures._plt().close("all")


def test_curves_say_when_a_level_has_one_class(tmp_path):
    images, masks, labels, scores, maps = _toy()
    fig = figures.curves(labels, scores, np.zeros_like(masks), maps)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "pixel: one class only" in texts
    legends = [ax.get_legend().get_texts()[0].get_text() for ax in fig.axes if ax.get_legend()]
    # the image-level AUROC on the curve is the one sklearn computes
    from sklearn.metrics import roc_auc_score
    assert f"AUROC {roc_auc_score(labels, scores):.4f}" in legends
    figures._plt().close(fig)


def test_predict_overlay_upscales_outlines_and_captions_below_the_image():
    from raybench.reporting.overlay import BAR_WIDTH, CAPTION
    image = np.full((64, 80, 3), 0.5, np.float32)
    amap = np.full((64, 80), 0.3, np.float32)
    amap[20:40, 30:50] = 1.0
    over = figures.predict_overlay(image, amap, 0.93, image_threshold=0.5, pixel_threshold=0.5)
    a = np.asarray(over)
    k = 4  # 64 px upscaled to at least 256 for display
    h, w = 64 * k, 80 * k
    assert a.dtype == np.uint8 and over.size[1] == h + CAPTION + 6 and over.size[0] > w + BAR_WIDTH
    assert (a[20 * k, 30 * k:50 * k] == 255).all() and (a[40 * k - 1, 30 * k:50 * k] == 255).all()  # outline
    assert not (a[30 * k, 35 * k:45 * k] == 255).all(axis=-1).any()  # its inside is heat, not outline
    hot, calm = a[30 * k, 40 * k].astype(int), a[5, 5].astype(int)
    assert hot[0] > hot[2] + 60  # turbo: the region is red
    assert abs(calm[0] - calm[2]) < 60 and 90 < calm.mean() < 160  # the calm image stays grey (no wash)
    assert (a[h + 2:, :200] != 0).any()  # the caption band below the image holds text
    bar = a[:h, w + 8 + BAR_WIDTH // 2]
    assert bar[0, 0] > bar[0, 2] and bar[-1, 2] > bar[-1, 0]  # colour bar: hot on top, cold below
    calm_only = np.asarray(figures.predict_overlay(image, amap * 0 + 0.3, 0.1, 0.5, 0.5))
    assert not (calm_only[:h, :w] == 255).all(axis=-1).any()  # nothing predicted: no outline
    with pytest.raises(ValueError, match="differ in size"):
        figures.predict_overlay(image, amap[:10], 0.1, 0.5, 0.5)


def test_map_png_puts_the_cut_mid_grey_and_the_calm_baseline_dark():
    from raybench.detector import Detector
    det = Detector.__new__(Detector)  # map_image reads the cut alone
    det.meta = {"pixel_threshold": 0.4}
    grey = np.asarray(det.map_image(np.array([[0.1, 0.2, 0.4, 0.6, 0.25]], np.float32)))
    assert grey.tolist() == [[0, 0, 128, 255, 32]]


def test_leaderboard_chart_marks_the_papers_numbers_on_their_bars():
    from matplotlib.collections import PathCollection

    from raybench.reporting.references import reference_image_auroc
    refs = reference_image_auroc("mvtec")
    assert refs[("screw", "patchcore")] == 0.949 and refs[("bottle", "cutswap")] == 0.999
    assert len(refs) == 45 and len(reference_image_auroc("visa")) == 36 and reference_image_auroc("demo") == {}
    fig = figures.leaderboard_chart([("bottle", "patchcore", 0.9, None), ("bottle", "rd", 0.8, 0.05),
                                     ("screw", "patchcore", 0.7, None)], references=refs)
    ax = fig.axes[0]
    marks = [c for c in ax.collections if isinstance(c, PathCollection)]
    ys = sorted(float(y) for c in marks for _, y in c.get_offsets())
    assert ys == [0.949, 1.0]  # patchcore's two categories; rd has no published number
    heights = sorted(round(p.get_height(), 3) for p in ax.patches)
    assert heights == [0.0, 0.7, 0.8, 0.9]  # screw has no rd run: an empty bar
    figures._plt().close(fig)


def test_leaderboard_figure_bar_and_error_bar_are_one_quantity():
    import math

    from raybench.tracking import LeaderboardRow
    seeds = LeaderboardRow("demo", "stripes", "patchcore", "", 1.0, 0.9, 0.955, 0.9, 0.8, 4, "r1", final_n=2,
                           final_image_auroc_mean=0.917, final_image_auroc_std=0.011)
    single = LeaderboardRow("demo", "weave", "patchcore", "", 1.0, 0.9, 0.80, 0.9, 0.8, 4, "r2",
                            test_image_auroc_ci_low=0.70, test_image_auroc_ci_high=0.85)
    fig = figures.leaderboard_figure("demo", [seeds, single])
    ax = fig.axes[0]
    assert sorted(round(p.get_height(), 3) for p in ax.patches) == [0.8, 0.917]  # the seeds' mean, not 0.955
    (bars,) = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    segments = bars.errorbar.lines[2][0].get_segments()
    spans = sorted((round(float(s[0][1]), 3), round(float(s[1][1]), 3)) for s in segments)
    assert spans == [(0.7, 0.85), (0.906, 0.928)]  # the CI's ends; mean ± std
    figures._plt().close(fig)
    assert figures._bar_error(0.5, (math.nan, math.nan)) == (0.0, 0.0)
def _inside(fig, artist) -> bool:
    """The artist's drawn box lies within the figure's (nothing clipped at the edges)."""
    fig.canvas.draw()
    box, frame = artist.get_window_extent(), fig.bbox
    return box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1


def test_charts_read_correctly_titles_inside_auroc_axes_0_to_1_integer_trials():
    """Issue 21: titles and legends inside the frame, AUROC axes 0..1, whole trial numbers, the
    metric called validation's, no importances drawn for trials that tie."""
    import optuna
    from matplotlib.ticker import MaxNLocator
    chart = figures.leaderboard_chart([(c, m, v, None) for c, m, v in (
        ("disc", "patchcore", 0.91), ("disc", "cutpaste", 0.95), ("weave", "patchcore", 0.7))],
        title="demo: test image AUROC of the run chosen on validation, a long title that must wrap")
    ax = chart.axes[0]
    assert ax.get_ylim() == (0, 1)
    assert _inside(chart, chart._suptitle) and _inside(chart, chart.legends[0])
    figures._plt().close(chart)

    dist = {"sigma": optuna.distributions.FloatDistribution(1, 8)}
    study = optuna.create_study(study_name="disc", direction="maximize")
    for i, v in enumerate([0.8, 0.9, 0.85]):
        study.add_trial(optuna.trial.create_trial(params={"sigma": 2.0 + i}, distributions=dist, value=v))
    made = figures.study_figures(study, title="disc patchcore")
    history = made["optimization_history"].axes[0]
    assert history.get_ylim()[0] == 0 and history.get_ylim()[1] <= 1.02
    assert "validation" in history.get_ylabel()
    assert isinstance(history.xaxis.get_major_locator(), MaxNLocator)
    assert all(float(t).is_integer() for t in history.get_xticks())
    assert history.get_title(loc="left") == "" and "optimisation history" in history.get_title()
    assert _inside(made["optimization_history"], history.title)
    importances = made["param_importances"].axes[0]
    assert importances.get_title(loc="left") == "" and "importances" in importances.get_title()
    for fig in made.values():
        figures._plt().close(fig)

    tied = optuna.create_study(study_name="weave", direction="maximize")
    for i in range(3):
        tied.add_trial(optuna.trial.create_trial(params={"sigma": 2.0 + i}, distributions=dist, value=1.0))
    made = figures.study_figures(tied, title="weave patchcore")
    text = " ".join(t.get_text() for ax in made["param_importances"].axes for t in ax.texts)
    assert "tie" in text and "no importances" in text
    for fig in made.values():
        figures._plt().close(fig)


def test_trial_figures_name_their_split(tmp_path):
    images, masks, labels, scores, maps = _toy(size=24)
    curves_fig = figures.curves(labels, scores, masks, maps, title="disc patchcore (test)")
    assert curves_fig._suptitle.get_text() == "disc patchcore (test)" and _inside(curves_fig, curves_fig._suptitle)
    hist = figures.score_histogram(labels, scores, 0.5, title="disc patchcore (validation)")
    assert "validation" in hist.axes[0].get_title()
    for fig in (curves_fig, hist):
        figures._plt().close(fig)
