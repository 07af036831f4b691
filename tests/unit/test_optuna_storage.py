"""Issue 21: each category's Optuna search persisted beside the MLflow store (what
optuna-dashboard reads), written as trials end; failed trials recorded as failed."""
from types import SimpleNamespace

import optuna

from raybench.sweep.optuna_storage import OptunaRecorder, storage_url, study_name
from raybench.sweep.search_space import SearchSpace


def test_the_studies_land_beside_the_mlflow_store(tmp_path):
    url = storage_url(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert url == f"sqlite:///{tmp_path / 'optuna.db'}"
    space = SearchSpace("patchcore", {"sigma": optuna.distributions.FloatDistribution(1, 8),
                                      "patch_size": optuna.distributions.CategoricalDistribution([1, 3, 5])}, {}, "")
    rec = OptunaRecorder(url, "demo", "patchcore", "s1", space, log=lambda m: None)
    trial = lambda config, result: SimpleNamespace(config=config, last_result=result)  # noqa: E731
    rec.on_trial_complete(0, [], trial({"category": "disc", "sigma": 2.0, "patch_size": 3}, {"val_objective": 0.8}))
    rec.on_trial_complete(0, [], trial({"category": "disc", "sigma": 4.0, "patch_size": 1}, {"val_objective": 0.9}))
    rec.on_trial_error(0, [], trial({"category": "weave", "sigma": 5.0, "patch_size": 5}, None))
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert names == {study_name("demo", "patchcore", c, "s1") for c in ("disc", "weave")} == {
        "demo/patchcore/disc/s1", "demo/patchcore/weave/s1"}
    disc = optuna.load_study(study_name="demo/patchcore/disc/s1", storage=url)
    assert [t.value for t in disc.trials] == [0.8, 0.9] and disc.best_params == {"sigma": 4.0, "patch_size": 1}
    weave = optuna.load_study(study_name="demo/patchcore/weave/s1", storage=url)
    assert [t.state for t in weave.trials] == [optuna.trial.TrialState.FAIL]


def test_a_store_that_cannot_be_written_never_stops_the_sweep(tmp_path):
    said = []
    (tmp_path / "optuna.db").mkdir()  # a folder where the file should be
    rec = OptunaRecorder(f"sqlite:///{tmp_path / 'optuna.db'}", "demo", "patchcore", "s1",
                         SearchSpace("patchcore", {}, {}, ""), log=said.append)
    for _ in range(2):
        rec.on_trial_complete(0, [], SimpleNamespace(config={"category": "disc"}, last_result={"val_image_auroc": 1}))
    assert len(said) == 1 and said[0].startswith("WARNING: Optuna storage")


def test_a_tracking_server_keeps_the_studies_beside_the_local_tune_storage(tmp_path):
    assert storage_url("http://10.0.0.5:5000", str(tmp_path / "ray")) == f"sqlite:///{tmp_path / 'ray' / 'optuna.db'}"
    assert storage_url("http://10.0.0.5:5000", "s3://bucket/ray").endswith("/optuna.db")  # ./optuna.db


def test_the_recorder_pickles_as_tune_saves_its_callbacks(tmp_path):
    import pickle

    import ray.cloudpickle

    url = storage_url(f"sqlite:///{tmp_path / 'mlflow.db'}")
    space = SearchSpace("patchcore", {"sigma": optuna.distributions.FloatDistribution(1, 8)}, {}, "")
    rec = OptunaRecorder(url, "demo", "patchcore", "s1", space, log=lambda m: None)
    rec.record({"category": "disc", "sigma": 2.0}, {"val_objective": 0.8})  # an open storage inside
    again = pickle.loads(ray.cloudpickle.dumps(rec))
    again.record({"category": "disc", "sigma": 3.0}, {"val_image_auroc": 0.7})
    assert len(optuna.load_study(study_name="demo/patchcore/disc/s1", storage=url).trials) == 2
