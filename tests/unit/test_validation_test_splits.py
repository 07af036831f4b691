"""The validation / test split: fixed by (dataset, category, split seed), stratified, hashed; what
methods may see of it; budgets that bound the search; only validation ranks. Fast: no Ray."""
import hashlib
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch

from raybench import tracking
from raybench.sweep.category_search import METRIC, PerCategorySearch
from raybench.config import from_dict
from raybench.data import load_dataset
from raybench.errors import ConfigError, DatasetError
from raybench.sweep.final_seeds import chosen_configs, final_trial_configs
from raybench.methods import get_method
from raybench.methods.siamese_unet import draw_real_anomalies
from raybench.sweep.search_space import load_search_space
from raybench.evaluation.splits import load_validation_set, make_split
from raybench.sweep.plan import SweepSpec, bound_by_budget, build_config, resolve_base_config
from conftest import make_mvtec_category, rel




def test_real_split_is_stratified_disjoint_and_hashed(disc):
    split = make_split(disc, "real", 0.3, split_seed=0, val_normals=0.0)
    # demo: 40 good, 16 crack, 16 spot -> round(0.3 * n): 12 good, 5 + 5 anomalous in validation
    kinds = lambda samples: sorted((s.defect_type, sum(1 for t in samples if t.defect_type == s.defect_type))
                                   for s in {s.defect_type: s for s in samples}.values())
    assert kinds(split.validation) == [("crack", 5), ("good", 12), ("spot", 5)]
    assert kinds(split.test) == [("crack", 11), ("good", 28), ("spot", 11)]
    assert rel(split.validation, disc).isdisjoint(rel(split.test, disc))
    assert rel(split.validation, disc) | rel(split.test, disc) == rel(disc.test, disc)
    assert split.train == disc.train
    expected = hashlib.sha256("\n".join(sorted(rel(split.test, disc))).encode()).hexdigest()
    assert split.test_split_hash == expected
    p = split.params()
    assert (p["n_val"], p["n_val_anomalous"], p["n_test"], p["n_test_anomalous"]) == (22, 10, 50, 22)
    # held-out training normals (default 0.1 of 48 -> 5) join validation's good side; test is unchanged
    more = make_split(disc, "real", 0.3, split_seed=0)
    assert more.test == split.test and len(more.held_out) == 5 and len(more.train) == 43
    assert rel(more.held_out, disc) <= rel(disc.train, disc) and rel(more.held_out, disc).isdisjoint(rel(more.train, disc))
    assert more.validation == split.validation + more.held_out and more.params()["n_val"] == 27


def test_split_depends_on_dataset_category_and_seed_only(disc):
    a = make_split(disc, split_seed=0)
    shuffled = type(disc)(disc.dataset, disc.name, disc.root, list(disc.train), list(reversed(disc.test)), disc.kind)
    assert make_split(shuffled, split_seed=0).test_split_hash == a.test_split_hash  # listing order does not matter
    assert make_split(disc, split_seed=1).test_split_hash != a.test_split_hash
    renamed = type(disc)("other", disc.name, disc.root, disc.train, disc.test, disc.kind)
    assert make_split(renamed, split_seed=0).test_split_hash != a.test_split_hash


def test_too_few_images_of_a_kind_is_a_clear_error(tmp_path):
    make_mvtec_category(tmp_path, "widget", n_good=3, n_bad=1)
    (cat,) = load_dataset("folder", tmp_path, ["widget"])
    with pytest.raises(DatasetError, match="'scratch': 1.*--val-mode crossfit or synthetic"):
        make_split(cat)
    with pytest.raises(ValueError, match="between 0 and 1"):
        make_split(cat, val_split=1.0)
    split = make_split(cat, "synthetic", 0.3)  # the way out for sets with very few defects
    assert split.test == cat.test and split.params()["n_val_anomalous"] == 2


def test_synthetic_split_holds_out_normals_and_makes_the_same_anomalies_every_time(disc):
    split = make_split(disc, "synthetic", 0.25, split_seed=3)
    assert len(split.validation) == 12 and len(split.train) == 36
    assert rel(split.validation, disc).isdisjoint(rel(split.train, disc))
    assert split.test == disc.test and split.fit_view().test == []  # no pool asked for: nothing real to train on
    images, masks, labels = load_validation_set(split, 32)
    again = load_validation_set(split, 32)
    assert images.shape == (24, 3, 32, 32) and labels.tolist() == [0] * 12 + [1] * 12
    assert torch.equal(images, again[0]) and np.array_equal(masks, again[1])
    assert masks[:12].sum() == 0 and all(m.sum() > 0 for m in masks[12:])


def test_few_shot_anomalies_come_from_the_pool_never_validation_or_test(disc):
    split = make_split(disc, "crossfit", few_shot=4)
    view = split.fit_view()
    assert view.test == split.pool and len(split.pool) == 4
    drawn = draw_real_anomalies(view, 3)
    assert drawn == split.pool[:3]  # nested: n shots are the pool's first n, whatever the trial's seed
    scored = rel(split.validation, disc) | rel(split.test, disc)
    assert rel(split.pool, disc).isdisjoint(scored)
    with pytest.raises(ConfigError, match="offers 4 real anomalous images"):
        draw_real_anomalies(view, 5)


@pytest.mark.parametrize("method", ["cutpaste", "siamese-unet"])
def test_smoke_budget_never_samples_epochs_beyond_smoke(method):
    spec = get_method(method)
    space = load_search_space(method)
    epoch_keys = [k for k in space.distributions if k.startswith("epochs")]
    assert epoch_keys  # the shipped space does sample epochs
    bounded = bound_by_budget(space, spec, "smoke", log=lambda *_: None)
    base = resolve_base_config(SweepSpec(dataset="demo", method=method, budget="smoke"), bounded)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask(fixed_distributions=bounded.distributions)
        config = build_config(method, base, trial.params, {})
        for key in epoch_keys:
            assert getattr(config, key) == spec.budgets["smoke"][key]
    # paper is the papers' schedule; default leaves the search space's ranges alone
    assert not set(epoch_keys) & set(bound_by_budget(space, spec, "paper", log=lambda *_: None).distributions)
    assert set(epoch_keys) <= set(bound_by_budget(space, spec, "default", log=lambda *_: None).distributions)


def test_optuna_objective_is_validation_a_planted_test_perfect_trial_loses():
    space = load_search_space("patchcore")
    search = PerCategorySearch(["disc"], space, trials_per_category=3, seed=0)
    assert METRIC == "val_objective" == tracking.OBJECTIVE
    default, planted, honest = search.suggest("default"), search.suggest("planted"), search.suggest("honest")
    assert default["default_config"] and not planted["default_config"]
    assert not set(default) - {"category", "fold", "config_id", "default_config"}  # nothing sampled: the defaults
    assert planted["category"] == honest["category"] == "disc"
    search.on_trial_complete("default", {"val_objective": 0.3, "image_auroc": 1.0})
    search.on_trial_complete("planted", {"val_objective": 0.5, "image_auroc": 1.0})
    search.on_trial_complete("honest", {"val_objective": 0.8, "image_auroc": 0.6})
    study = search.studies[("disc", "")]
    assert study.best_value == pytest.approx(0.8)


def _log_run(client, exp_id, name, val, test, tags=None, final=False):
    tags = {"dataset": "demo", "category": "disc", "method": "patchcore", "sweep_id": "s1", "budget": "smoke",
            "checkpoint": "yes", "test_split_hash": "h", **(tags or {})}
    if final:
        tags["final"] = "yes"
    run = client.create_run(exp_id, tags={**tags, "mlflow.runName": name}, run_name=name)
    client.log_param(run.info.run_id, "image_size", "64")
    client.log_param(run.info.run_id, "weights", "random")
    for k, v in {"val_image_auroc": val, "val_pixel_auroc": 0.9, "image_auroc": test, "pixel_auroc": 0.9,
                 "aupro": 0.5, "n_test_scored": 23, "eval_resolution": 64}.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_leaderboard_ranks_on_validation_and_reports_final_seeds(tracking_uri, capsys):
    c = tracking.client(tracking_uri)
    exp = tracking.ensure_experiment(tracking_uri, "raybench-demo")
    _log_run(c, exp, "planted", val=0.5, test=1.0)  # perfect on test, chance on validation
    honest = _log_run(c, exp, "honest", val=0.8, test=0.7)
    _log_run(c, exp, "final-1", val=0.9, test=0.6, final=True)
    _log_run(c, exp, "final-2", val=0.7, test=0.8, final=True)
    real = _log_run(c, exp, "sia-real", val=0.6, test=0.5, tags={"method": "siamese-unet", "variant": "real"})
    synth = _log_run(c, exp, "sia-synth", val=0.7, test=0.4, tags={"method": "siamese-unet", "variant": "synthetic"})
    _log_run(c, exp, "later-sweep", val=0.99, test=0.99, tags={"sweep_id": "s2"})  # a sweep started after s1
    rows = tracking.leaderboard(tracking_uri, "demo", sweep_id="s1")
    by = {(r.method, r.variant): r for r in rows}
    assert by[("patchcore", "")].run_id == honest and by[("patchcore", "")].image_auroc == pytest.approx(0.7)
    assert by[("patchcore", "")].n_runs == 2  # finals never compete
    row = by[("patchcore", "")]
    assert row.final_n == 2 and row.final_image_auroc_mean == pytest.approx(0.7)
    assert row.final_image_auroc_std == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert by[("siamese-unet", "real")].run_id == real and by[("siamese-unet", "synthetic")].run_id == synth
    text = tracking.format_leaderboard(rows, wide=True)
    assert "ranked by VAL" in text and "0.7000 ± 0.1414 (n=2)" in text and "siamese-unet (real)" in text
    assert "smoke" in text and "64/64" in text and "honest" in text
    # the latest sweep by default; every sweep on request
    assert {r.sweep_id for r in tracking.leaderboard(tracking_uri, "demo")} == {"s2"}
    everything = tracking.leaderboard(tracking_uri, "demo", all_sweeps=True)
    assert [r.run_name for r in everything if r.method == "patchcore"] == ["later-sweep"]
    from raybench.cli import main
    assert main(["leaderboard", "demo", "--tracking-uri", tracking_uri, "--sweep-id", "s1", "--wide"]) == 0
    assert "honest" in capsys.readouterr().out
    assert main(["leaderboard", "demo", "--tracking-uri", tracking_uri, "--all-sweeps", "--wide"]) == 0
    out = capsys.readouterr().out
    assert "later-sweep" in out and "honest" not in out
    # best_model's order: validation first, whatever test says
    names = [r.info.run_name for r in tracking.finished_runs(tracking_uri, "demo", "disc", "patchcore")]
    assert names.index("honest") < names.index("planted")


def test_final_seeds_retrain_the_leaderboard_choice_per_variant_and_fold():
    def result(trial_id, lr, error=None, final=1):
        metrics = {"trial_id": trial_id, "final": final, "raybench_config": __import__("json").dumps({"seed": 0, "lr": lr})}
        return SimpleNamespace(config={"category": "disc"}, metrics=metrics, error=error)
    results = [result("t1", 0.1), result("t2", 0.2), result("t3", 0.3, error="boom"), result("t4", 0.4, final=0)]
    rows = [SimpleNamespace(category="disc", variant="", trial_ids=("t1", "t2"), folds=("a", "b")),
            SimpleNamespace(category="disc", variant="real", trial_ids=("t3",), folds=("a",))]  # t3 failed
    chosen = chosen_configs(results, rows)
    assert chosen == {("disc", "", "a"): {"seed": 0, "lr": 0.1}, ("disc", "", "b"): {"seed": 0, "lr": 0.2}}
    jobs = final_trial_configs(chosen, 2)
    assert [(j["category"], j["fold"], j["lr"], j["seed"]) for j in jobs] == [
        ("disc", "a", 0.1, 1), ("disc", "a", 0.1, 2), ("disc", "b", 0.2, 1), ("disc", "b", 0.2, 2)]


def test_the_pool_is_sized_by_the_largest_search_and_too_large_a_pool_stops_before_any_trial(disc):
    from raybench.sweep.plan import real_anomaly_need
    spec = get_method("siamese-unet")
    space = load_search_space("siamese-unet")  # n_anomalies up to 10, anomaly_source real or synthetic
    config = from_dict(spec.config_cls, {"weights": "random"})
    assert spec.max_real_anomalies(config, space.distributions) == 10
    assert real_anomaly_need(SweepSpec("demo", method="siamese-unet", budget="smoke"), space) == 10
    assert real_anomaly_need(SweepSpec("demo", method="siamese-unet", overrides={"n_anomalies": 3}), space) == 3
    narrow = space.without({"n_anomalies"})  # the default configuration (10 shots) runs first: the pool holds it
    assert real_anomaly_need(SweepSpec("demo", method="siamese-unet"), narrow) == 10
    assert real_anomaly_need(SweepSpec("demo", method="patchcore"), load_search_space("patchcore")) == 0
    synthetic_only = space.without({"anomaly_source"}).distributions
    assert spec.max_real_anomalies(from_dict(spec.config_cls, {"anomaly_source": "synthetic"}), synthetic_only) == 0
    assert get_method("rd").max_real_anomalies(from_dict(get_method("rd").config_cls, {}), {}) == 0
    with pytest.raises(DatasetError, match="pool of 32 real anomalies needs more than the 32"):
        make_split(disc, "crossfit", few_shot=32)  # demo: 16 crack + 16 spot
