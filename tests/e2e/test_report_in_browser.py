"""Issue 21: the report as a results section, looked at in headless Chromium (Debian's `chromium`;
the test skips and says why where it is missing). A real sqlite store holds two runs of a real
tiny PatchCore scored on a real split of a generated category; `raybench report` must show per
row the split sizes, hyperparameters, sweep and commit, a mean row per method, the winner alone
highlighted, and each chosen run's pictures on TEST (rebuilt from its recorded split) beside
validation's."""
from __future__ import annotations

import base64
import io
import json
import os
import re

import pytest
import torch
from PIL import Image

from conftest import make_mvtec_category
from raybench import tracking
from raybench.cli import main
from raybench.data import load_dataset
from raybench.data.tensors import load_images
from raybench.detector import Detector
from raybench.evaluation.splits import make_split
from raybench.methods import get_method
from raybench.config import from_dict, to_dict
from tracked_runs import log_detector_run

from e2e.test_mlflow_ui_in_browser import CHROMIUM, dump_dom

pytestmark = pytest.mark.slow


def _detector(data, category: str, method_seed: int) -> Detector:
    """A real PatchCore fitted on the category's split train images, with the split it records."""
    (cat,) = load_dataset("folder", data, [category])
    split = make_split(cat, "real", 0.3, 0)
    spec = get_method("patchcore")
    cfg = from_dict(spec.config_cls, {"weights": "random", "image_size": 32, "coreset_ratio": 0.5,
                                      "seed": method_seed, "sigma": 2.0 + method_seed})
    torch.manual_seed(method_seed)
    scorer = spec.build(cfg).eval()
    scorer.fit([load_images(split.train, 32)], 0.5)
    return Detector("patchcore", cfg, scorer, {"dataset": "folder", "category": category, "split": split.meta(),
                                               "image_threshold": 1.0, "pixel_threshold": 0.8})


def test_the_report_shows_results_and_test_pictures_in_chromium(tmp_path, tracking_uri):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium to look at the report")
    data = tmp_path / "data"
    for i, name in enumerate(("disc", "weave")):
        make_mvtec_category(data, name, n_train=6, n_good=6, n_bad=6, size=(40, 48), seed=i)
    c = tracking.client(tracking_uri)
    for category, seed, val, val_pix, test in (("disc", 0, 0.9, 0.8, 0.85), ("weave", 1, 0.7, 0.6, 0.65)):
        det = _detector(data, category, seed)
        run_id = log_detector_run(tracking_uri, det, "folder", category, val, val_pix, test, sweep_id="s1")
        for key, value in to_dict(det.config).items():  # the config, as the sweep's run logger logs it
            if key not in ("weights", "image_size"):
                c.log_param(run_id, key, json.dumps(value) if isinstance(value, list) else str(value))
    out = tmp_path / "report.html"
    assert main(["report", "folder", "--tracking-uri", tracking_uri, "--data-root", str(data), "--out", str(out)]) == 0
    page = dump_dom(out.as_uri(), tmp_path / "profile")
    assert "raybench: folder" in page
    # the table: one row per category, then the method's mean row; nothing highlighted (a lone method)
    assert page.count("<tr class=\"mean\">") == 1 and "patchcore (mean of 2)" in page
    assert "0.8000" in page and "0.7500" in page  # VAL image mean of 0.9 and 0.7; TEST mean of 0.85 and 0.65
    assert "class=\"winner\"" not in page
    assert "sigma=2" in page or "sigma=3" in page  # chosen hyperparameters that differ from the defaults
    assert ">s1<" in page
    # every chosen run: validation (logged by no trial here: said so) and TEST drawn now
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    alts = [alt for alt, _ in images]
    for category in ("disc", "weave"):
        for name in ("overlays.png", "curves.png", "score_histogram.png"):
            assert f"{category} patchcore test {name}" in alts, alts
    assert page.count("test (drawn after the choice)") == 2
    for alt, b64 in images:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG" and min(im.size) >= 150, alt
    assert len(c.search_runs([c.get_experiment_by_name("raybench-folder").experiment_id])) == 2  # the report logs nothing
