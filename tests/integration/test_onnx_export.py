"""ONNX export: the whole scorer as one graph with a dynamic batch, scoring what torch scores
(onnxruntime vs torch within 1e-4 relative), and `raybench export` from a tracked run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raybench.cli import main
from raybench.config import from_dict
from raybench.detector import Detector
from raybench.delivery.export import INFO_FILE, MODEL_FILE, PARITY_RTOL, export, parity, relative_error
from raybench.methods import get_method

from tracked_runs import log_detector_run, tiny_patchcore

pytest.importorskip("onnxruntime")


def test_relative_error_is_against_the_arrays_scale():
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0


def _unet(method: str) -> Detector:
    spec = get_method(method)
    cfg = from_dict(spec.config_cls, {"weights": "random", "image_size": 32, "backbone": "resnet18",
                                      "bottleneck_blocks": 1, "decoder_blocks": 1})
    torch.manual_seed(0)
    scorer = spec.build(cfg).eval()
    for module in scorer.modules():  # an untrained CPAM is x**3; give its attention branches weight
        for name in ("beta", "gamma"):
            if isinstance(getattr(module, name, None), torch.nn.Parameter):
                getattr(module, name).data.fill_(0.5)
    return Detector(method, cfg, scorer, {"image_threshold": 1.0})


@pytest.mark.parametrize("method", ["patchcore", "rd", "siamese-unet"])
def test_onnx_scores_what_torch_scores(method, tmp_path):
    det = tiny_patchcore(image_threshold=1.0) if method == "patchcore" else _unet(method)
    path, figures = export(det, tmp_path, "onnx")
    assert path == tmp_path / MODEL_FILE and path.is_file()
    assert figures["scores"] <= PARITY_RTOL and figures["maps"] <= PARITY_RTOL, figures
    import onnx
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    for n in (1, 5):  # batch sizes other than the export's 2
        images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        got = parity(det, path, images)
        assert got["images"] == n and max(got["scores"], got["maps"]) <= PARITY_RTOL, got
    info = json.loads((tmp_path / INFO_FILE).read_text())
    assert info["method"] == method and info["image_size"] == 32 and info["image_threshold"] == 1.0


def test_parity_notices_a_graph_that_scores_differently(tmp_path):
    det = tiny_patchcore()
    path, _ = export(det, tmp_path)
    det.scorer.memory_bank += 0.5  # torch's model moves on; the exported graph does not
    figures = parity(det, path)
    assert figures["scores"] > PARITY_RTOL


def test_export_refuses_an_unfitted_scorer(tmp_path):
    spec = get_method("patchcore")
    cfg = from_dict(spec.config_cls, {"weights": "random", "image_size": 32})
    with pytest.raises(ValueError, match="memory bank"):
        export(Detector("patchcore", cfg, spec.build(cfg)), tmp_path)


def test_cli_exports_the_best_tracked_run(tmp_path, tracking_uri, capsys):
    # best on validation is exported, not best on test
    log_detector_run(tracking_uri, tiny_patchcore(seed=1), "demo", "disc", image_auroc=0.6, test_image_auroc=0.99)
    best = log_detector_run(tracking_uri, tiny_patchcore(seed=2), "demo", "disc", image_auroc=0.9)
    out = tmp_path / "onnx"
    assert main(["export", "demo", "disc", "--out", str(out), "--tracking-uri", tracking_uri]) == 0
    printed = capsys.readouterr().out
    assert best[:8] in printed and "relative error" in printed
    assert (out / MODEL_FILE).is_file() and json.loads((out / INFO_FILE).read_text())["run_id"] == best
    assert main(["export", "demo", "nope", "--out", str(out), "--tracking-uri", tracking_uri]) != 0
