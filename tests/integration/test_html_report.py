"""`raybench report`: one self-contained HTML page from a real sqlite MLflow store (runs made here,
with the figures a trial renders), and read-only commands refusing a store that is not there."""
from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

from PIL import Image

from raybench.reporting import figures
from raybench import tracking
from raybench.cli import main
from unit.test_figures import _toy  # tests/ is on sys.path (rootdir conftest)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.text, self.stack = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _run(c, exp_id, category, method, image, pixel, tmp_path, with_figures=True, test_image=None, final=False):
    """A FINISHED run as a sweep logs it: validation metrics (`image`, `pixel`: what ranks) and
    test metrics (`test_image`, default 0.05 below validation), the tags a sweep's run carries."""
    name = f"{category}-{method}-{'final' if final else 't1'}"
    tags = {"dataset": "demo", "category": category, "method": method, "checkpoint": "yes",
            "sweep_id": "s1", "budget": "smoke", "test_split_hash": f"h-{category}", "mlflow.runName": name}
    run = c.create_run(exp_id, tags={**tags, **({"final": "yes"} if final else {})})
    run_id = run.info.run_id
    test_image = round(image - 0.05, 4) if test_image is None else test_image
    for key, value in (("val_image_auroc", image), ("val_pixel_auroc", pixel), ("image_auroc", test_image),
                       ("pixel_auroc", pixel - 0.05)):
        c.log_metric(run_id, key, value)
    if with_figures:
        folder = tmp_path / run_id
        figures.render_trial(folder, *_toy(size=24), 0.5, 0.4, title=f"{category} {method}")
        c.log_artifacts(run_id, str(folder), figures.FIGURES_DIR)
    c.set_terminated(run_id, "FINISHED")
    return run_id


def test_report_is_one_self_contained_page_with_every_best_runs_figures(tmp_path, tracking_uri, capsys):
    exp_id = tracking.ensure_experiment(tracking_uri, "raybench-demo")
    c = tracking.client(tracking_uri)
    _run(c, exp_id, "disc", "patchcore", 0.8, 0.7, tmp_path)
    _run(c, exp_id, "disc", "rd", 0.9, 0.6, tmp_path)
    _run(c, exp_id, "weave", "patchcore", 0.7, 0.7, tmp_path, with_figures=False)
    for test_image in (0.6, 0.7):  # --final-seeds: the chosen configuration retrained, test mean ± std
        _run(c, exp_id, "weave", "patchcore", 0.7, 0.7, tmp_path, with_figures=False, test_image=test_image,
             final=True)
    out = tmp_path / "out" / "report.html"
    assert main(["report", "demo", "--tracking-uri", tracking_uri, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == []  # every element closed
    text = " ".join(page.text)
    for name in ("disc-patchcore-t1", "disc-rd-t1", "weave-patchcore-t1", "0.9000", "no validation figures logged",
                 "VAL image AUROC", "TEST image AUROC", "chosen on validation", "0.6500 ± 0.0707 (n=2)"):
        assert name in text, name
    assert "0.8500" in text  # disc rd's test figure beside its validation 0.9000
    assert "-final" not in text  # final-seed runs never compete for a row
    # 1 chart + 3 figures for each of the two runs with figures; all inline, valid PNGs
    assert len(page.images) == 1 + 3 * 2
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        png = base64.b64decode(img["src"].split(",", 1)[1])
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and min(im.size) >= 150
    assert not [link for link in page.links if "://" in link]  # nothing to fetch: opens offline
    assert "http://" not in out.read_text() and "https://" not in out.read_text()
    assert any(img["alt"] == "disc rd validation overlays.png" for img in page.images)
    # issue 21: a mean row per method; only disc's true winner (rd over patchcore) highlighted, not
    # weave's lone method; these runs hold no detector, so each says why it has no test pictures
    source = out.read_text(encoding="utf-8")
    assert source.count("<tr class='winner'>") == 1 and "patchcore (mean of 2)" in text and "rd (mean of 1)" in text
    assert text.count("no test pictures") == 3


def test_read_only_commands_refuse_a_store_that_is_not_there(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mlflow.db"
    uri = f"sqlite:///{missing}"
    for argv in (["leaderboard", "demo"], ["report", "demo", "--out", str(tmp_path / "r.html")],
                 ["predict", "--category", "disc", str(tmp_path / "part.png")]):
        assert main([*argv, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and str(missing) in err, argv
    assert not missing.exists() and not missing.parent.exists()


def test_report_of_an_empty_store_says_so(tracking_uri, tmp_path, capsys):
    tracking.ensure_experiment(tracking_uri, "raybench-demo")
    assert main(["report", "demo", "--tracking-uri", tracking_uri, "--out", str(tmp_path / "r.html")]) == 2
    assert "no finished runs of dataset 'demo'" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_predict_on_an_empty_folder_says_so(tmp_path, tracking_uri, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--category", "disc", "--tracking-uri", tracking_uri, str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no image files in" in err and "empty" in err
