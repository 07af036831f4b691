"""ONNX export: a Detector's whole scorer as one graph, checked against torch.

The graph takes float32 images (N, 3, S, S), RGB in [0, 1] at the detector's `image_size` (the
resize is the caller's, as in `Detector.predict`), N dynamic, and returns `scores` (N,) and
`maps` (N, S, S): the backbone, PatchCore's memory-bank nearest neighbour (the bank is a constant
of the graph) or the T-S U-Net's 1 - cos maps, upsampling and Gaussian smoothing included.
`raybench-onnx.json` beside it says what the inputs are and carries the verdict thresholds.

Exported with torch's TorchScript-based exporter (`dynamo=False`): it needs only `onnx`, and
every op of the scorers traces to standard ONNX (opset 17).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from raybench.errors import ExportError
from raybench.models.common import gaussian_blur, upsample_maps
from raybench.models.patchcore import PatchCore
from raybench.models.siamese_unet.model import SiameseUNet

OPSET = 17
MODEL_FILE, INFO_FILE = "model.onnx", "raybench-onnx.json"
FORMATS = ("onnx",)
PARITY_RTOL = 1e-4


class PatchCoreGraph(nn.Module):
    """PatchCore.forward without its chunk loop (a traced loop would fix the batch size): one
    distance matrix per batch, the same expansion |q|^2 - 2 q.b + |b|^2 as `nearest_distances`."""

    def __init__(self, model: PatchCore):
        super().__init__()
        self.model = model
        bank = model.memory_bank.float()
        self.register_buffer("bank_t", bank.T.contiguous())
        self.register_buffer("bank_sq", (bank ** 2).sum(1)[None])

    def forward(self, images: torch.Tensor):
        emb = self.model.embed(images)
        _, h, w, d = emb.shape
        q = emb.reshape(-1, d).float()
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * (q @ self.bank_t) + self.bank_sq
        patch = d2.min(dim=1).values.clamp_min(0).sqrt().reshape(-1, h, w)
        scores = patch.flatten(1).max(dim=1).values
        return scores, gaussian_blur(upsample_maps(patch, self.model.image_size), self.model.sigma)


def _cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """F.cosine_similarity(a, b, dim=1) as ATen computes it (each vector over its own norm,
    clamped at eps). The exporter's symbolic clamps the product of the norms instead, which
    differs wherever a feature vector is near zero (an untrained CPAM's x**3 output)."""
    a = a / torch.linalg.vector_norm(a, dim=1, keepdim=True).clamp_min(eps)
    b = b / torch.linalg.vector_norm(b, dim=1, keepdim=True).clamp_min(eps)
    return (a * b).sum(dim=1)


class SiameseUNetGraph(nn.Module):
    """SiameseUNet.forward in float32 (its bf16 autocast is for CUDA training), the maps of
    losses.anomaly_map with the cosine above."""

    def __init__(self, model: SiameseUNet):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        teacher, student = self.model.features(images)
        size = self.model.image_size
        total = sum(upsample_maps(1.0 - _cosine(t.float(), s.float()), size) for t, s in zip(teacher, student))
        maps = gaussian_blur(total, self.model.sigma)
        return maps.flatten(1).amax(dim=1), maps


def graph_module(scorer: nn.Module) -> nn.Module:
    """The exportable twin of a scorer (patchcore, cutswap, cutpaste: PatchCore; rd, siamese-unet:
    SiameseUNet)."""
    if isinstance(scorer, PatchCore):
        if scorer.memory_bank.numel() == 0:
            raise ValueError("PatchCore has no memory bank: export a fitted detector")
        return PatchCoreGraph(scorer).eval()
    if isinstance(scorer, SiameseUNet):
        return SiameseUNetGraph(scorer).eval()
    raise ValueError(f"no ONNX export for scorer {type(scorer).__name__}")


def export_onnx(detector, out_dir, opset: int = OPSET) -> Path:
    """Write `model.onnx` and `raybench-onnx.json` into out_dir; returns the model's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    module = graph_module(detector.scorer).to("cpu")
    size = detector.image_size
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    path = out / MODEL_FILE
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["scores", "maps"],
                          dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}, "maps": {0: "batch"}})
    detector.to(detector.device)  # graph_module moved the shared scorer to the CPU
    info = {"format": "onnx", "opset": opset, "method": detector.method, "image_size": size,
            "input": {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32",
                      "range": [0, 1], "channels": "RGB", "resize": "bilinear to image_size, by the caller"},
            "outputs": {"scores": ["batch"], "maps": ["batch", size, size]},
            "image_threshold": detector.image_threshold, "pixel_threshold": detector.pixel_threshold,
            **{k: detector.meta[k] for k in ("run_id", "dataset", "category", "model_version")
               if k in detector.meta}}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
    return path


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected|: relative to the array's scale, so values near
    zero (most of a normal image's map) do not blow it up."""
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / scale)


def parity(detector, onnx_path, images: torch.Tensor | None = None, batch: int = 3) -> dict:
    """Score the same images with torch and onnxruntime; the relative error of scores and maps.
    `images`: (N, 3, S, S) in [0, 1]; default `batch` seeded random images (a batch size other
    than the export's, so the dynamic axis is exercised)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("the parity check needs onnxruntime: pip install 'raybench[export]' (or pass --no-check)") from None
    size = detector.image_size
    if images is None:
        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_scores, ref_maps = detector.scorer.eval()(images.to(detector.device))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scores, maps = session.run(["scores", "maps"], {"images": images.cpu().numpy().astype(np.float32)})
    return {"images": int(images.shape[0]),
            "scores": relative_error(scores, ref_scores.float().cpu().numpy()),
            "maps": relative_error(maps, ref_maps.float().cpu().numpy())}


def export(detector, out_dir, fmt: str = "onnx", check: bool = True) -> tuple[Path, dict | None]:
    """Export and (when `check`) verify with onnxruntime: raises ExportError when the graph and
    torch disagree by more than PARITY_RTOL. Returns the model path and the parity figures."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected {'|'.join(FORMATS)}")
    path = export_onnx(detector, out_dir)
    if not check:
        return path, None
    figures = parity(detector, path)
    if max(figures["scores"], figures["maps"]) > PARITY_RTOL:
        raise ExportError(f"{path}: onnxruntime and torch disagree beyond {PARITY_RTOL:g} relative "
                          f"(scores {figures['scores']:.2e}, maps {figures['maps']:.2e})")
    return path, figures
