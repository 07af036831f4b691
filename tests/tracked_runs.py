"""A Detector logged as a FINISHED run the way the sweep logs one (tags, metrics, `detector`
artifact) in a real MLflow store, without running a sweep: for the export/registry/serve tests."""
from __future__ import annotations

import tempfile

import torch

from raybench import tracking
from raybench.config import from_dict
from raybench.detector import Detector
from raybench.methods import get_method


def tiny_patchcore(image_size: int = 32, seed: int = 0, **meta) -> Detector:
    """PatchCore on a random resnet18, its memory bank from seeded random images."""
    spec = get_method("patchcore")
    cfg = from_dict(spec.config_cls, {"weights": "random", "image_size": image_size, "coreset_ratio": 0.1})
    torch.manual_seed(seed)
    scorer = spec.build(cfg).eval()
    scorer.fit([torch.rand(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed))], 0.1)
    return Detector("patchcore", cfg, scorer, meta)


def log_detector_run(uri: str, det: Detector, dataset: str, category: str, image_auroc: float,
                     pixel_auroc: float = 0.5, test_image_auroc: float | None = None,
                     test_pixel_auroc: float | None = None, sweep_id: str = "tracked", final: bool = False) -> str:
    """`image_auroc` / `pixel_auroc` are the VALIDATION figures (what ranks the run, as the sweep's
    `val_*` metrics); the test figures default to the same values. Tags and params as
    raybench.sweep.run_logger.MLflowTrialLogger leaves a finished trial's run (sweep, budget, split)."""
    c = tracking.client(uri)
    exp_id = tracking.ensure_experiment(uri, tracking.experiment_name(dataset))
    run = c.create_run(exp_id, tags={"dataset": dataset, "category": category, "method": det.method,
                                     "sweep_id": sweep_id, "budget": "smoke", "raybench": "1",
                                     "test_split_hash": f"tracked-{category}", "checkpoint": "yes",
                                     **({"final": "yes"} if final else {})})
    run_id = run.info.run_id
    for name, value in (("weights", det.config.weights), ("image_size", det.config.image_size),
                        ("val_mode", "real"), ("split_seed", 0)):
        c.log_param(run_id, name, str(value))
    test_image = image_auroc if test_image_auroc is None else test_image_auroc
    test_pixel = pixel_auroc if test_pixel_auroc is None else test_pixel_auroc
    for name, value in (("val_image_auroc", image_auroc), ("val_pixel_auroc", pixel_auroc),
                        ("image_auroc", test_image), ("pixel_auroc", test_pixel),
                        ("image_threshold", det.image_threshold), ("pixel_threshold", det.pixel_threshold)):
        if value is not None:
            c.log_metric(run_id, name, value)
    with tempfile.TemporaryDirectory() as folder:
        det.save(folder)
        c.log_artifacts(run_id, folder, "detector")
    c.set_terminated(run_id, "FINISHED")
    return run_id
