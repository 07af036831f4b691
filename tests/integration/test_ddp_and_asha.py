"""Scaling a trial and a sweep: Ray Train DDP workers (gloo on CPU) and ASHA early stopping, on a
real local Ray and a real MLflow store, with the trained `rd` method at smoke size."""
import math

import pytest

from raybench import tracking
from raybench.sweep.driver import run_sweep
from raybench.sweep.plan import SweepSpec

pytestmark = pytest.mark.slow


def _spec(tmp_path, demo_root, uri, **kw):
    base = dict(dataset="demo", data_root=str(demo_root), categories="stripes", method="rd", trials=1,
                budget="smoke", tracking_uri=uri, storage=str(tmp_path / "ray"), cpus_per_trial=1,
                overrides={"epochs1": 2}, val_mode="real")  # one search (crossfit runs one per fold)
    return SweepSpec(**{**base, **kw})


def _runs(uri):
    c = tracking.client(uri)
    return c.search_runs([c.get_experiment_by_name("raybench-demo").experiment_id])


def test_two_ddp_workers_train_one_trial_as_well_as_one(tmp_path, demo_root, ray_local):
    single, double = f"sqlite:///{tmp_path / 'one.db'}", f"sqlite:///{tmp_path / 'two.db'}"
    run_sweep(_spec(tmp_path, demo_root, single, workers=1))
    run_sweep(_spec(tmp_path, demo_root, double, workers=2))
    (one,), (two,) = _runs(single), _runs(double)
    assert one.info.status == two.info.status == "FINISHED"
    assert one.data.metrics["workers"] == 1 and two.data.metrics["workers"] == 2
    assert two.data.tags["checkpoint"] == "yes"
    # same data, same epochs, the gradient averaged over two shards: quality of the same order
    assert math.isfinite(two.data.metrics["image_auroc"])
    assert abs(two.data.metrics["image_auroc"] - one.data.metrics["image_auroc"]) < 0.25


def test_asha_reports_every_epoch_and_ends_every_run(tmp_path, demo_root, ray_local):
    uri = f"sqlite:///{tmp_path / 'asha.db'}"
    run_sweep(_spec(tmp_path, demo_root, uri, trials=3, asha=True, overrides={"epochs1": 3}, max_concurrent=1))
    runs = _runs(uri)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    c = tracking.client(uri)
    histories = [c.get_metric_history(r.info.run_id, "val_image_auroc") for r in runs]
    assert max(len(h) for h in histories) >= 3  # per-epoch validation reports reached MLflow with their step
    # test is scored once per trial, at its end (never by the reports ASHA reads)
    assert all(len(c.get_metric_history(r.info.run_id, "image_auroc")) <= 1 for r in runs)
    kept = [r for r in runs if r.data.tags.get("checkpoint") == "yes"]
    stopped = [r for r in runs if r.data.tags.get("stopped_early") == "yes"]
    assert kept and len(kept) + len(stopped) == 3
