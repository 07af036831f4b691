"""The protocol of issue 18 (docs/protocol.md): the few-shot pool, held-out normals, crossfit folds,
validation that must be able to rank, the objective and its ties, the default configuration first,
--select dataset, and the leaderboard's crossfit / default / oracle figures. Fast: no Ray."""
import math
from types import SimpleNamespace

import pytest

from raybench import tracking

from conftest import rel
from raybench.errors import DatasetError
from raybench.evaluation.splits import check_validation, few_shot_pool, make_split, stratified_order
from raybench.sweep.category_search import PerCategorySearch
from raybench.sweep.search_space import load_search_space




def test_stratified_order_is_nested_and_proportional():
    import numpy as np
    samples = [SimpleNamespace(path=f"{k}{i}", label=1, defect_type=k) for k, n in (("A", 4), ("B", 2)) for i in range(n)]
    order = stratified_order(samples, np.random.default_rng(0))
    # A's four at 1/8, 3/8, 5/8, 7/8 and B's two at 1/4, 3/4 of the way: A B A A B A
    assert [s.defect_type for s in order] == ["A", "B", "A", "A", "B", "A"]
    assert sorted(s.path for s in order) == sorted(s.path for s in samples)


def test_few_shot_pool_is_fixed_nested_stratified_and_never_scored(disc):
    ten = few_shot_pool(disc, 10, split_seed=0)
    assert few_shot_pool(disc, 4, split_seed=0) == ten[:4]  # nested: n shots are the first n
    assert [s.defect_type for s in ten[:4]].count("crack") == 2  # demo: 16 crack, 16 spot
    assert all(s.label == 1 for s in ten) and few_shot_pool(disc, 10, split_seed=1) != ten
    for mode, folds in (("crossfit", ("a", "b")), ("real", (None,)), ("synthetic", (None,))):
        for fold in folds:
            split = make_split(disc, mode, few_shot=10, fold=fold)
            assert split.pool == ten and split.fit_view().test == ten
            assert rel(ten, disc).isdisjoint(rel(split.validation, disc) | rel(split.test, disc))


def test_crossfit_reports_every_test_image_outside_the_pool_exactly_once(disc):
    a, b = make_split(disc, "crossfit", few_shot=10, fold="a"), make_split(disc, "crossfit", few_shot=10, fold="b")
    official = rel(disc.test, disc) - rel(a.pool, disc)
    assert rel(a.test, disc) | rel(b.test, disc) == official and rel(a.test, disc).isdisjoint(rel(b.test, disc))
    # fold a validates on what fold b reports, and the other way round; the held-out normals join both
    assert rel(a.validation, disc) == rel(b.test, disc) | rel(a.held_out, disc)
    assert rel(b.validation, disc) == rel(a.test, disc) | rel(b.held_out, disc)
    assert a.held_out == b.held_out and a.train == b.train and len(a.held_out) == 5  # round(0.1 * 48)
    # 11 crack + 11 spot + 40 good left: the odd crack and spot go to a and b in turn (6+5, 5+6)
    assert (a.params()["n_val_anomalous"], b.params()["n_val_anomalous"]) == (11, 11)
    assert (a.params()["n_test"], b.params()["n_test"]) == (31, 31)  # 20 good + 11 anomalous each
    assert a.split_group == b.split_group and a.test_split_hash != b.test_split_hash
    assert make_split(disc, "crossfit", few_shot=10, fold="a", split_seed=1).split_group != a.split_group


def test_validation_that_cannot_rank_stops_unless_accepted(disc):
    # a pool of 26 (13 crack, 13 spot) leaves 3 + 3: round(0.3 * 3) = 1 of each in validation
    weak = make_split(disc, "real", few_shot=26)
    with pytest.raises(DatasetError, match=r"2 anomalous and 17 good.*--val-mode crossfit.*--accept-weak-validation"):
        check_validation(weak)
    assert check_validation(weak, accept=True).startswith("WARNING (accepted with --accept-weak-validation)")
    assert check_validation(make_split(disc, "crossfit", few_shot=10, fold="b")) is None


def test_objective_and_ties_hand_computed():
    assert tracking.objective({"val_image_auroc": 1.0, "val_pixel_auroc": 0.9}) == pytest.approx(1.009)
    assert tracking.objective({"val_image_auroc": 0.95}) == pytest.approx(0.95)  # no masks: image alone
    assert math.isnan(tracking.objective({"val_pixel_auroc": 0.9}))
    assert tracking.rank_key({}) == (-math.inf,)
    # more than 0.01 of image AUROC outweighs the whole pixel range
    assert tracking.rank_key({"val_image_auroc": 0.985, "val_pixel_auroc": 1.0}) < \
        tracking.rank_key({"val_image_auroc": 1.0, "val_pixel_auroc": 0.0})
    tied = [{"val_image_auroc": 1.0, "val_pixel_auroc": 0.95}, {"val_image_auroc": 1.0, "val_pixel_auroc": 0.9},
            {"val_image_auroc": 0.9, "val_pixel_auroc": 0.99}]
    assert tracking.tie_report(tied) == (2, "val_pixel_auroc")
    assert tracking.tie_report([tied[1], tied[1]]) == (2, "earliest run")
    assert tracking.tie_report(tied[1:]) == (1, "")


def test_crossfit_studies_start_with_the_default_and_are_steered_by_their_own_fold():
    space = load_search_space("patchcore")
    search = PerCategorySearch(["disc"], space, 2, seed=0, folds=("a", "b"),
                               default_params={"coreset_ratio": 0.01, "layers": ["layer2", "layer3"],
                                               "patch_size": 3, "sigma": 4.0})
    configs = {t: search.suggest(t) for t in ("t1", "t2", "t3", "t4")}
    assert [(c["fold"], c["default_config"]) for c in configs.values()] == [
        ("a", True), ("b", True), ("a", False), ("b", False)]
    assert search.suggest("t5") is None  # all proposed, some still running
    for t, value in (("t1", 0.4), ("t2", 0.6), ("t3", 0.5), ("t4", 0.9)):
        search.on_trial_complete(t, {"val_objective": value})
    a, b = search.studies[("disc", "a")], search.studies[("disc", "b")]
    assert [t.value for t in a.trials] == [0.5, 0.4] and [t.value for t in b.trials] == [0.9, 0.6]
    assert a.trials[1].params["layers"] == '["layer2", "layer3"]'  # the default, told as a finished trial
    assert search.suggest("t6") == "FINISHED"


def test_select_dataset_hands_one_configuration_to_every_category_and_tells_the_mean():
    space = load_search_space("patchcore")
    search = PerCategorySearch(["disc", "weave"], space, 2, seed=0, select="dataset")
    configs = [search.suggest(t) for t in ("d1", "w1", "d2", "w2")]
    assert [(c["category"], c["config_id"]) for c in configs] == [("disc", "0"), ("weave", "0"),
                                                                  ("disc", "1"), ("weave", "1")]
    assert {k: v for k, v in configs[2].items() if k != "category"} == {k: v for k, v in configs[3].items() if k != "category"}
    search.on_trial_complete("d2", {"val_objective": 0.6})
    study = search.studies[("*", "")]
    assert [t.state.name for t in study.trials] == ["RUNNING"]  # told once every category reported
    search.on_trial_complete("w2", {"val_objective": 0.8})
    assert study.trials[0].value == pytest.approx(0.7)


def _run(c, exp, name, fold, val, test, *, sweep="s1", default=False, checkpoint=True, pixel=0.5,
         complete="yes", budget="smoke", config_id=None, category="disc", select="category", n_test=11):
    tags = {"dataset": "demo", "category": category, "method": "patchcore", "sweep_id": sweep, "budget": budget,
            "checkpoint": "yes" if checkpoint else "no", "test_split_hash": f"h-{fold}", "split_group": "g",
            "default_config": "yes" if default else "no", "sweep_complete": complete, "select": select,
            "trial_id": name, **({"config_id": config_id} if config_id else {})}
    run = c.create_run(exp, tags={**tags, "mlflow.runName": name})
    for k, v in {"weights": "random", "image_size": "64", "val_mode": "crossfit", "fold": fold,
                 "few_shot_pool": "0"}.items():
        c.log_param(run.info.run_id, k, v)
    metrics = {"val_image_auroc": val, "val_pixel_auroc": pixel, "n_test_scored": n_test, "n_val_scored": 16}
    if test is not None:
        metrics.update(image_auroc=test, pixel_auroc=0.5, aupro=0.3)
    for k, v in metrics.items():
        c.log_metric(run.info.run_id, k, v)
    c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_crossfit_row_default_oracle_ties_and_incomplete_sweeps(tracking_uri):
    c = tracking.client(tracking_uri)
    exp = tracking.ensure_experiment(tracking_uri, "raybench-demo")
    _run(c, exp, "a-default", "a", 0.8, 0.70, default=True)
    a_best = _run(c, exp, "a-best", "a", 1.0, 0.60, pixel=0.9)
    _run(c, exp, "a-tied", "a", 1.0, 0.95, pixel=0.8)  # tied on image AUROC, lower pixel: not chosen
    _run(c, exp, "a-asha", "a", 1.0, None, pixel=0.99, checkpoint=False)  # stopped early: never chosen
    _run(c, exp, "b-default", "b", 0.7, 0.80, default=True)
    b_best = _run(c, exp, "b-best", "b", 0.9, 0.85)
    _run(c, exp, "newer-killed", "a", 1.0, 1.0, sweep="s2", complete="no")  # a sweep that did not complete
    rows = tracking.leaderboard(tracking_uri, "demo")
    (row,) = rows
    assert row.sweep_id == "s1" and row.complete and "s2 did not complete" in rows.notes[0]
    assert set(row.run_ids) == {a_best, b_best} and row.folds == ("a", "b")
    assert row.run_id == a_best  # deployed: the better validation of the two choices
    assert row.image_auroc == pytest.approx((0.60 + 0.85) / 2)  # each fold's choice on the other fold
    assert row.val_image_auroc == pytest.approx((1.0 + 0.9) / 2)
    assert row.default_test_image_auroc == pytest.approx((0.70 + 0.80) / 2)
    assert row.oracle_test_image_auroc == pytest.approx((0.95 + 0.85) / 2)
    assert row.oracle_test_image_auroc >= row.image_auroc
    assert (row.n_test, row.n_val, row.val_mode) == (22, 16, "crossfit") and row.official_test
    assert (row.val_tied, row.tie_broken_by) == (2, "val_pixel_auroc")  # candidates: checkpointed runs
    text = tracking.format_leaderboard(rows)
    assert "tie: disc patchcore: 2 runs share the best VAL img; broken by val_pixel_auroc" in text
    assert "note: demo: sweep s2 did not complete" in text
    assert tracking.chosen_run(tracking_uri, "demo", "disc").info.run_id == a_best
    (shown,) = tracking.leaderboard(tracking_uri, "demo", sweep_id="s2")
    assert not shown.complete


def test_select_dataset_row_is_the_configuration_best_on_mean_validation(tracking_uri):
    c = tracking.client(tracking_uri)
    exp = tracking.ensure_experiment(tracking_uri, "raybench-demo")
    runs = {}
    for cid, (disc_val, weave_val) in {"0": (0.9, 0.5), "1": (0.8, 0.8)}.items():  # means 0.70 and 0.80
        for category, val in (("disc", disc_val), ("weave", weave_val)):
            runs[(cid, category)] = _run(c, exp, f"{category}-{cid}", "", val, val, config_id=cid, category=category,
                                         select="dataset")
    rows = {r.category: r for r in tracking.leaderboard(tracking_uri, "demo")}
    assert rows["disc"].run_id == runs[("1", "disc")]  # not disc's own best (0.9): the dataset's choice
    assert rows["weave"].run_id == runs[("1", "weave")] and rows["disc"].select == "dataset"


def test_a_trial_stopped_early_carries_its_config_and_variant_from_the_start(tracking_uri):
    from raybench.sweep.plan import SweepSpec, plan_sweep
    from raybench.sweep.run_logger import MLflowTrialLogger
    spec = SweepSpec("demo", method="siamese-unet", budget="smoke", weights="random")
    _space, plan = plan_sweep(spec, load_search_space("siamese-unet"), log=lambda *_: None)
    exp = tracking.ensure_experiment(tracking_uri, "raybench-demo")
    logger = MLflowTrialLogger(tracking_uri, exp, {"dataset": "demo", "method": "siamese-unet", "sweep_id": "s1"}, 1,
                               {"disc/a": {"tags": {"split_group": "g"}, "params": {"fold": "a"}}}, plan=plan)
    trial = SimpleNamespace(trial_id="t1", last_result={"val_image_auroc": 0.7}, checkpoint=None, status="TERMINATED",
                            config={"category": "disc", "fold": "a", "config_id": "a1", "default_config": False,
                                    "anomaly_source": "synthetic", "n_anomalies": 4, "margin": 0.5})
    logger.on_trial_start(0, [trial], trial)
    logger.on_trial_complete(0, [trial], trial)  # ASHA stopped it: no final result, no checkpoint
    (run,) = tracking.client(tracking_uri).search_runs([exp])
    p, t = run.data.params, run.data.tags
    assert (p["anomaly_source"], p["n_anomalies"], p["margin"], p["fold"]) == ("synthetic", "4", "0.5", "a")
    assert (t["variant"], t["config_id"], t["default_config"], t["checkpoint"]) == ("synthetic", "a1", "no", "no")
