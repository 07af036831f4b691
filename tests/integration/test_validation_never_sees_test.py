"""An honest leaderboard end to end (real local Ray, MLflow sqlite, Optuna): siamese-unet trials
that draw different numbers of real anomalies are all tested on the identical file list; the few
shots come from validation; real and synthetic anomalies are two rows; final seeds give mean +- std."""
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


def test_siamese_trials_share_one_test_split_and_final_seeds_report_spread(tmp_path, demo_root, ray_local):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = run_sweep(SweepSpec(dataset="demo", data_root=str(demo_root), categories="stripes", method="siamese-unet",
                               trials=4, budget="smoke", search_space=str(space), tracking_uri=uri,
                               storage=str(tmp_path / "ray"), final_seeds=1, seed=3))
    (cat,) = load_dataset("demo", demo_root, ["stripes"])
    split = make_split(cat)
    validation = {str(s.path.relative_to(cat.root / cat.name)) for s in split.validation}
    test = {str(s.path.relative_to(cat.root / cat.name)) for s in split.test}
    c = tracking.client(uri)
    runs = c.search_runs([c.get_experiment_by_name("raybench-demo").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    search = [r for r in runs if r.data.tags.get("final") != "yes"]
    finals = [r for r in runs if r.data.tags.get("final") == "yes"]
    assert len(search) == 4
    # every run, whatever it sampled, is tested on the same files
    assert {r.data.tags["test_split_hash"] for r in runs} == {split.test_split_hash}
    assert {r.data.metrics["n_test_scored"] for r in runs} == {len(split.test)}
    real = [r for r in search if r.data.params["anomaly_source"] == "real"]
    assert len({r.data.params["n_anomalies"] for r in real}) >= 2, "the seeded search should vary n_anomalies"
    for run in real:  # the few shots came from validation and were left out of its scoring
        folder = tracking.download_detector(run, uri, str(tmp_path / run.info.run_id))
        excluded = set(json.loads((folder / "detector.json").read_text())["meta"]["excluded_validation"])
        assert len(excluded) == int(run.data.params["n_anomalies"])
        assert excluded <= validation and not excluded & test
        assert run.data.metrics["n_val_scored"] == len(split.validation) - len(excluded)
    # real and synthetic anomalies: two rows, each chosen on validation, each with its final seed
    variants = {r.data.tags.get("variant") for r in search}
    assert variants == {"real", "synthetic"}
    assert sorted(r.variant for r in rows) == ["real", "synthetic"]
    for row in rows:
        mine = [r for r in search if r.data.tags.get("variant") == row.variant]
        best = max(mine, key=lambda r: (r.data.metrics["val_image_auroc"], r.data.metrics["val_pixel_auroc"]))
        assert row.run_id == best.info.run_id
        assert row.final_n == 1
        (final,) = [r for r in finals if r.data.tags.get("variant") == row.variant]
        assert final.data.params["seed"] == "4"  # a new seed (the search used 3)
        for key in ("n_anomalies", "anomaly_source", "lr1", "epochs1"):
            assert final.data.params[key] == best.data.params[key]
        assert row.final_image_auroc_mean == pytest.approx(final.data.metrics["image_auroc"])
