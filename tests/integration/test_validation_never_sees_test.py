"""An honest leaderboard end to end (real local Ray, MLflow sqlite, Optuna), crossfit by default:
siamese-unet trials that draw different numbers of real anomalies are validated and tested on their
fold's identical file lists; the few shots are the pool's first n and never scored; real and
synthetic anomalies are two rows, each fold's choice reported on the other; final seeds retrain them."""
import json

import pytest

from raybench import tracking
from raybench.data import load_dataset
from raybench.evaluation.splits import make_split
from raybench.sweep.driver import run_sweep
from raybench.sweep.plan import SweepSpec

pytestmark = pytest.mark.slow

SPACE = """
method: siamese-unet
params:
  n_anomalies: {type: int, low: 1, high: 3}
  anomaly_source: {type: categorical, choices: [real, synthetic]}
fixed: {}
"""


def test_siamese_trials_share_one_split_the_pool_is_never_scored_and_final_seeds_report_spread(
        tmp_path, demo_root, ray_local):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = run_sweep(SweepSpec(dataset="demo", data_root=str(demo_root), categories="stripes", method="siamese-unet",
                               trials=3, budget="smoke", search_space=str(space), tracking_uri=uri,
                               storage=str(tmp_path / "ray"), final_seeds=1, seed=3))  # crossfit: 3 per fold
    (cat,) = load_dataset("demo", demo_root, ["stripes"])
    # the pool: the space draws up to 3 shots, the default configuration (the first trial) 10
    folds = {f: make_split(cat, "crossfit", few_shot=10, fold=f) for f in ("a", "b")}
    rel = lambda samples: {str(s.path.relative_to(cat.root / cat.name)) for s in samples}  # noqa: E731
    pool = rel(folds["a"].pool)
    c = tracking.client(uri)
    runs = c.search_runs([c.get_experiment_by_name("raybench-demo").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and {r.data.tags["sweep_complete"] for r in runs} == {"yes"}
    search = [r for r in runs if r.data.tags.get("final") != "yes"]
    finals = [r for r in runs if r.data.tags.get("final") == "yes"]
    assert len(search) == 6 and sum(r.data.tags["default_config"] == "yes" for r in search) == 2  # one per fold
    # every run, whatever it sampled, is tested on its fold's files: the other fold
    for run in runs:
        split = folds[run.data.params["fold"]]
        assert run.data.tags["test_split_hash"] == split.test_split_hash
        assert run.data.metrics["n_test_scored"] == len(split.test)
        assert run.data.metrics["n_val_scored"] == len(split.validation)  # the pool is never in validation
    assert {r.data.tags["split_group"] for r in runs} == {folds["a"].split_group}
    real = [r for r in search if r.data.params["anomaly_source"] == "real"]
    for run in real:  # the few shots are the pool's first n, never scored
        folder = tracking.download_detector(run, uri, str(tmp_path / run.info.run_id))
        excluded = json.loads((folder / "detector.json").read_text())["meta"]["excluded_validation"]
        assert excluded == [str(s.path.relative_to(cat.root / cat.name))
                            for s in folds["a"].pool[:int(run.data.params["n_anomalies"])]]
        assert set(excluded) <= pool
    for split in folds.values():
        assert pool.isdisjoint(rel(split.validation) | rel(split.test))
    # real and synthetic anomalies: two rows, each fold's choice reported on the other fold
    assert sorted(r.variant for r in rows) == sorted({r.data.tags.get("variant") for r in search})
    for row in rows:
        assert row.val_mode == "crossfit" and row.n_test == len(folds["a"].test) + len(folds["b"].test)
        assert row.oracle_test_image_auroc >= row.image_auroc - 1e-12
        for run_id, fold in zip(row.run_ids, row.folds):
            mine = [r for r in search if r.data.tags.get("variant") == row.variant and r.data.params["fold"] == fold]
            best = max(mine, key=lambda r: (tracking.rank_key(r.data.metrics), -r.info.start_time))
            assert run_id == best.info.run_id
        assert row.final_n == len(row.run_ids)  # one new seed per fold's choice
        for final in [r for r in finals if r.data.tags.get("variant") == row.variant]:
            chosen = c.get_run(row.run_ids[row.folds.index(final.data.params["fold"])])
            assert final.data.params["seed"] == "4"  # a new seed (the search used 3)
            for key in ("n_anomalies", "anomaly_source", "lr1", "epochs1"):
                assert final.data.params[key] == chosen.data.params[key]
