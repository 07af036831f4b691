"""One definition of the chosen run (tracking.chosen_run, through the leaderboard): with two complete
sweeps of different settings and a newer one that did not complete in one store, the leaderboard,
best_model, the registry's champion and the winner tag all name the same run. Real sqlite MLflow,
real Model Registry; no Ray."""
from __future__ import annotations

from raybench import best_model, tracking
from raybench.delivery import registry
from raybench.sweep.summary import WINNER_TAG, mark_winners

from tracked_runs import log_detector_run, tiny_patchcore


def _sweep_run(uri, seed, val, sweep, budget, complete="yes", checkpoint="yes", test=None):
    run_id = log_detector_run(uri, tiny_patchcore(seed=seed), "demo", "disc", val, test_image_auroc=test, sweep_id=sweep)
    c = tracking.client(uri)
    c.set_tag(run_id, "budget", budget)
    c.set_tag(run_id, tracking.COMPLETE_TAG, complete)
    c.set_tag(run_id, "checkpoint", checkpoint)
    return run_id


def test_leaderboard_best_model_champion_and_winner_tag_agree(tracking_uri):
    uri = tracking_uri
    _sweep_run(uri, 1, 0.99, "s1-smoke", "smoke")  # an older sweep, other settings, better on validation
    chosen = _sweep_run(uri, 2, 0.80, "s2-default", "default", test=0.5)
    _sweep_run(uri, 3, 0.70, "s2-default", "default", test=0.99)  # better on test: never chooses
    _sweep_run(uri, 4, 0.95, "s2-default", "default", checkpoint="no")  # no checkpoint: never a winner
    _sweep_run(uri, 5, 1.00, "s3-killed", "default", complete="no")  # newer, incomplete: never "the latest"

    rows = tracking.leaderboard(uri, "demo")
    (row,) = rows
    assert (row.sweep_id, row.run_id, row.budget) == ("s2-default", chosen, "default")
    assert any("s3-killed did not complete" in n for n in rows.notes)
    assert tracking.chosen_run(uri, "demo", "disc").info.run_id == chosen
    assert best_model("disc", dataset="demo", tracking_uri=uri).meta["run_id"] == chosen
    (reg,) = registry.register("demo", uri=uri)
    assert reg.run_id == chosen
    assert best_model("disc", dataset="demo", tracking_uri=uri, alias="champion").meta["run_id"] == chosen
    exp = tracking.client(uri).get_experiment_by_name("raybench-demo").experiment_id
    assert mark_winners(uri, exp, rows) == {("demo", "disc"): chosen}
    tagged = tracking.client(uri).search_runs([exp], f"tags.{WINNER_TAG} = 'yes'")
    assert [r.info.run_id for r in tagged] == [chosen]
    # the older sweep is still there on request, with its own choice
    (old,) = tracking.leaderboard(uri, "demo", sweep_id="s1-smoke")
    assert old.budget == "smoke" and old.run_id != chosen
