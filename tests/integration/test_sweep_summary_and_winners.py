"""raybench.sweep.summary on a real sqlite MLflow store and real Optuna (no Ray: hand-made results)."""
from __future__ import annotations

import math

import optuna.distributions as od
import pytest

from raybench import tracking
from raybench.sweep.search_space import SearchSpace
from raybench.sweep.summary import (SUMMARY_TAG, WINNER_TAG, category_studies, log_sweep_summary,
                                    mark_winners, summary_experiment)
from raybench.tracking import winners
from raybench.tracking import LeaderboardRow

SPACE = SearchSpace("patchcore", {"coreset_ratio": od.FloatDistribution(0.01, 0.5, log=True),
                                  "layers": od.CategoricalDistribution(["a", "b"])}, {})
RESULTS = [  # (config, metrics) in the order Tune ran them; validation steers, test is only reported
    ({"category": "bottle", "coreset_ratio": 0.1, "layers": "a"}, {"val_image_auroc": 0.7, "image_auroc": 0.2}),
    ({"category": "screw", "coreset_ratio": 0.2, "layers": "b"}, {"val_image_auroc": 0.5, "image_auroc": 0.9}),
    ({"category": "bottle", "coreset_ratio": 0.3, "layers": "b"}, {"val_image_auroc": 0.9, "image_auroc": 0.1}),
    ({"category": "bottle", "coreset_ratio": 0.05, "layers": "a"}, {}),  # failed: no metric
]


def test_category_studies_rebuild_each_category_in_order():
    studies = category_studies(RESULTS, SPACE)
    assert set(studies) == {"bottle", "screw"}
    bottle = studies["bottle"].trials
    assert [t.value for t in bottle] == [0.7, 0.9, None]
    assert [t.state.name for t in bottle] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert bottle[1].params == {"coreset_ratio": 0.3, "layers": "b"}
    assert studies["bottle"].best_value == 0.9


def _row(category, method, image, pixel, run_id, dataset="demo", test_image=None, test_pixel=None):
    """A leaderboard row chosen on validation (image, pixel); its test figures default to the same."""
    return LeaderboardRow(dataset=dataset, category=category, method=method, variant="",
                          val_image_auroc=image, val_pixel_auroc=pixel,
                          image_auroc=image if test_image is None else test_image,
                          pixel_auroc=pixel if test_pixel is None else test_pixel,
                          aupro=math.nan, n_runs=1, run_id=run_id)


def test_winner_per_category_is_best_image_then_pixel_auroc():
    rows = [_row("disc", "patchcore", 0.9, 0.8, "a"), _row("disc", "rd", 0.9, 0.85, "b"),
            _row("disc", "cutswap", math.nan, 0.99, "c"), _row("weave", "rd", 0.6, math.nan, "d")]
    best = winners(rows)
    assert {k: r.run_id for k, r in best.items()} == {("demo", "disc"): "b", ("demo", "weave"): "d"}


def test_winner_is_chosen_on_validation_never_on_test():
    rows = [_row("disc", "patchcore", 0.8, 0.8, "val-best", test_image=0.6),
            _row("disc", "rd", 0.7, 0.9, "test-best", test_image=0.99, test_pixel=0.99)]
    assert winners(rows)[("demo", "disc")].run_id == "val-best"  # the run best_model loads


def _finished_run(c, exp_id, category, method, image, pixel):
    """A FINISHED run as a sweep logs it: validation (what ranks) and test metrics."""
    run = c.create_run(exp_id, tags={"dataset": "demo", "category": category, "method": method,
                                     "checkpoint": "yes", "sweep_id": "s1", "budget": "smoke",
                                     "test_split_hash": "h"})
    for prefix in ("val_", ""):
        c.log_metric(run.info.run_id, f"{prefix}image_auroc", image)
        c.log_metric(run.info.run_id, f"{prefix}pixel_auroc", pixel)
    c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_winner_tag_moves_to_the_new_best_and_the_experiment_opens_on_runs(tracking_uri):
    exp_id = tracking.ensure_experiment(tracking_uri, "raybench-demo")
    c = tracking.client(tracking_uri)
    assert c.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    first = _finished_run(c, exp_id, "disc", "patchcore", 0.8, 0.7)
    mark_winners(tracking_uri, exp_id, tracking.leaderboard(tracking_uri, "demo"))
    assert c.get_run(first).data.tags[WINNER_TAG] == "yes"
    better = _finished_run(c, exp_id, "disc", "rd", 0.85, 0.6)
    rows = tracking.leaderboard(tracking_uri, "demo")
    assert {r.run_name for r in rows} == {c.get_run(first).info.run_name, c.get_run(better).info.run_name}
    mark_winners(tracking_uri, exp_id, rows)
    assert c.get_run(better).data.tags[WINNER_TAG] == "yes"
    assert WINNER_TAG not in c.get_run(first).data.tags
    tagged = c.search_runs([exp_id], f"tags.{WINNER_TAG} = 'yes'")
    assert [r.info.run_id for r in tagged] == [better]
    assert c.get_run(better).info.run_name in tracking.format_leaderboard(rows, wide=True)


@pytest.mark.parametrize("resume", [False, True])
def test_summary_run_holds_leaderboard_and_study_charts(tracking_uri, resume):
    rows = [_row("bottle", "patchcore", 0.9, 0.8, "a"), _row("screw", "patchcore", 0.5, 0.6, "b")]
    tags = {"dataset": "demo", "method": "patchcore", "sweep_id": "s1"}
    run_id = log_sweep_summary(tracking_uri, "raybench-demo", tags, RESULTS, SPACE, rows)
    if resume:  # the same sweep again: the same run, updated
        assert log_sweep_summary(tracking_uri, "raybench-demo", tags, RESULTS, SPACE, rows) == run_id
    c = tracking.client(tracking_uri)
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[SUMMARY_TAG] == "yes"
    assert c.get_experiment(run.info.experiment_id).name == summary_experiment("raybench-demo")
    assert len(c.search_runs([run.info.experiment_id])) == 1
    files = {}
    for folder in ("sweep", "sweep/bottle", "sweep/screw"):
        files.update({a.path: a.file_size for a in c.list_artifacts(run_id, folder) if not a.is_dir})
    assert set(files) == {"sweep/leaderboard.png", "sweep/bottle/optimization_history.png",
                          "sweep/bottle/param_importances.png", "sweep/screw/optimization_history.png",
                          "sweep/screw/param_importances.png"}
    assert all(size > 3_000 for size in files.values())
    assert tracking.finished_runs(tracking_uri) == []  # a summary run is never on a leaderboard


def test_recent_sweeps_and_where_to_look(tracking_uri, tmp_path):
    import time

    from raybench.tracking import ui
    from raybench.sweep.summary import recent_sweep_ids
    rows = [_row("bottle", "patchcore", 0.9, 0.8, "a")]
    log_sweep_summary(tracking_uri, "raybench-demo", {"dataset": "demo", "method": "patchcore", "sweep_id": "old"},
                      RESULTS[:1], SPACE, rows)
    since = int(time.time() * 1000) + 5
    time.sleep(0.05)
    for sweep_id in ("s1", "s2"):
        log_sweep_summary(tracking_uri, "raybench-demo", {"dataset": "demo", "method": "rd", "sweep_id": sweep_id},
                          RESULTS[:1], SPACE, rows)
    # a second method of the same command shares its sweep id: its own summary run, the id listed once
    log_sweep_summary(tracking_uri, "raybench-demo", {"dataset": "demo", "method": "patchcore", "sweep_id": "s2"},
                      RESULTS[:1], SPACE, rows)
    c = tracking.client(tracking_uri)
    summaries = c.search_runs([c.get_experiment_by_name("raybench-demo-sweeps").experiment_id], "tags.sweep_id = 's2'")
    assert sorted(r.data.tags["method"] for r in summaries) == ["patchcore", "rd"]
    assert recent_sweep_ids(tracking_uri, "raybench-demo", since) == ["s1", "s2"]
    text = ui.where_to_look(tracking_uri, "7", ["s1"], ["r1", "r2"], dataset="demo",
                            optuna_storage="sqlite:///optuna.db")
    lines = text.splitlines()
    assert lines[0] == "Where to look:" and lines[1].startswith(f"  raybench ui --tracking-uri {tracking_uri}")
    assert lines[2] == ("  this sweep's runs        http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
                        "&searchFilter=tags.sweep_id%20%3D%20%27s1%27&orderByKey=metrics.%60val_image_auroc%60&orderByAsc=false")
    assert lines[3] == ("  the winners compared     http://127.0.0.1:5000/#/compare-runs?runs=%5B%22r1%22%2C%22r2%22%5D"
                        "&experiments=%5B%227%22%5D&workflowType=machine_learning")
    assert "searchFilter=tags.winner%20%3D%20%27yes%27&" in lines[4]
    assert lines[5].endswith(f"raybench report demo --tracking-uri {tracking_uri} --out report.html")
    assert lines[6].endswith("optuna-dashboard sqlite:///optuna.db")
    assert ui.where_to_look("http://10.0.0.5:5000", "7").splitlines()[0] == "Where to look (MLflow UI at http://10.0.0.5:5000):"
