"""Issue 12's checks that need no Ray: value ranges, mask sizes, filter quoting, synthesis on a thin
foreground, cuts that `predict` reproduces, an uncreatable sqlite file, the CLI's own errors."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_mvtec_category, save_png
from raybench import tracking
from raybench.cli import EXIT_NO_MODEL, EXIT_USAGE, main
from raybench.config import check_range, field_ranges, field_types, from_dict
from raybench.data import load_dataset, validate_category
from raybench.detector import Detector
from raybench.errors import ConfigError, DatasetError, TrackingError
from raybench.evaluation.scoring import evaluate_scorer
from raybench.methods import get_method, method_names
from raybench.sweep.search_space import load_search_space
from raybench.synthesis.blend import blend_patches, foreground_mask


@pytest.mark.parametrize("method", method_names())
def test_every_number_of_every_config_declares_its_range_and_the_defaults_lie_in_it(method):
    cls = get_method(method).config_cls
    ranges = field_ranges(cls)
    for name, tp in field_types(cls).items():
        if any(t in (int, float) for t in (tp, *getattr(tp, "__args__", ()))) and tp is not bool:
            assert name in ranges, f"{method}.{name} has no range"
    config = from_dict(cls, {})  # the defaults pass their own checks
    for name, bounds in ranges.items():
        check_range(name, getattr(config, name), bounds)


@pytest.mark.parametrize("values, message", [
    ({"batch_size": 0}, "batch_size: 0 is out of range (must be >= 1)"),
    ({"coreset_ratio": -1.0}, "coreset_ratio: -1.0 is out of range (must be in (0, 1])"),
    ({"coreset_ratio": 0.0}, "coreset_ratio: 0.0 is out of range"),
    ({"coreset_ratio": float("nan")}, "coreset_ratio: nan is out of range"),
    ({"sigma": -0.5}, "sigma: -0.5 is out of range (must be >= 0)"),
])
def test_out_of_range_values_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        from_dict(get_method("patchcore").config_cls, values)
    assert from_dict(get_method("patchcore").config_cls, {"coreset_ratio": 1.0}).coreset_ratio == 1.0  # closed end


def test_list_fields_are_checked_element_by_element():
    with pytest.raises(ConfigError, match="betas"):
        from_dict(get_method("rd").config_cls, {"betas": [0.5, 1.0]})  # Adam's beta2 < 1


def test_search_space_bounds_and_choices_outside_the_range_fail_at_load(tmp_path):
    bad = tmp_path / "neg.yaml"
    bad.write_text("method: patchcore\nparams:\n  coreset_ratio: {type: float, low: -0.1, high: 0.1}\n")
    with pytest.raises(ConfigError, match=r"coreset_ratio.low: -0.1 is out of range"):
        load_search_space("patchcore", bad)
    bad.write_text("method: patchcore\nparams:\n  patch_size: {type: categorical, choices: [0, 3]}\n")
    with pytest.raises(ConfigError, match="patch_size: 0 is out of range"):
        load_search_space("patchcore", bad)
    bad.write_text("method: patchcore\nparams: {}\nfixed: {batch_size: 0}\n")
    with pytest.raises(ConfigError, match="batch_size: 0 is out of range"):
        load_search_space("patchcore", bad)


def test_a_mask_of_another_size_than_its_image_is_named_before_any_trial(tmp_path):
    root = tmp_path / "mvtec"
    base = make_mvtec_category(root, "widget", size=(40, 48))
    mask = base / "ground_truth" / "scratch" / "001_mask.png"
    save_png(mask, np.zeros((20, 24), np.uint8))
    (cat,) = load_dataset("folder", root, "widget")
    with pytest.raises(DatasetError, match=r"001_mask.png: mask is 24x20 px but its image 001.png is 48x40 px"):
        validate_category(cat)


def test_filter_values_with_quotes_find_their_runs(tmp_path):
    c = tracking.client(f"sqlite:///{tmp_path / 'm.db'}")
    exp = c.create_experiment("raybench-x", artifact_location=(tmp_path / "a").as_uri())
    names = ["it's", 'say "hi"', "both ' and \"", "plain"]
    for name in names:
        run = c.create_run(exp, tags={"category": name, "sweep_id": f"s-{name}"})
        c.set_terminated(run.info.run_id, "FINISHED")
    for name in names:
        (run,) = tracking.search_runs(c, [exp], {"category": name, "sweep_id": f"s-{name}"}, status="FINISHED")
        assert run.data.tags["category"] == name


def test_synthesis_on_a_thin_foreground_never_fails_and_stays_on_it():
    """A thin object along the border: no box centred on it fits in the image, which used to end
    in `synthesis produced an empty mask` for about half the seeds."""
    image = np.full((3, 64, 64), 0.2, np.float32)
    image[:, :, 61:] = 0.9  # 3 px of 64 along the right edge
    region, found = foreground_mask(image, return_found=True)
    assert found and region.sum() == 3 * 64
    for seed in range(30):
        out, mask = blend_patches(image, image.copy(), np.random.default_rng(seed), object_like=True)
        assert mask.any() and not (mask.astype(bool) & ~region).any()


def test_a_user_can_say_a_folder_category_is_a_texture(tmp_path):
    root = tmp_path / "data"
    make_mvtec_category(root, "surface")
    assert load_dataset("folder", root, "surface")[0].kind == "object"  # not in MVTec AD's texture list
    assert load_dataset("folder", root, "surface", {"surface": "texture"})[0].kind == "texture"
    with pytest.raises(DatasetError, match="'fabric' is not one of"):
        load_dataset("folder", root, "surface", {"surface": "fabric"})


class PixelScorer(nn.Module):
    """Image score = the top-left pixel's value, map = the first channel: a scorer whose cut is
    set by one pixel, so any difference in input precision shows in the verdicts."""
    image_size = 16

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x[:, 0, 0, 0] + 0 * self.dummy, x[:, 0]


def test_predict_reproduces_the_logged_verdicts_at_the_cut(tmp_path):
    """The lowest defect defines the F1-max cut; its 16-bit value rounds *up* in float16, so a
    cut on the float16 score with predict reading float32 called it normal (F1 = 1.0 logged)."""
    lowest = next(v for v in range(39000, 40000)
                  if float(np.float16(v / 65535)) > float(np.float32(v / 65535)))
    values = {"good": [8000, 9000, 10000], "crack": [lowest, 50000, 60000]}
    base = tmp_path / "data" / "part"
    for i, v in enumerate([7000, 7500, 8500]):
        save_png(base / "train" / "good" / f"{i}.png", np.full((16, 16), v, np.uint16))
    for kind, vs in values.items():
        for i, v in enumerate(vs):
            save_png(base / "test" / kind / f"{i}.png", np.full((16, 16), v, np.uint16))
            if kind != "good":
                mask = np.zeros((16, 16), np.uint8)
                mask[4:8, 4:8] = 255
                save_png(base / "ground_truth" / kind / f"{i}_mask.png", mask)
    (cat,) = load_dataset("folder", tmp_path / "data", "part")
    metrics = evaluate_scorer(PixelScorer(), cat, torch.device("cpu"))
    assert metrics["f1_max"] == 1.0
    det = Detector("patchcore", get_method("patchcore").config_cls(),
                   PixelScorer(), {"image_threshold": metrics["image_threshold"]})
    scores, _ = det.predict([s.path for s in cat.test])
    assert [bool(v) for v in scores >= det.image_threshold] == [bool(s.label) for s in cat.test]


def test_an_uncreatable_sqlite_file_fails_fast(tmp_path):
    folder = tmp_path / "db"
    (folder / "mlflow.db").mkdir(parents=True)  # the folder is writable; the "file" cannot be opened
    with pytest.raises(TrackingError, match="cannot be created or opened as a sqlite file"):
        tracking.check_tracking(f"sqlite:///{folder / 'mlflow.db'}")
    (folder / "text.db").write_text("not a database")
    with pytest.raises(TrackingError, match="text.db cannot be created or opened"):
        tracking.check_tracking(f"sqlite:///{folder / 'text.db'}")


def test_cli_usage_errors_have_the_prefix_and_predict_without_a_model_its_own_code(tmp_path, capsys):
    assert main(["sweep", "demo", "--set", "coreset_ratio"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "raybench: error: --set expects KEY=VALUE, got 'coreset_ratio'"
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "demo", "--trials", "0"])
    assert exit_.value.code == 2 and "--trials: must be at least 1, got 0" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking.check_tracking(uri)  # an existing, empty store (a missing one is refused before any lookup)
    image = save_png(tmp_path / "images" / "a.png", np.full((8, 8, 3), 100, np.uint8))
    assert main(["predict", "--category", "nonexistent", "--tracking-uri", uri, str(image)]) == EXIT_NO_MODEL
    err = [line for line in capsys.readouterr().err.splitlines() if "mlflow.store.db" not in line]  # a new store
    assert len(err) == 1 and err[0].startswith("raybench: error: no finished run with a checkpoint for category "
                                               "'nonexistent'")
